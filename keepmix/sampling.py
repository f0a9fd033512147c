"""Random parameters per image, all drawn from an optional ``torch.Generator``.

Conventions shared by every op in keepmix:

* Everything is drawn for the whole batch at once (one call per kind of parameter), never in
  a Python loop over images, and never with a host-device sync.
* With a ``generator``, values are drawn on the generator's device and then moved to the
  batch's device, so the same seed gives the same parameters on the same generator device
  whatever device the batch lives on. Without one, values are drawn on the batch's device
  from torch's default generator of that device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from keepmix._checks import check_generator, check_positive, check_probability
from keepmix.engine import check_values

if TYPE_CHECKING:  # for annotations only: the functions below import keepmix.functional lazily
    from keepmix.functional.selection import Side

__all__ = [
    "rand",
    "uniform",
    "normal",
    "log_uniform",
    "randint",
    "bernoulli",
    "beta",
    "permutation",
    "sample_where",
    "selection_keys",
]


def _draw_device(device: torch.device | str | None, generator: torch.Generator | None) -> torch.device:
    if generator is not None:
        return generator.device
    return torch.device("cpu") if device is None else torch.device(device)


def rand(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None, dtype: torch.dtype = torch.float64) -> Tensor:
    """U[0, 1) of ``shape`` on ``device``, drawn on the generator's device (the lean ops'
    one fused draw per call: every uniform quantity of a call is a column of it). Unchecked."""
    if generator is None:
        return torch.rand(shape, device=device, dtype=dtype)
    return torch.rand(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def uniform(
    shape: Sequence[int] | int,
    low: float | Tensor = 0.0,
    high: float | Tensor = 1.0,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """U(low, high) of the given shape (float), on ``device``."""
    check_generator(generator)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    u = torch.rand(shape, generator=generator, device=_draw_device(device, generator), dtype=dtype)
    u = u.to(device) if device is not None else u
    return low + (high - low) * u


def normal(
    shape: Sequence[int] | int,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal draws of the given shape, on ``device``."""
    check_generator(generator)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    z = torch.randn(shape, generator=generator, device=_draw_device(device, generator), dtype=dtype)
    return z.to(device) if device is not None else z


