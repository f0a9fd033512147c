"""What one op call costs, counted (not timed): aten ops and keepmix Python calls.

* :func:`aten_ops` counts the aten ops one call issues (a ``TorchDispatchMode`` over it), by
  default on the capture-safe path, where each is a kernel launch on a GPU.
* :func:`python_calls` counts the Python function calls made inside the ``keepmix`` package
  during one call (``sys.setprofile``), a measure of the call path's depth and breadth.

The tests keep both under the limits the lean-core issue set; ``benchmarks/bench_engine.py``
reports them beside the times.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

import keepmix
from keepmix import engine

_PACKAGE = os.path.dirname(os.path.abspath(keepmix.__file__)) + os.sep


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def aten_ops(call: Callable[[], Any], strategy: engine.Strategy = "capture") -> Counter[str]:
    """The aten ops (name -> count) that ``call()`` issues under ``strategy``."""
    with engine.strategy(strategy), _CountOps() as mode:
        call()
    return mode.ops


def python_calls(call: Callable[[], Any]) -> Counter[str]:
    """The Python calls (``file:function`` -> count) made inside the keepmix package during ``call()``."""
    seen: Counter[str] = Counter()

    def profile(frame, event, arg):
        if event == "call":
            path = frame.f_code.co_filename
            if path.startswith(_PACKAGE):
                seen[f"{path[len(_PACKAGE) :]}:{frame.f_code.co_name}"] += 1

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(previous)
    return seen
