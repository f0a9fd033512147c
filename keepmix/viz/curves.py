"""Accuracy curves of training runs (``keepmix plot``) from their ``metrics.jsonl``.

matplotlib is needed only by :func:`plot_runs` and is imported there.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from keepmix.train.run_dir import RunDir

__all__ = ["METRICS_FILE", "load_metrics", "plot_runs"]

#: The file a training run writes into its directory: one JSON object per epoch.
METRICS_FILE = RunDir.METRICS


def _metrics_path(run: str | Path) -> Path:
    p = Path(run)
    if p.is_dir():
        p = p / METRICS_FILE
        if not p.is_file():
            raise FileNotFoundError(f"run directory {run} has no {METRICS_FILE} (has this run finished an epoch?)")
        return p
    if not p.is_file():
        raise FileNotFoundError(f"{run} is neither a run directory nor a metrics file")
    return p


def load_metrics(run: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run: a run directory (holding ``metrics.jsonl``) or the
    path of a metrics file. Blank lines are skipped; a line that is not a JSON object is an
    error naming the file and line."""
    path = _metrics_path(run)
    records: list[dict[str, Any]] = []
    with path.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno} is not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{lineno} must hold a JSON object per epoch, got {type(rec).__name__}")
            records.append(rec)
    if not records:
        raise ValueError(f"{path} holds no records")
    return records


def _curve(records: list[dict[str, Any]], metric: str, source: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of one metric. Epochs without the metric (e.g. a test pass every k
    epochs, or a null) are left out; a run where the metric never appears is an error."""
    xs: list[float] = []
    ys: list[float] = []
    for i, rec in enumerate(records):
        v = rec.get(metric)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{source}: {metric!r} must be a number, got {v!r} in record {i + 1}")
        xs.append(float(rec.get("epoch", i + 1)))
        ys.append(float(v))
    if not ys:
        keys = sorted({k for rec in records for k in rec})
        raise KeyError(f"{source} has no metric {metric!r}; its records hold {', '.join(keys)}")
    return xs, ys


def _fmt(v: float, like: float | None = None) -> str:
    """2 decimals for values like accuracies in %, 4 for values below 1 (fractions, losses);
    ``like`` picks the format from another value (a spread in the units of its mean)."""
    ref = v if like is None else like
    return f"{v:.2f}" if abs(ref) >= 1 else f"{v:.4f}"


# Axis labels for the metrics keepmix.train writes; any other key is shown as it is.
_METRIC_LABELS = {
    "test_acc": "test accuracy (%)",
    "train_acc": "train accuracy (%)",
    "test_loss": "test loss",
    "train_loss": "train loss",
    "images_per_s": "images / s",
}


def plot_runs(
    runs: Sequence[str | Path],
    out_png: str | Path,
    metric: str = "test_acc",
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Plot one metric of several runs against the epoch into one PNG and return its path.

    ``runs`` are run directories or ``metrics.jsonl`` files; ``labels`` (default: the run
    directory names) name them in the legend. Runs given the same label (seeds of one
    configuration) share a colour and one legend entry reporting the mean final value over
    them, ± the standard deviation and n; a label of its own reports its run's final value.
    A missing metrics file, or a run without the metric, is an error naming the run.
    """
    if isinstance(runs, (str, Path)):
        runs = [runs]
    runs = list(runs)
    if not runs:
        raise ValueError("runs is empty: give at least one run directory or metrics.jsonl file")
    if labels is None:
        labels = [(Path(r).parent.name if Path(r).is_file() else Path(r).name) or str(r) for r in runs]
    labels = [str(x) for x in labels]
    if len(labels) != len(runs):
        raise ValueError(f"labels has {len(labels)} entries but {len(runs)} runs were given")
    curves = [_curve(load_metrics(r), metric, str(r)) for r in runs]

    # Only the object-oriented API with an explicit Agg canvas: no pyplot, no global backend
    # switch, safe in a headless process and in a user's notebook alike.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    order = list(dict.fromkeys(labels))  # first-appearance order
    colors = [f"C{i % 10}" for i in range(len(order))]
    for name, color in zip(order, colors, strict=True):
        idx = [i for i, lab in enumerate(labels) if lab == name]
        finals = torch.tensor([curves[i][1][-1] for i in idx], dtype=torch.float64)
        if len(idx) == 1:
            entry = f"{name} (final {_fmt(float(finals[0]))})"
        else:
            entry = f"{name} (final {_fmt(float(finals.mean()))} ± {_fmt(float(finals.std()), float(finals.mean()))}, n={len(idx)})"
        for k, i in enumerate(idx):
            xs, ys = curves[i]
            ax.plot(
                xs,
                ys,
                color=color,
                linewidth=1.4,
                marker="o" if len(xs) == 1 else None,
                label=entry if k == 0 else None,
                alpha=1.0 if len(idx) == 1 else 0.8,
            )
    ax.set_xlabel("epoch")
    pretty = _METRIC_LABELS.get(metric, metric)
    ax.set_ylabel(pretty)
    ax.set_title(title or f"{pretty} per epoch")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