def log_uniform(
    shape: Sequence[int] | int,
    low: float,
    high: float,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """exp(U(log low, log high)): log-uniform in [low, high] (e.g. aspect ratios)."""
    check_positive(low, "low")
    check_positive(high, "high")
    return uniform(shape, math.log(low), math.log(high), device=device, generator=generator).exp()


def randint(
    low: int | Tensor,
    high: int | Tensor,
    shape: Sequence[int] | int,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    check: bool = True,
) -> Tensor:
    """Integers uniform in [low, high) as int64; ``low``/``high`` may be per-element tensors.

    With tensor bounds, ``check=True`` verifies high > low everywhere (one host sync per call);
    callers that guarantee it by construction pass ``check=False`` to stay sync-free.

    Tensor bounds make per-image ranges possible (e.g. a box position that depends on the
    image's own box size) without a loop: floor(low + u * (high - low)).
    """
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if isinstance(low, int) and isinstance(high, int):
        if high <= low:
            raise ValueError(f"randint needs high > low, got low={low}, high={high}")
        check_generator(generator)
        r = torch.randint(low, high, shape, generator=generator, device=_draw_device(device, generator))
        return r.to(device) if device is not None else r
    u = uniform(shape, device=device, generator=generator, dtype=torch.float64)
    low_t = torch.as_tensor(low, device=u.device, dtype=torch.float64)
    high_t = torch.as_tensor(high, device=u.device, dtype=torch.float64)
    # One check per call (not per image): an empty range is a caller bug, e.g. a box larger
    # than the image it must fit in.
    if check:
        check_values(high_t > low_t, "randint needs high > low for every element (an empty range of positions)")
    r = (low_t + u * (high_t - low_t)).floor().long()
    # u < 1 strictly, but float rounding can land exactly on high: keep the result in range.
    return torch.minimum(r, (high_t.long() - 1).clamp_min(low_t.long()))


def bernoulli(
    p: float,
    shape: Sequence[int] | int,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Bool tensor, True with probability ``p`` (p = 1 gives all True without drawing)."""
    p = check_probability(p)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if p >= 1.0:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if p <= 0.0:
        return torch.zeros(shape, dtype=torch.bool, device=device)
    return uniform(shape, device=device, generator=generator) < p


# Marsaglia-Tsang rounds drawn at once: acceptance is >= 95% per round for shape >= 1, so the
# chance that all rounds reject is < 0.05**16 ~ 1e-21 and no data-dependent loop (and no sync)
# is needed.
_GAMMA_ROUNDS = 16


def _gamma(alpha: float, n: int, device: torch.device | str | None, generator: torch.Generator | None) -> Tensor:
    """Gamma(alpha, 1) samples (float64) from a generator.

    torch.distributions draws from the global RNG only; this takes a Generator, which is
    what makes Mixup/CutMix lambdas reproducible per op.
    """
    boost = alpha < 1.0
    a = alpha + 1.0 if boost else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    dev = _draw_device(device, generator)
    z = torch.randn((_GAMMA_ROUNDS, n), generator=generator, device=dev, dtype=torch.float64)
    u = torch.rand((_GAMMA_ROUNDS, n), generator=generator, device=dev, dtype=torch.float64)
    v = (1.0 + c * z) ** 3
    ok = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * torch.log(v.clamp_min(1e-300)))
    first = ok.to(torch.int8).argmax(dim=0)  # first accepted round per sample
    samples = (d * v).gather(0, first[None]).squeeze(0)
    samples = torch.where(ok.any(dim=0), samples, torch.full_like(samples, d))
    if boost:
        # Gamma(alpha) = Gamma(alpha + 1) * U^(1/alpha)
        u2 = torch.rand((n,), generator=generator, device=dev, dtype=torch.float64)
        samples = samples * u2.pow(1.0 / alpha)
    return samples.to(device) if device is not None else samples


def beta(
    a: float,
    b: float,
    n: int,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``n`` draws of Beta(a, b) in [0, 1] (``dtype``: float32, or float64 to keep the
    draw's precision, e.g. for ``1 - lam`` near 0); Beta(1, 1) is drawn as a uniform.

    One kernel: the first coordinate of a Dirichlet(a, b) draw (torch's gamma sampler,
    normalised; both gammas underflowing, possible for tiny shapes, is handled there).
    """
    check_positive(a, "alpha")
    check_positive(b, "beta")
    if a == 1.0 and b == 1.0:
        return uniform(n, device=device, generator=generator, dtype=dtype)
    check_generator(generator)
    out = beta_columns(((a, b),), (n,), _draw_device(device, generator), generator)[..., 0]
    return out.to(device=device, dtype=dtype) if device is not None else out.to(dtype)


def beta_columns(
    shapes: tuple[tuple[float, float], ...], batch: tuple[int, ...], device: torch.device, generator: torch.Generator | None
) -> Tensor:
    """float64 draws of Beta(a_j, b_j) for each pair ``shapes[j]``, shape ``batch + (J,)``, on
    ``device``: one Dirichlet kernel, on the generator's device when one is given. Unchecked."""
    from keepmix.functional.constants import line

    dev = device if generator is None else generator.device
    conc = line(tuple(v for pair in shapes for v in pair), (len(shapes), 2), torch.float64, dev)
    return torch._sample_dirichlet(conc.expand(*batch, len(shapes), 2), generator=generator)[..., 0].to(device)


def permutation(n: int, *, device: torch.device | str | None = None, generator: torch.Generator | None = None) -> Tensor:
    """A uniformly random permutation of range(n) (int64), e.g. mixing partners."""
    check_generator(generator)
    p = torch.randperm(n, generator=generator, device=_draw_device(device, generator))
    return p.to(device) if device is not None else p


def sample_where(mask: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """One index per row of ``mask`` (B, N), uniform among its True entries.

    Returns ``(index (B,) int64, found (B,) bool)`` (index 0 where a row has no True entry);
    one uniform draw per row (see :func:`keepmix.functional.regions.pick_where`).
    """
    from keepmix.functional.regions import pick_where

    u = uniform(mask.shape[0], device=mask.device, generator=generator, dtype=torch.float64)
    return pick_where(mask, u)


def selection_keys(
    batch: int, q: float, side: Side, *, device: torch.device | str | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """The (B, K + 1) float64 uniform keys :func:`keepmix.functional.selection.select_boxes`
    takes for threshold level ``q`` on ``side`` (K rejection tries and one exact pick)."""
    from keepmix.functional.selection import num_draws

    return uniform((batch, num_draws(q, side) + 1), device=device, generator=generator, dtype=torch.float64)
