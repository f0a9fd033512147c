"""Small constant tensors the kernels reuse from call to call (index grids, bounds, patterns).

Building a constant is an aten op per call (a kernel launch on a GPU, a few microseconds of
dispatch on the CPU), so each is built once per key (its values, dtype and device) and kept.
While ``torch.compile`` traces, a constant is built in the graph instead (it costs nothing
there, and the trace must not touch the cache).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = ["cached", "box_grid", "line"]

_CACHE: dict[Hashable, Any] = {}
T = TypeVar("T")
# Keys grow with the image sizes and devices seen; a long-running job sees a handful. The
# bound only keeps a pathological caller (a new size every call) from growing memory.
_MAX_ENTRIES = 512


def cached(key: Hashable, build: Callable[[], T]) -> T:
    """What ``build()`` returns (a tensor, or a tuple of them), built once per ``key`` (``key``
    names every input of ``build``)."""
    if torch.compiler.is_compiling():
        return build()
    t = _CACHE.get(key)
    if t is None:
        t = build()
        _keep(key, t)
    return t


def _keep(key: Hashable, value: Any) -> None:
    """Cache ``value`` unless it holds a tensor subclass: a constant built under a
    ``FakeTensorMode`` (or any tensor-subclass mode) must not outlive that mode."""
    parts = value if isinstance(value, tuple) else (value,)
    if all(type(v) is Tensor for v in parts):
        if len(_CACHE) >= _MAX_ENTRIES:
            _CACHE.clear()
        _CACHE[key] = value


def line(values: tuple[float, ...] | tuple[int, ...], shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """``torch.tensor(values, dtype, device).view(shape)``, cached (the lookup inlined: the
    kernels call this several times per call)."""
    if torch.compiler.is_compiling():
        return torch.tensor(values, dtype=dtype, device=device).view(shape)
    key = (values, shape, dtype, device)
    t = _CACHE.get(key)
    if t is None:
        t = torch.tensor(values, dtype=dtype, device=device).view(shape)
        _keep(key, t)
    return t


def box_grid(height: int, width: int, device: torch.device) -> Tensor:
    """(1, 4, H, W) int64 pixel coordinates ``(Y, X, Y, X)`` a (B, 4) box tensor is compared against.

    ``grid >= boxes.view(B, 4, 1, 1)`` is ``(Y >= y1, X >= x1, Y >= y2, X >= x2)``: a pixel is
    inside its box where that reads (True, True, False, False).
    """

    def build() -> Tensor:
        ys = torch.arange(height, device=device).view(height, 1).expand(height, width)
        xs = torch.arange(width, device=device).view(1, width).expand(height, width)
        return torch.stack([ys, xs, ys, xs]).unsqueeze(0)

    return cached(("box_grid", height, width, device), build)
