"""Shared timing helpers for the benchmark scripts.

* :func:`interleaved`: time several contenders side by side, one sample of each per round
  (A B C, then B C A, then C A B, ...), so slow drift of a shared machine (another job
  starting, thermal changes) hits every contender alike. The starting contender rotates each
  round so none is always the one that runs right after the heaviest.
* :class:`Stats`: median and spread (min, max, interquartile range) of the samples.
* :func:`paired_ratio`: the ratio of two contenders computed per round, then summarised:
  each round's pair ran back to back, so the ratio cancels most of the machine's drift.
* :func:`machine_info`: what the numbers were measured on (CPU model, cores, threads, torch
  and kornia versions, GPU, date), written at the top of every results file.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

__all__ = [
    "Stats",
    "sync",
    "cpu_model",
    "machine_info",
    "machine_line",
    "calibrate",
    "interleaved",
    "paired_ratio",
    "fmt_rate",
    "fmt_ratio",
    "write_results",
]


@dataclass(frozen=True)
class Stats:
    """Summary of repeated measurements (any unit): median, extremes, quartiles, count."""

    median: float
    min: float
    max: float
    q1: float
    q3: float
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        if len(samples) == 0:
            raise ValueError("Stats.of needs at least one sample")
        xs = sorted(float(s) for s in samples)
        if len(xs) == 1:
            q1 = q3 = xs[0]
        else:
            q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
        return cls(statistics.median(xs), xs[0], xs[-1], q1, q3, len(xs))

    def map(self, fn: Callable[[float], float]) -> Stats:
        """The same summary under a monotone map; a decreasing one (time -> rate) swaps the ends."""
        a, b, q1, q3 = fn(self.min), fn(self.max), fn(self.q1), fn(self.q3)
        return Stats(fn(self.median), min(a, b), max(a, b), min(q1, q3), max(q1, q3), self.n)

    @property
    def spread(self) -> float:
        """(max - min) / median: the relative width of the whole range."""
        return (self.max - self.min) / self.median if self.median else math.inf

    def to_dict(self) -> dict:
        return asdict(self)


def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work, so a timer measures the work and not its launch."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_info(device: torch.device | str = "cpu") -> dict:
    """Where and when the benchmark ran (a JSON-ready dict)."""
    device = torch.device(device)
    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
    }
    try:
        import kornia

        info["kornia"] = kornia.__version__
    except ImportError:
        info["kornia"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    return info


def machine_line(info: Mapping) -> str:
    """One markdown line describing :func:`machine_info`'s dict."""
    parts = [
        f"{info['cpu']}, {info['usable_cores']} usable of {info['logical_cores']} logical cores",
        f"torch threads {info['torch_threads']}",
        f"torch {info['torch']}",
    ]
    if info.get("kornia"):
        parts.append(f"kornia {info['kornia']}")
    if info.get("gpu"):
        parts.append(f"GPU {info['gpu']}")
    if info.get("load_average"):
        parts.append("load average at start " + " / ".join(f"{v:.2f}" for v in info["load_average"]))
    parts.append(f"Python {info['python']}, {info['platform']}")
    return "; ".join(parts)


def _time_calls(fn: Callable[[], object], calls: int, device: torch.device) -> float:
    """Seconds per call of ``calls`` back-to-back calls (device synchronised at both ends)."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / calls


def calibrate(fn: Callable[[], object], device: torch.device | str, min_sample_s: float, max_calls: int = 1000) -> int:
    """How many calls make one sample of at least ``min_sample_s`` seconds (timer resolution
    and per-sample overhead then do not matter), from one timed call after ``fn`` was warmed up."""
    t = _time_calls(fn, 1, torch.device(device))
    if t <= 0:
        return max_calls
    return int(max(1, min(max_calls, math.ceil(min_sample_s / t))))


def interleaved(
    contenders: Mapping[str, Callable[[], object]],
    rounds: int,
    device: torch.device | str = "cpu",
    warmup: int = 2,
    min_sample_s: float = 0.05,
    calls: Mapping[str, int] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each contender, one sample per round, contenders interleaved.

    Each contender is first called ``warmup`` times (allocator, caches, lazy init), then its
    calls per sample are calibrated so one sample lasts at least ``min_sample_s`` (unless
    ``calls`` fixes them). Every round times one sample of each contender, starting at a
    rotating position. Returns ``{name: [seconds per call, one per round]}``.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    device = torch.device(device)
    names = list(contenders)
    for name in names:
        for _ in range(warmup):
            contenders[name]()
    sync(device)
    per_sample = dict(calls) if calls is not None else {}
    for name in names:
        if name not in per_sample:
            per_sample[name] = calibrate(contenders[name], device, min_sample_s)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        start = r % len(names)
        for name in names[start:] + names[:start]:
            samples[name].append(_time_calls(contenders[name], per_sample[name], device))
    return samples


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> Stats:
    """Per-round ratios ``numerator[r] / denominator[r]``, summarised."""
    if len(numerator) != len(denominator):
        raise ValueError("paired_ratio needs samples from the same rounds")
    return Stats.of([a / b for a, b in zip(numerator, denominator, strict=True)])


def fmt_rate(value: float) -> str:
    """Images per second, three significant digits with a k / M suffix."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= scale:
            v = value / scale
            return f"{v:.3g}{suffix}" if v < 100 else f"{v:.0f}{suffix}"
    return f"{value:.3g}"


def fmt_ratio(value: float) -> str:
    return f"{value:.3g}x" if value < 100 else f"{value:.0f}x"


def write_results(out_dir: str | Path, stem: str, markdown: str, data: Mapping) -> tuple[Path, Path]:
    """Write ``<stem>.md`` and ``<stem>.json`` into ``out_dir`` (created if needed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / f"{stem}.md", out / f"{stem}.json"
    md.write_text(markdown)
    js.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return md, js
