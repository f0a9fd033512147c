"""Aggregating a reproduction grid: finished runs, per-method means and stds, the seed spread
pooled over the grid, gains with their t intervals (scipy's Student t quantiles), and one
plain sentence per comparison. Part of ``benchmarks/reproduce.py``.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from repro_grid import GRID_BY_KEY, cell_name


# --------------------------------------------------------------------------------------------
@dataclass
class RunRecord:
    """One finished cell."""

    method: str
    seed: int
    test_acc: float
    best_test_acc: float | None
    train_time_s: float  # training steps only (sum of the epochs' step time), no evaluation
    wall_time_s: float  # the whole run: training, evaluation, checkpoints
    epochs: int
    steps: int
    images_per_s: float | None
    run_dir: str


def read_run(cell_dir: Path, method: str, seed: int) -> RunRecord | None:
    """The record of a finished cell (final.json + metrics.jsonl), or None if it is not done."""
    final_path = cell_dir / "final.json"
    if not final_path.is_file():
        return None
    final = json.loads(final_path.read_text())
    metrics = []
    mpath = cell_dir / "metrics.jsonl"
    if mpath.is_file():
        metrics = [json.loads(ln) for ln in mpath.read_text().splitlines() if ln.strip()]
    train_time = sum(float(r.get("epoch_time_s", 0.0)) for r in metrics) or float(final["wall_time_s"])
    rates = [float(r["images_per_s"]) for r in metrics if "images_per_s" in r]
    return RunRecord(
        method=method,
        seed=seed,
        test_acc=float(final["test_acc"]),
        best_test_acc=None if final.get("best_test_acc") is None else float(final["best_test_acc"]),
        train_time_s=train_time,
        wall_time_s=float(final["wall_time_s"]),
        epochs=int(final["epochs"]),
        steps=int(final.get("steps", 0)),
        images_per_s=statistics.fmean(rates) if rates else None,
        run_dir=str(cell_dir),
    )


def collect(runs_dir: Path, methods: Sequence[str], seeds: Sequence[int]) -> list[RunRecord]:
    """Records of every finished cell of the grid (missing cells are simply absent)."""
    out = []
    for m in methods:
        for s in seeds:
            rec = read_run(Path(runs_dir) / cell_name(m, s), m, s)
            if rec is not None:
                out.append(rec)
    return out


@dataclass
class Row:
    """One method's aggregate."""

    method: str
    label: str
    base: str | None
    base_label: str | None
    n: int
    seeds: list[int]
    acc_mean: float | None
    acc_std: float | None  # sample std (n - 1); None below 2 seeds
    gain: float | None  # mean - base mean
    gain_se: float | None  # standard error of that difference, from the grid's pooled spread
    gain_tol: float | None  # half-width of its 95% interval: t(0.975, df) * gain_se
    paper_gain: float | None
    paper_note: str
    time_mean_s: float | None
    time_ratio: float | None  # train time / base's train time
    paper_cost: float | None
    verdict: str = ""


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None where undefined)."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) >= 2 else None)


def t975(df: float) -> float:
    """The 0.975 quantile of Student's t with ``df`` > 0 degrees of freedom (``scipy.stats.t``),
    the half-width factor of a two-sided 95% interval."""
    from scipy.stats import t

    if not df > 0:
        raise ValueError(f"df must be > 0, got {df!r}")
    return float(t.ppf(0.975, df))


@dataclass(frozen=True)
class Spread:
    """The seed-to-seed spread of test accuracy, pooled over every method of a grid."""

    sd: float  # sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1))
    df: int  # sum (n_i - 1)


def pooled_spread(groups: Iterable[tuple[int, float | None]]) -> Spread | None:
    """Pool ``(n, sample std)`` of each method into one spread (None without any repeated seed).

    Every cell of a grid shares the set-up and the seeds drive its noise, so one spread for
    the grid is estimated from all methods together: with 2-3 seeds a method's own std is
    itself very uncertain (two seeds can agree to 0.01 points by chance), and a test built on
    it alone would have one degree of freedom.
    """
    num = den = 0.0
    for n, std in groups:
        if n >= 2 and std is not None:
            num += (n - 1) * std**2
            den += n - 1
    return Spread(math.sqrt(num / den), int(den)) if den else None


