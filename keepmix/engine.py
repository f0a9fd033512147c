"""Where the work runs: the capture-safe path, or the CPU's faster data-dependent path.

Every op has one capture-safe path: no host reads and no data-dependent shapes, so that
``op.transform`` compiles as one graph (``torch.compile(op.transform, fullgraph=True)``) and the whole
call runs on a GPU without synchronising. On the CPU some steps have a faster strategy that
needs host reads (grouping a policy's images by op, numpy selection of quantiles, scoring
only the images a region op did not skip); a host read costs nothing there.

* ``"auto"`` (default): capture-safe on every device but the CPU, and while
  ``torch.compile`` traces; the fast strategies on the CPU.
* ``"capture"``: capture-safe everywhere (the tests use it to exercise that path on the CPU).
* ``"fast"``: the data-dependent strategies everywhere (host reads on a GPU: slower there).

Value checks that need the data (label range, box range, NaN saliency, weights in [0, 1])
follow the same rule: a host check with a ``ValueError`` on the fast path, a device-side
assertion (``torch._assert_async``, an error at the next synchronisation) on the
capture-safe path. ``set_checks("eager")`` turns every value check into a host check with a
``ValueError`` (a debugging mode: one host read per check). Shape, dtype and device checks
never read data and always raise at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor

__all__ = ["Strategy", "Checks", "set_strategy", "get_strategy", "strategy", "set_checks", "capture_safe", "check_values"]

Strategy = Literal["auto", "capture", "fast"]
Checks = Literal["auto", "eager"]
_STRATEGIES = ("auto", "capture", "fast")
_strategy: Strategy = "auto"
_checks: Checks = "auto"


def set_strategy(value: Strategy) -> None:
    """Choose the strategy for every op (see the module docstring)."""
    global _strategy
    if value not in _STRATEGIES:
        raise ValueError(f"strategy must be one of {_STRATEGIES}, got {value!r}")
    _strategy = value


def get_strategy() -> Strategy:
    """The strategy in force."""
    return _strategy


@contextmanager
def strategy(value: Strategy) -> Iterator[None]:
    """``with keepmix.engine.strategy("capture"): ...``: a strategy for a block of code."""
    before = _strategy
    set_strategy(value)
    try:
        yield
    finally:
        set_strategy(before)


def set_checks(value: Checks) -> None:
    """``"auto"`` (default) or ``"eager"``: every value check a host check (debugging)."""
    global _checks
    if value not in ("auto", "eager"):
        raise ValueError(f"checks must be 'auto' or 'eager', got {value!r}")
    _checks = value


def capture_safe(device: torch.device) -> bool:
    """Whether work on ``device`` takes the capture-safe path."""
    if _strategy == "capture":
        return True
    if _strategy == "fast":
        return False
    return device.type != "cpu" or torch.compiler.is_compiling()


def check_values(ok: Tensor, message: str, detail: Callable[[], str] | None = None) -> None:
    """Raise ``ValueError`` unless every element of the bool tensor ``ok`` holds.

    On the capture-safe path this is a device-side assertion with ``message`` (no host
    read); on the host path the error is ``message`` followed by ``detail()`` (e.g. the
    offending values), computed only when the check fails.
    """
    if _checks == "auto" and capture_safe(ok.device):
        torch._assert_async(ok.all(), message)
        return
    if not bool(ok.all()):
        raise ValueError(message if detail is None else f"{message}, {detail()}")
