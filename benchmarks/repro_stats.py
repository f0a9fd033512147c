"""Aggregating a reproduction grid: finished runs, per-method means and stds, the seed spread
pooled over the grid (only where a variance check allows it, and never across the code
versions / machines the runs came from), gains with their t intervals (scipy's Student t
quantiles), the grid's comparisons with Holm's correction beside the one named primary
comparison, paired-by-seed differences, and one plain sentence per comparison. Part of
``benchmarks/reproduce.py``.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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
    # Where the cell was trained: the code version and machine it came from, as far as its run
    # summary tells (see :func:`run_origin`). Cells of different origins are never pooled.
    origin: str = ""
    # Set when the cell's run summary was rebuilt from a results CSV row because the trainer's
    # own files were not kept: what it was rebuilt from.
    reconstructed_from: str = ""


def run_origin(final: dict) -> str:
    """The origin of one run from its ``final.json``: its ``commit`` and ``machine`` when the
    trainer recorded them, else the runs directory it was trained in (the parent of its recorded
    ``run_dir``; one directory on one machine holds one grid's checkout), else "" (unknown: one
    origin for all such runs)."""
    parts = [str(final[k]) for k in ("commit", "machine") if final.get(k)]
    if parts:
        return " / ".join(parts)
    run_dir = final.get("run_dir")
    return str(Path(run_dir).parent) if run_dir else ""


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
    # A summary rebuilt from a CSV row has no metrics.jsonl but keeps the row's train time and rate.
    train_time = sum(float(r.get("epoch_time_s", 0.0)) for r in metrics) or float(final.get("train_time_s", final["wall_time_s"]))
    rates = [float(r["images_per_s"]) for r in metrics if "images_per_s" in r]
    if not rates and final.get("images_per_s") is not None:
        rates = [float(final["images_per_s"])]
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
        origin=run_origin(final),
        reconstructed_from=str(final.get("reconstructed_from", "")),
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
    gain_se: float | None  # standard error of that difference (see :func:`compare`)
    gain_tol: float | None  # half-width of its 95% interval: t(0.975, df) * gain_se
    paper_gain: float | None
    paper_note: str
    time_mean_s: float | None
    time_ratio: float | None  # train time / base's train time
    paper_cost: float | None
    verdict: str = ""
    acc_by_seed: dict[int, float] = field(default_factory=dict)
    origin: str = ""  # the runs' origin (:func:`run_origin`); "mixed" when its seeds came from several


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None where undefined)."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) >= 2 else None)


def t975(df: float) -> float:
    """The 0.975 quantile of Student's t with ``df`` > 0 degrees of freedom (``scipy.stats.t``),
    the half-width factor of a two-sided 95% interval."""
    return t_quantile(0.975, df)


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t with ``df`` > 0 degrees of freedom (``scipy.stats.t``)."""
    from scipy.stats import t  # type: ignore[import-untyped]  # no scipy-stubs in the [test] extra

    if not df > 0:
        raise ValueError(f"df must be > 0, got {df!r}")
    return float(t.ppf(q, df))


def t_p_value(t_stat: float, df: float) -> float:
    """Two-sided p value of a t statistic with ``df`` > 0 degrees of freedom."""
    from scipy.stats import t

    if not df > 0:
        raise ValueError(f"df must be > 0, got {df!r}")
    return float(2 * t.sf(abs(t_stat), df))


@dataclass(frozen=True)
class Spread:
    """The seed-to-seed spread of test accuracy, pooled over methods of a grid."""

    sd: float  # sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1))
    df: int  # sum (n_i - 1)


def pooled_spread(groups: Iterable[tuple[int, float | None]]) -> Spread | None:
    """Pool ``(n, sample std)`` of each method into one spread (None without any repeated seed).

    This only does the arithmetic: whether the methods may be pooled at all is
    :func:`checked_spread`'s question (one origin, and a variance check that does not reject).
    """
    num = den = 0.0
    for n, std in groups:
        if n >= 2 and std is not None:
            num += (n - 1) * std**2
            den += n - 1
    return Spread(math.sqrt(num / den), int(den)) if den else None