def difference(mean_a: float, n_a: int, mean_b: float, n_b: int, spread: Spread | None) -> tuple[float, float | None, float | None]:
    """``(mean_a - mean_b, its standard error, the half-width of its 95% interval)``:
    ``se = sd * sqrt(1/n_a + 1/n_b)`` with the grid's pooled ``sd``, and the interval
    ``t(0.975, df) * se`` (2.16 standard errors for the 13-method, 2-seed CPU grid; a normal
    "2 se" rule would ignore how few seeds there are). None without a spread."""
    diff = mean_a - mean_b
    if spread is None:
        return diff, None, None
    se = spread.sd * math.sqrt(1.0 / n_a + 1.0 / n_b)
    return diff, se, t975(spread.df) * se


def verdict(
    label: str,
    base_label: str | None,
    gain: float | None,
    se: float | None,
    paper: float | None,
    n: int,
    n_base: int,
    tol: float | None = None,
) -> str:
    """One plain sentence: does ours show the paper's gain over the base?

    "Beyond the spread" means ``|gain| > tol``, the half-width of the 95% interval of the
    difference of the two means (:func:`difference`; ``2 se`` when not given); below that the
    seeds cannot tell the difference from zero.
    """
    if base_label is None:
        return ""
    if gain is None:
        return f"{label}: cannot compare with {base_label}: one of them has no finished run."
    if se is None:
        return (
            f"{label}: {gain:+.2f} points over {base_label} from {min(n, n_base)} seed(s); "
            "no spread can be estimated from one seed, so no conclusion."
        )
    tol = 2 * se if tol is None else tol
    ours = f"{gain:+.2f} ± {se:.2f}"
    if paper is None:
        if abs(gain) <= tol:
            return f"{label}: {ours} points over {base_label}, within the seed spread of zero (no paper number to compare)."
        return f"{label}: {ours} points over {base_label}, beyond the seed spread (no paper number to compare)."
    p = f"{paper:+.2f}"
    if gain > tol and paper > 0 or gain < -tol and paper < 0:
        size = ""
        if abs(gain - paper) > tol:
            size = ", larger than the paper's" if abs(gain) > abs(paper) else ", though smaller than the paper's"
        return f"{label}: ours shows the paper's effect over {base_label}: {ours} points vs the paper's {p}{size}."
    if gain > tol or gain < -tol:
        return (
            f"{label}: ours does NOT show the paper's gain: {ours} points over {base_label}, "
            f"the opposite direction to the paper's {p}, beyond the seed spread."
        )
    also = (
        "the paper's " + p + " is also within it, so more seeds (or a longer schedule) are needed to tell"
        if abs(gain - paper) <= tol
        else "the paper's " + p + " lies outside it"
    )
    return f"{label}: ours does NOT show the paper's gain: {ours} points over {base_label} is within the seed spread of zero; {also}."


EARLY_CONTROL = "cutout_earlyhead"


def _against(r: Row, ctrl: Row, spread: Spread | None, name: str, same: str, better: str, worse: str) -> str:
    diff, se, tol = difference(r.acc_mean, r.n, ctrl.acc_mean, ctrl.n, spread)
    if se is None:
        return f"{r.label}: {diff:+.2f} points over {name} from one seed per method; no spread, no conclusion."
    what = same if abs(diff) <= tol else better if diff > 0 else worse
    return f"{r.label}: {diff:+.2f} ± {se:.2f} points over {name}, {what}."


