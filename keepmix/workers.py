"""Random streams for DataLoader workers.

A ``torch.Generator`` made in the main process and captured by a ``collate_fn`` is copied
into every worker with the same state, so every worker draws the same boxes. Make the
generator inside the worker instead, from :func:`worker_generator`.
"""

from __future__ import annotations

import torch
from torch.utils.data import get_worker_info

from keepmix._checks import check_int

__all__ = ["worker_generator"]

_MASK = (1 << 63) - 1


def worker_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A Generator seeded from ``seed`` and, inside a DataLoader worker, the worker's identity.

    Outside a worker it is seeded from ``seed`` alone. Inside one it is seeded from ``seed``,
    the worker's id and the seed the DataLoader gave the worker (``get_worker_info().seed``,
    drawn afresh for every epoch's iterator from the loader's ``generator`` or torch's global
    RNG): workers draw independent streams, a new epoch draws new ones, and a rerun with the
    same ``seed`` and the same loader seed (``DataLoader(generator=...)`` or
    ``torch.manual_seed``) repeats them exactly.

    Call it inside the worker, e.g. the first time a ``collate_fn`` runs (see the README's
    collate recipe); a generator made before the workers start is copied into all of them.
    """
    check_int(seed, "seed", low=0, high=_MASK, what="an int in [0, 2**63) (a torch.Generator seed)")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch.device or a device string such as 'cpu' or 'cuda', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: CUDA is not available on this machine; use device='cpu'")
    g = torch.Generator(device=dev)
    info = get_worker_info()
    if info is None:
        return g.manual_seed(seed)
    # A fixed odd-constant mix (splitmix64-style) of the three numbers, so nearby seeds and
    # worker ids do not give overlapping Philox / Mersenne streams.
    x = (seed * 0x9E3779B97F4A7C15 + (info.seed & _MASK) * 0xBF58476D1CE4E5B9 + info.id * 0x94D049BB133111EB) & _MASK
    x ^= x >> 31
    return g.manual_seed(x & _MASK)
