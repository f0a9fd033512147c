"""Input validation shared by every op.

Every public op validates its inputs with these helpers so that bad input fails early with a
message that names the argument and says what was expected; nothing is silently clipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

#: Image dtypes every op accepts.
IMAGE_DTYPES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_images(x: object, name: str = "images", channels: int | Sequence[int] | None = None) -> Tensor:
    """Check that ``x`` is a (B, C, H, W) float or uint8 tensor with a non-empty image size and return it.

    B = 0 is allowed: DDP's last uneven batch or a filtered batch can be empty, and an empty
    batch passes through every op (as in torchvision and kornia).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W) (4 dimensions), got shape {tuple(x.shape)}")
    if x.dtype not in IMAGE_DTYPES:
        raise TypeError(f"{name} must be uint8 or floating point (float16/bfloat16/float32/float64), got {x.dtype}")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{name} has an empty spatial size {tuple(x.shape[2:])}")
    if channels is not None:
        allowed = (channels,) if isinstance(channels, int) else tuple(channels)
        if x.shape[1] not in allowed:
            raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    return x


def check_same_device(**tensors: Tensor | None) -> None:
    """Raise if the given (non-None) tensors do not all live on one device."""
    items = [(k, v) for k, v in tensors.items() if v is not None]
    if not items:
        return
    ref_name, ref = items[0]
    for k, v in items[1:]:
        if v.device != ref.device:
            raise ValueError(f"{k} is on {v.device} but {ref_name} is on {ref.device}; move them to one device")


def check_probability(p: float, name: str = "p") -> float:
    """A probability in [0, 1]."""
    p = float(p)
    if not (0.0 <= p <= 1.0) or math.isnan(p):
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    return p


def check_open_unit(q: float, name: str) -> float:
    """A number strictly inside (0, 1), e.g. a quantile level."""
    q = float(q)
    if not (0.0 < q < 1.0):
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {q}")
    return q


def check_int(value: object, name: str, low: int | None = None, high: int | None = None, what: str | None = None) -> int:
    """An int (a bool is refused) in ``[low, high]`` (either bound optional).

    The error says ``{name} must be {what}, got {value!r}``; ``what`` defaults to "a positive
    int" for ``low=1`` and to "an int in [low, high]" / "an int >= low" otherwise.
    """
    if isinstance(value, int) and not isinstance(value, bool) and (low is None or value >= low) and (high is None or value <= high):
        return value
    if what is None:
        if high is not None:
            what = f"an int in [{low}, {high}]"
        elif low == 1:
            what = "a positive int"
        else:
            what = "an int" if low is None else f"an int >= {low}"
    raise ValueError(f"{name} must be {what}, got {value!r}")


def check_positive(value: float, name: str, allow_zero: bool = False) -> float:
    """A finite number > 0 (or >= 0 with ``allow_zero``)."""
    v = float(value)
    ok = (v >= 0.0) if allow_zero else (v > 0.0)
    if not ok or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value}")
    return v


def check_range_pair(pair: Sequence[float], name: str, low: float = -math.inf, high: float = math.inf) -> tuple[float, float]:
    """An ordered pair (a, b) with low <= a <= b <= high."""
    try:
        a, b = (float(v) for v in pair)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (min, max) of numbers, got {pair!r}") from None
    if not (low <= a <= b <= high):
        raise ValueError(f"{name} must satisfy {low} <= min <= max <= {high}, got {pair!r}")
    return a, b


def check_generator(generator: object, name: str = "generator") -> torch.Generator | None:
    """``None`` or a ``torch.Generator``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(generator).__name__}")
    return generator