def uniform_control(method: str, rows: Sequence[Row]) -> Row | None:
    """The row of the same Keep method on a constant map (``keepcutout`` -> ``keepcutout_uniform``,
    ``keepresizemix`` -> ``keepresizemix_uniform``), None when the grid has none."""
    fields = dict(GRID_BY_KEY[method].fields)
    if fields.get("saliency") in (None, "uniform"):
        return None
    fields["saliency"] = "uniform"
    return next((r for r in rows if dict(GRID_BY_KEY[r.method].fields) == fields), None)


def control_sentences(rows: Sequence[Row]) -> list[str]:
    """Keep variants against the controls: the same method on a uniform map (what the saliency
    adds beyond the quantile rule's geometry) and, for early-head variants, Cutout + early head
    instead (their network also trains the head's auxiliary loss, which the uniform control
    does not, so only that control isolates their saliency). Empty without the controls."""
    by = {r.method: r for r in rows}
    early_ctrl = by.get(EARLY_CONTROL)
    spread = pooled_spread((r.n, r.acc_std) for r in rows)
    out = []
    for r in rows:
        fields = GRID_BY_KEY[r.method].fields
        if r.acc_mean is None or not str(fields.get("method", "")).startswith("keep"):
            continue
        ctrl = None if fields.get("early_head") else uniform_control(r.method, rows)
        if ctrl is not None and ctrl.acc_mean is not None:
            out.append(
                _against(
                    r,
                    ctrl,
                    spread,
                    "the uniform-map control",
                    "within the seed spread of zero: at this scale the saliency map adds nothing measurable beyond the "
                    "rule's choice of border-clipped boxes",
                    "beyond the seed spread: the saliency map itself adds accuracy",
                    "below the control beyond the seed spread: this saliency steers the cut to worse regions than area alone",
                )
            )
        if fields.get("early_head") and early_ctrl is not None and early_ctrl.acc_mean is not None:
            out.append(
                _against(
                    r,
                    early_ctrl,
                    spread,
                    "Cutout + early head",
                    "within the seed spread of zero: the early head's saliency adds nothing measurable to a network that "
                    "trains the same head",
                    "beyond the seed spread: the early head's saliency adds accuracy beyond its auxiliary loss",
                    "below it beyond the seed spread: the early head's saliency steers the cut to worse regions",
                )
            )
    return out


def aggregate(records: Iterable[RunRecord], methods: Sequence[str]) -> list[Row]:
    """One :class:`Row` per method in ``methods`` (grid order), with gains over the base."""
    by_method: dict[str, list[RunRecord]] = {m: [] for m in methods}
    for r in records:
        by_method.setdefault(r.method, []).append(r)
    stats = {}
    for m, recs in by_method.items():
        accs = [r.test_acc for r in recs]
        mean, std = mean_std(accs)
        t_mean = statistics.fmean([r.train_time_s for r in recs]) if recs else None
        stats[m] = (len(recs), mean, std, t_mean, sorted(r.seed for r in recs))
    spread = pooled_spread((st[0], st[2]) for st in stats.values())
    rows = []
    for m in methods:
        g = GRID_BY_KEY[m]
        n, mean, std, t_mean, seeds = stats[m]
        base = g.base if g.base in by_method else None
        gain = se = tol = ratio = None
        n_base = 0
        if base is not None:
            n_base, b_mean, b_std, b_t, _ = stats[base]
            if mean is not None and b_mean is not None:
                gain, se, tol = difference(mean, n, b_mean, n_base, spread)
            if t_mean is not None and b_t:
                ratio = t_mean / b_t
        base_label = GRID_BY_KEY[g.base].label if g.base is not None else None
        row = Row(
            m, g.label, g.base, base_label, n, seeds, mean, std, gain, se, tol, g.paper_gain, g.paper_note, t_mean, ratio, g.paper_cost
        )
        if g.base is not None:
            row.verdict = (
                verdict(g.label, base_label, gain, se, g.paper_gain, n, n_base, tol)
                if base is not None
                else f"{g.label}: its base {base_label} was not in this grid, so no comparison."
            )
        rows.append(row)
    return rows