# --------------------------------------------------------------------------------------------
# Variance checks: pool only what they do not reject
# --------------------------------------------------------------------------------------------
ALPHA = 0.05
# Test accuracy is written to 2 decimals (one image of a 10,000-image test set is 0.01 points):
# two seeds that agree to that resolution have a sample variance of 0, which Bartlett's log
# cannot take. Their variance is then at most what rounding leaves, h^2 / 12 (Sheppard).
RESOLUTION = 0.01


@dataclass(frozen=True)
class VarianceCheck:
    """The outcome of a test that the groups share one variance."""

    test: str  # "Bartlett" or "F"
    statistic: float
    df: tuple[int, ...]  # (k - 1,) for Bartlett, (df_a, df_b) for F
    p: float
    groups: int
    alpha: float = ALPHA

    @property
    def pooled(self) -> bool:
        """True when the test does not reject equal variances at ``alpha``."""
        return self.p >= self.alpha

    def describe(self) -> str:
        """One clause for the results page."""
        stat = "chi2" if self.test == "Bartlett" else "F"
        dfs = ", ".join(str(d) for d in self.df)
        what = "not rejected: pooled" if self.pooled else f"rejected at {self.alpha:g}: not pooled"
        return f"{self.test} over {self.groups} groups, {stat}({dfs}) = {self.statistic:.2f}, p = {self.p:.3f} ({what})"


def bartlett(groups: Iterable[tuple[int, float | None]], resolution: float = RESOLUTION) -> VarianceCheck | None:
    """Bartlett's test of equal variances from each group's ``(n, sample std)`` (groups below 2
    runs are left out); None below 2 such groups. Agrees with ``scipy.stats.bartlett`` on the raw
    values whenever no group's variance is below ``resolution**2 / 12``, the floor used for groups
    whose runs agree to the measurement's resolution."""
    from scipy.stats import chi2

    kept = [(n, max(std**2, resolution**2 / 12.0)) for n, std in groups if n >= 2 and std is not None]
    k = len(kept)
    if k < 2:
        return None
    dof = sum(n - 1 for n, _ in kept)
    pooled_var = sum((n - 1) * v for n, v in kept) / dof
    stat = dof * math.log(pooled_var) - sum((n - 1) * math.log(v) for n, v in kept)
    stat /= 1.0 + (sum(1.0 / (n - 1) for n, _ in kept) - 1.0 / dof) / (3.0 * (k - 1))
    return VarianceCheck("Bartlett", float(stat), (k - 1,), float(chi2.sf(stat, k - 1)), k)


def f_test(a: Spread, b: Spread) -> VarianceCheck:
    """Two-sided F test that two pooled spreads estimate one variance: ``F = a.sd^2 / b.sd^2``
    on ``(a.df, b.df)`` degrees of freedom (whether two grids' spreads may be pooled)."""
    from scipy.stats import f

    if a.df < 1 or b.df < 1:
        raise ValueError(f"both spreads need df >= 1, got {a.df} and {b.df}")
    if b.sd <= 0:
        raise ValueError(f"the second spread's sd must be > 0, got {b.sd!r}")
    ratio = a.sd**2 / b.sd**2
    one_sided = float(f.sf(ratio, a.df, b.df))
    return VarianceCheck("F", float(ratio), (a.df, b.df), min(1.0, 2 * min(one_sided, 1.0 - one_sided)), 2)


def checked_spread(groups: Sequence[tuple[int, float | None]], alpha: float = ALPHA) -> tuple[Spread | None, VarianceCheck | None]:
    """The pooled spread of ``(n, sample std)`` groups of ONE origin, or None where Bartlett's test
    rejects equal variances at ``alpha``; with the check (None when fewer than 2 groups have 2 runs:
    a single group's spread is its own, nothing is pooled)."""
    check = bartlett(groups)
    if check is not None:
        check = VarianceCheck(check.test, check.statistic, check.df, check.p, check.groups, alpha)
        if not check.pooled:
            return None, check
    return pooled_spread(groups), check


# --------------------------------------------------------------------------------------------
# Comparisons: one primary per grid, Holm for the others, paired differences where seeds match
# --------------------------------------------------------------------------------------------
# The primary comparison of each grid, named before its result was read where the grid was
# budgeted (the inside pair) and otherwise the comparison the grid was built to make: the
# saliency at a constant area cut (3.5), the paper's early head against the head alone in the
# early-head placement grid (3.3, the grid that holds ``keepcutout_early1``), KeepCutout against
# Cutout (3.1, the paper's Table 1 row), the one Keep method of the Table 5 rows (5.2). A family
# (the comparisons of one origin) takes the first ``(method, base, marker)`` whose pair it holds
# and, when ``marker`` is given, whose grid has a row of that method.
PRIMARY: tuple[tuple[str, str, str | None], ...] = (
    ("keepcutout_inside", "cutout_inside", None),
    ("keepcutout_early", "cutout_earlyhead", "keepcutout_early1"),
    ("keepcutout", "cutout", None),
    ("keepresizemix", "resizemix", None),
)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p values, in the input's order: the i-th smallest p times
    ``m - i + 1``, made non-decreasing in that order and capped at 1."""
    m = len(p_values)
    for p in p_values:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p values must lie in [0, 1], got {p!r}")
    order = sorted(range(m), key=lambda i: p_values[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


@dataclass
class Paired:
    """Differences by seed over the seeds both methods share."""

    seeds: list[int]
    diffs: list[float]
    mean: float
    sd: float | None  # None below 2 pairs
    p: float | None  # paired t, two-sided, n - 1 df
    ci: tuple[float, float] | None


def paired(a: Mapping[int, float], b: Mapping[int, float]) -> Paired | None:
    """``a[seed] - b[seed]`` over the shared seeds, their mean, sd and paired t (None without a shared seed)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return Paired(seeds, diffs, mean, None, None, None)
    sd = statistics.stdev(diffs)
    df = len(diffs) - 1
    if sd == 0:
        return Paired(seeds, diffs, mean, 0.0, None, None)
    se = sd / math.sqrt(len(diffs))
    half = t975(df) * se
    return Paired(seeds, diffs, mean, sd, t_p_value(mean / se, df), (mean - half, mean + half))


@dataclass
class Comparison:
    """One method against its base or control, with the test the data allow."""

    method: str
    base: str
    label: str
    base_label: str
    kind: str  # "base" (the grid's base method) or "control"
    diff: float | None  # difference of the means
    se: float | None
    df: float | None
    test: str  # "pooled t", "Welch t" or "" (no test: see note)
    p: float | None
    ci: tuple[float, float] | None  # raw 95% interval
    note: str = ""
    family: str = ""  # the origin whose comparisons are corrected together
    primary: bool = False
    family_size: int = 0  # secondary comparisons Holm corrects over
    p_holm: float | None = None  # the primary's own p is not adjusted
    ci_adj: tuple[float, float] | None = None  # Bonferroni over the family's secondaries (the primary: its raw one)
    paired: Paired | None = None

    @property
    def p_final(self) -> float | None:
        """The p value the verdict rests on: the primary's raw p, the others' Holm-adjusted p."""
        return self.p if self.primary else self.p_holm


def method_origin(recs: Sequence[RunRecord]) -> str:
    """The one origin of a method's runs, or "mixed"."""
    origins = {r.origin for r in recs}
    return origins.pop() if len(origins) == 1 else ("mixed" if origins else "")


def grid_spreads(rows: Sequence[Row], alpha: float = ALPHA) -> dict[str, tuple[Spread | None, VarianceCheck | None]]:
    """Per origin, its checked pooled spread (:func:`checked_spread`); "mixed" methods are in none."""
    out: dict[str, tuple[Spread | None, VarianceCheck | None]] = {}
    for origin in dict.fromkeys(r.origin for r in rows if r.origin != "mixed"):
        out[origin] = checked_spread([(r.n, r.acc_std) for r in rows if r.origin == origin], alpha)
    return out


def compare(
    a: Row,
    b: Row,
    spreads: Mapping[str, tuple[Spread | None, VarianceCheck | None]],
    kind: str = "base",
) -> Comparison:
    """``a`` against ``b``: a t test on the origin's pooled spread where the check allowed pooling,
    Welch's t on the two methods' own stds where it did not, nothing across origins."""
    c = Comparison(a.method, b.method, a.label, b.label, kind, None, None, None, "", None, None)
    if a.acc_mean is None or b.acc_mean is None:
        c.note = "one of them has no finished run"
        return c
    c.diff = a.acc_mean - b.acc_mean
    c.paired = paired(a.acc_by_seed, b.acc_by_seed)
    if a.origin != b.origin or a.origin == "mixed":
        c.note = f"different origins ({a.origin or '?'} vs {b.origin or '?'}): different code or machine, not tested"
        c.paired = None
        return c
    c.family = a.origin
    spread, _check = spreads.get(a.origin, (None, None))
    if spread is not None:
        c.se = spread.sd * math.sqrt(1.0 / a.n + 1.0 / b.n)
        c.df, c.test = float(spread.df), "pooled t"
    elif a.acc_std is not None and b.acc_std is not None and (a.acc_std > 0 or b.acc_std > 0):
        va, vb = a.acc_std**2 / a.n, b.acc_std**2 / b.n
        c.se = math.sqrt(va + vb)
        c.df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
        c.test = "Welch t"
    else:
        c.note = "no spread: a method has a single seed and nothing could be pooled"
        return c
    c.p = t_p_value(c.diff / c.se, c.df) if c.se > 0 else None
    half = t975(c.df) * c.se
    c.ci = (c.diff - half, c.diff + half)
    return c


def correct(
    comparisons: Sequence[Comparison],
    primary: Sequence[tuple[str, str, str | None]] = PRIMARY,
    alpha: float = ALPHA,
    grid: Iterable[str] = (),
) -> None:
    """In place: per family, mark its primary (the first entry of ``primary`` whose pair it holds
    and whose marker, if any, is in ``grid``, the grid's methods) and give
    every other tested comparison its Holm-adjusted p and its Bonferroni interval over the family's
    secondary comparisons (simultaneous 95% coverage); the primary's adjusted interval is its raw one."""
    families: dict[str, list[Comparison]] = {}
    for c in comparisons:
        if c.p is not None and c.family is not None and c.test:
            families.setdefault(c.family, []).append(c)
    for members in families.values():
        pairs = {(c.method, c.base): c for c in members}
        methods = set(grid)
        head = next((pairs[(m, b)] for m, b, marker in primary if (m, b) in pairs and (marker is None or marker in methods)), None)
        if head is not None:
            head.primary, head.ci_adj = True, head.ci
        rest = [c for c in members if c is not head]
        for c, p_adj in zip(rest, holm([c.p for c in rest if c.p is not None]), strict=True):
            c.p_holm, c.family_size = p_adj, len(rest)
            assert c.se is not None and c.df is not None and c.diff is not None
            half = t_quantile(1.0 - alpha / 2 / len(rest), c.df) * c.se
            c.ci_adj = (c.diff - half, c.diff + half)
        if head is not None:
            head.family_size = len(rest)


def grid_comparisons(
    rows: Sequence[Row], primary: Sequence[tuple[str, str, str | None]] = PRIMARY, alpha: float = ALPHA
) -> list[Comparison]:
    """Every comparison of a grid (each method against its base, each Keep method against its
    controls, see :func:`control_pairs`), corrected per family (:func:`correct`)."""
    by = {r.method: r for r in rows}
    spreads = grid_spreads(rows, alpha)
    out = [compare(r, by[r.base], spreads) for r in rows if r.base is not None and r.base in by]
    out += [compare(r, ctrl, spreads, "control") for r, ctrl, _ in control_pairs(rows)]
    correct(out, primary, alpha, by)
    return out


# --------------------------------------------------------------------------------------------
# Power
# --------------------------------------------------------------------------------------------
def power(effect: float, se: float, df: float, alpha: float = ALPHA) -> float:
    """Power of a two-sided t test at level ``alpha`` whose estimate has standard error ``se`` and
    ``df`` degrees of freedom, against a true difference ``effect`` (noncentral t)."""
    from scipy.stats import nct

    if not se > 0 or not df > 0:
        raise ValueError(f"se and df must be > 0, got se={se!r}, df={df!r}")
    crit = t_quantile(1.0 - alpha / 2, df)
    nc = effect / se
    # The lower tail as the mirrored upper one: scipy's nct.cdf far below the mean can give nan.
    out = float(nct.sf(crit, df, nc) + nct.sf(crit, df, -nc))
    if not math.isfinite(out):
        raise ValueError(f"scipy's noncentral t gave {out} at noncentrality {nc:.1f} with {df} df")
    return out


def detectable(se: float, df: float, target: float = 0.8, alpha: float = ALPHA) -> float:
    """The smallest true difference a two-sided t test (``se``, ``df``) finds with power ``target``."""
    from scipy.optimize import brentq  # type: ignore[import-untyped]  # no scipy-stubs in the [test] extra

    if not 0.0 < target < 1.0:
        raise ValueError(f"target power must lie in (0, 1), got {target!r}")
    hi = se
    while power(hi, se, df, alpha) < target:  # bracket by doubling: scipy's nct fails far out
        hi *= 2.0
    return float(brentq(lambda e: power(e, se, df, alpha) - target, 0.0, hi))


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
    *,
    significant: bool | None = None,
) -> str:
    """One plain sentence: does ours show the paper's gain over the base?

    "Beyond the spread" means ``|gain| > tol``, the half-width of the 95% interval of the
    difference of the two means (:func:`difference`; ``2 se`` when not given); below that the
    seeds cannot tell the difference from zero. ``significant``, when given, decides "beyond"
    instead (a multiplicity-adjusted p below 0.05, :func:`correct`); ``tol`` still sizes the
    comparison with the paper's number.
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
    beyond = abs(gain) > tol if significant is None else significant
    ours = f"{gain:+.2f} ± {se:.2f}"
    if paper is None:
        if not beyond:
            return f"{label}: {ours} points over {base_label}, within the seed spread of zero (no paper number to compare)."
        return f"{label}: {ours} points over {base_label}, beyond the seed spread (no paper number to compare)."
    p = f"{paper:+.2f}"
    if beyond and (gain > 0 and paper > 0 or gain < 0 and paper < 0):
        size = ""
        if abs(gain - paper) > tol:
            size = ", larger than the paper's" if abs(gain) > abs(paper) else ", though smaller than the paper's"
        return f"{label}: ours shows the paper's effect over {base_label}: {ours} points vs the paper's {p}{size}."
    if beyond:
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


def _against(c: Comparison, name: str, same: str, better: str, worse: str) -> str:
    if c.se is None or c.diff is None:
        diff = "" if c.diff is None else f"{c.diff:+.2f} points over {name}, "
        return f"{c.label}: {diff}no test: {c.note or 'no spread'}."
    p_final = c.p_final
    what = same if p_final is None or p_final >= ALPHA else better if c.diff > 0 else worse
    return f"{c.label}: {c.diff:+.2f} ± {c.se:.2f} points over {name}, {what} ({_p_clause(c)})."


def _p_clause(c: Comparison) -> str:
    if c.p is None:
        return "no p value"
    if c.primary:
        return f"{c.test}, p = {c.p:.3f}; the grid's primary comparison, not adjusted"
    return f"{c.test}, p = {c.p:.3f}; Holm over the grid's {c.family_size} secondary comparisons: {c.p_holm:.3f}"


def uniform_control(method: str, rows: Sequence[Row]) -> Row | None:
    """The row of the same Keep method on a constant map (``keepcutout`` -> ``keepcutout_uniform``,
    ``keepresizemix`` -> ``keepresizemix_uniform``), None when the grid has none."""
    fields = dict(GRID_BY_KEY[method].fields)
    if fields.get("saliency") in (None, "uniform"):
        return None
    fields["saliency"] = "uniform"
    return next((r for r in rows if dict(GRID_BY_KEY[r.method].fields) == fields), None)


def control_pairs(rows: Sequence[Row]) -> list[tuple[Row, Row, str]]:
    """``(keep row, control row, which)`` for each Keep variant: the same method on a uniform map
    (``which`` "uniform": what the saliency adds beyond the quantile rule's geometry) and, for
    early-head variants, Cutout + early head instead ("early": their network also trains the
    head's auxiliary loss, which the uniform control does not, so only that control isolates
    their saliency)."""
    by = {r.method: r for r in rows}
    early_ctrl = by.get(EARLY_CONTROL)
    out = []
    for r in rows:
        fields = GRID_BY_KEY[r.method].fields
        if r.acc_mean is None or not str(fields.get("method", "")).startswith("keep"):
            continue
        ctrl = None if fields.get("early_head") else uniform_control(r.method, rows)
        if ctrl is not None and ctrl.acc_mean is not None:
            out.append((r, ctrl, "uniform"))
        if fields.get("early_head") and early_ctrl is not None and early_ctrl.acc_mean is not None:
            out.append((r, early_ctrl, "early"))
    return out


def control_sentences(rows: Sequence[Row], comparisons: Sequence[Comparison] | None = None) -> list[str]:
    """One sentence per Keep variant against its control (:func:`control_pairs`), its verdict at
    the Holm-adjusted p (the primary's raw p). Empty without the controls."""
    comps = grid_comparisons(rows) if comparisons is None else comparisons
    by_pair = {(c.method, c.base): c for c in comps if c.kind == "control"}
    out = []
    for r, ctrl, which in control_pairs(rows):
        c = by_pair[(r.method, ctrl.method)]
        if which == "uniform":
            out.append(
                _against(
                    c,
                    "the uniform-map control",
                    "within the seed spread of zero: at this scale the saliency map adds nothing measurable beyond the "
                    "rule's choice of border-clipped boxes",
                    "beyond the seed spread: the saliency map itself adds accuracy",
                    "below the control beyond the seed spread: this saliency steers the cut to worse regions than area alone",
                )
            )
        else:
            out.append(
                _against(
                    c,
                    "Cutout + early head",
                    "within the seed spread of zero: the early head's saliency adds nothing measurable to a network that "
                    "trains the same head",
                    "beyond the seed spread: the early head's saliency adds accuracy beyond its auxiliary loss",
                    "below it beyond the seed spread: the early head's saliency steers the cut to worse regions",
                )
            )
    return out


def aggregate(records: Iterable[RunRecord], methods: Sequence[str]) -> list[Row]:
    """One :class:`Row` per method in ``methods`` (grid order), with gains over the base: their
    standard error and interval from :func:`compare`, their verdict at the Holm-adjusted p
    (:func:`grid_comparisons`)."""
    by_method: dict[str, list[RunRecord]] = {m: [] for m in methods}
    for r in records:
        by_method.setdefault(r.method, []).append(r)
    rows = []
    for m in methods:
        g = GRID_BY_KEY[m]
        recs = by_method[m]
        mean, std = mean_std([r.test_acc for r in recs])
        t_mean = statistics.fmean([r.train_time_s for r in recs]) if recs else None
        base = g.base if g.base in by_method else None
        base_label = GRID_BY_KEY[g.base].label if g.base is not None else None
        row = Row(
            m, g.label, base, base_label, len(recs), sorted(r.seed for r in recs), mean, std, None, None, None,
            g.paper_gain, g.paper_note, t_mean, None, g.paper_cost,
        )  # fmt: skip
        row.acc_by_seed = {r.seed: r.test_acc for r in sorted(recs, key=lambda r: r.seed)}
        row.origin = method_origin(recs)
        rows.append(row)
    by = {r.method: r for r in rows}
    comps = {(c.method, c.base): c for c in grid_comparisons(rows) if c.kind == "base"}
    for row in rows:
        g = GRID_BY_KEY[row.method]
        if g.base is None:
            continue
        if row.base is None:
            row.verdict = f"{g.label}: its base {row.base_label} was not in this grid, so no comparison."
            continue
        b = by[row.base]
        if row.time_mean_s is not None and b.time_mean_s:
            row.time_ratio = row.time_mean_s / b.time_mean_s
        c = comps[(row.method, row.base)]
        row.gain, row.gain_se = c.diff, c.se
        row.gain_tol = None if c.ci is None or c.diff is None else c.ci[1] - c.diff
        if c.diff is not None and c.se is None and c.note.startswith("different origins"):
            row.verdict = f"{g.label}: {c.diff:+.2f} points over {row.base_label}, but {c.note}."
            continue
        significant = None if c.p_final is None else c.p_final < ALPHA
        row.verdict = verdict(g.label, row.base_label, c.diff, c.se, g.paper_gain, row.n, b.n, row.gain_tol, significant=significant)
        if c.p is not None:
            row.verdict = row.verdict[:-1] + f" ({_p_clause(c)})."
    return rows
