"""benchmarks/repro_stats.py: Holm's correction, the variance-check gate on pooling, origins,
paired differences, power, and the comparisons table of repro_report (issue 23)."""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import pytest
from scipy import stats

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import repro_report as rr  # noqa: E402
import repro_stats as rs  # noqa: E402


def _run(root: Path, method: str, seed: int, acc: float, origin: str = "/m/runs") -> None:
    """A finished cell whose summary records it was trained under ``origin``."""
    d = root / f"{method}-seed{seed}"
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "epoch_time_s": 10.0, "images_per_s": 100.0}) + "\n")
    final = {"test_acc": acc, "best_test_acc": acc, "epochs": 1, "steps": 10, "wall_time_s": 12.0, "run_dir": f"{origin}/{d.name}"}
    (d / "final.json").write_text(json.dumps(final))


def _rows(root: Path, accs: dict[str, list[float]], origins: dict[str, str] | None = None) -> list[rs.Row]:
    for m, values in accs.items():
        for s, a in enumerate(values):
            _run(root, m, s, a, (origins or {}).get(m, "/m/runs"))
    methods = list(accs)
    return rs.aggregate(rs.collect(root, methods, range(max(len(v) for v in accs.values()))), methods)


# ---------------------------------------------------------------------------------------------
# Holm
# ---------------------------------------------------------------------------------------------
def test_holm_on_a_known_example():
    # Sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> 0.06 (monotone).
    assert rs.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    # Capped at 1 and non-decreasing in the order of the raw p values.
    assert rs.holm([0.5, 0.6]) == [1.0, 1.0]
    assert rs.holm([0.2]) == [0.2] and rs.holm([]) == []
    # Ties keep their order and get the same adjusted value.
    assert rs.holm([0.01, 0.01, 0.04]) == pytest.approx([0.03, 0.03, 0.04], abs=1e-15)
    with pytest.raises(ValueError, match="p values"):
        rs.holm([0.1, 1.5])


def test_holm_is_statsmodels_holm_where_it_matters():
    # Holm's definition written out for 6 p values: p_(i) * (m - i + 1), running maximum.
    p = [0.037, 0.029, 0.2, 0.0004, 0.8, 0.011]
    order = sorted(range(6), key=lambda i: p[i])
    expect = [0.0] * 6
    run = 0.0
    for rank, i in enumerate(order):
        run = max(run, min(1.0, (6 - rank) * p[i]))
        expect[i] = run
    assert rs.holm(p) == pytest.approx(expect, abs=1e-15)
    assert rs.holm(p) == pytest.approx([0.116, 0.116, 0.4, 0.0024, 0.8, 0.055], abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Variance checks and the pooling gate
# ---------------------------------------------------------------------------------------------
def test_bartlett_agrees_with_scipy_on_the_raw_values():
    groups = [[68.76, 66.83, 68.04], [67.94, 69.31, 67.28], [68.82, 68.09, 67.08], [69.88, 69.23], [68.84, 68.50]]
    ours = rs.bartlett([(len(g), statistics.stdev(g)) for g in groups])
    ref = stats.bartlett(*groups)
    assert ours.statistic == pytest.approx(float(ref.statistic), rel=1e-12) and ours.p == pytest.approx(float(ref.pvalue), rel=1e-10)
    assert ours.df == (4,) and ours.groups == 5 and ours.pooled
    # The inside grid's own numbers (section 3.5): chi2(4) = 1.87, p = 0.760.
    assert ours.statistic == pytest.approx(1.8670, abs=1e-4) and ours.p == pytest.approx(0.7602, abs=1e-4)
    # Fewer than two groups with two runs: nothing to test.
    assert rs.bartlett([(2, 1.0), (1, None)]) is None


def test_bartlett_floors_a_zero_variance_at_the_resolution():
    # Two seeds that agree exactly: variance 0 is replaced by 0.01^2 / 12, so the test is defined.
    floored = rs.bartlett([(2, 0.0), (2, 1.0)])
    same = rs.bartlett([(2, math.sqrt(0.01**2 / 12)), (2, 1.0)])
    assert floored == same and math.isfinite(floored.statistic)


def test_f_test_of_two_spreads():
    # Section 3.5 against 3.1: s = 0.85 (8 df) against 0.38 (13 df).
    inside, cpu = rs.Spread(0.8546088286461829, 8), rs.Spread(0.3829992970469539, 13)
    check = rs.f_test(inside, cpu)
    assert check.statistic == pytest.approx(4.97896, abs=1e-5)
    assert check.p == pytest.approx(2 * stats.f.sf(check.statistic, 8, 13), rel=1e-12)
    assert check.p == pytest.approx(0.01087, abs=1e-5) and not check.pooled
    # Symmetric: the order of the two spreads does not change the two-sided p.
    assert rs.f_test(cpu, inside).p == pytest.approx(check.p, rel=1e-12)
    assert rs.f_test(cpu, cpu).p == pytest.approx(1.0)
    with pytest.raises(ValueError, match="df"):
        rs.f_test(rs.Spread(1.0, 0), cpu)


def test_pooling_gate_pools_only_what_bartlett_does_not_reject(tmp_path):
    # Equal spreads (two seeds 0.4 apart everywhere): pooled, s = sqrt(0.08) with 3 df.
    rows = _rows(tmp_path / "a", {"cutout": [70.0, 70.4], "keepcutout": [71.0, 71.4], "keepcutout_uniform": [71.0, 71.4]})
    (spread, check) = rs.grid_spreads(rows)["/m/runs"]
    assert check.pooled and spread.df == 3 and spread.sd == pytest.approx(math.sqrt(0.08))
    c = next(c for c in rs.grid_comparisons(rows) if c.method == "keepcutout" and c.base == "cutout")
    assert c.test == "pooled t" and c.df == 3 and c.se == pytest.approx(math.sqrt(0.08))

    # One method 100x noisier than the others: Bartlett rejects, nothing is pooled, and each
    # comparison is Welch's t on its two methods' own stds.
    accs = {"cutout": [70.0, 70.1, 69.9], "keepcutout": [75.0, 65.0, 70.0], "keepcutout_uniform": [71.0, 71.1, 70.9]}
    rows = _rows(tmp_path / "b", accs)
    spread, check = rs.grid_spreads(rows)["/m/runs"]
    assert spread is None and not check.pooled and check.p < 0.05
    c = next(c for c in rs.grid_comparisons(rows) if c.method == "keepcutout" and c.base == "cutout")
    ref = stats.ttest_ind(accs["keepcutout"], accs["cutout"], equal_var=False)
    va, vb = statistics.variance(accs["keepcutout"]) / 3, statistics.variance(accs["cutout"]) / 3
    assert c.test == "Welch t" and c.se == pytest.approx(math.sqrt(va + vb))
    assert c.df == pytest.approx((va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)) and c.p == pytest.approx(float(ref.pvalue), rel=1e-10)
    row = next(r for r in rows if r.method == "keepcutout")
    assert row.gain_se == pytest.approx(c.se)


def test_runs_of_different_origins_are_never_pooled_nor_compared(tmp_path):
    # Cutout trained elsewhere (another code version / machine) than the Keep rows.
    accs = {"cutout": [70.0, 70.4], "keepcutout": [71.0, 71.4], "keepcutout_uniform": [72.0, 72.3]}
    rows = _rows(tmp_path, accs, origins={"cutout": "/old/runs"})
    assert {r.method: r.origin for r in rows} == {"cutout": "/old/runs", "keepcutout": "/m/runs", "keepcutout_uniform": "/m/runs"}
    spreads = rs.grid_spreads(rows)
    # Each origin has its own spread: /old/runs from Cutout alone, /m/runs from the two Keep rows.
    assert spreads["/old/runs"][0].df == 1 and spreads["/old/runs"][1] is None
    assert spreads["/m/runs"][0].df == 2 and spreads["/m/runs"][0].sd == pytest.approx(math.sqrt((0.08 + 0.045) / 2))
    comps = {(c.method, c.base): c for c in rs.grid_comparisons(rows)}
    across = comps[("keepcutout", "cutout")]
    assert across.diff == pytest.approx(1.0) and across.se is None and across.p is None and "different origins" in across.note
    assert "different origins" in next(r for r in rows if r.method == "keepcutout").verdict
    within = comps[("keepcutout", "keepcutout_uniform")]
    assert within.test == "pooled t" and within.df == 2
    # A method whose own seeds come from two origins is "mixed" and compared with nothing.
    assert rs.method_origin([_rec("a"), _rec("b")]) == "mixed" and rs.method_origin([_rec("a"), _rec("a")]) == "a"


def _rec(origin: str) -> rs.RunRecord:
    return rs.RunRecord("cutout", 0, 70.0, None, 1.0, 1.0, 1, 1, None, "", origin)


def test_origin_of_a_run_summary():
    assert rs.run_origin({"run_dir": "/root/keepmix-repro/runs/cutout-seed0"}) == "/root/keepmix-repro/runs"
    assert rs.run_origin({"commit": "abc1234", "machine": "H100", "run_dir": "/x/y"}) == "abc1234 / H100"
    assert rs.run_origin({}) == ""


# ---------------------------------------------------------------------------------------------
# Paired differences
# ---------------------------------------------------------------------------------------------
def test_paired_differences_use_only_the_shared_seeds():
    # Section 3.5's q = 0.4 row against Cutout-inside: seeds 0 and 1 only.
    q04, cutout = {0: 69.88, 1: 69.23}, {0: 68.76, 1: 66.83, 2: 68.04}
    pr = rs.paired(q04, cutout)
    assert pr.seeds == [0, 1] and pr.diffs == pytest.approx([1.12, 2.40], abs=1e-9)
    assert pr.mean == pytest.approx(1.76, abs=1e-9)  # not the +1.68 difference of the two means
    assert pr.sd == pytest.approx(0.64 * math.sqrt(2), abs=1e-9)
    # t = 1.76 / (0.905 / sqrt 2) = 2.75 on 1 df: p = 1 - (2 / pi) atan(2.75).
    assert pr.p == pytest.approx(1 - 2 / math.pi * math.atan(2.75), abs=1e-9) and pr.p == pytest.approx(0.2220, abs=1e-4)
    assert pr.p == pytest.approx(float(stats.ttest_rel([69.88, 69.23], [68.76, 66.83]).pvalue), rel=1e-9)
    half = stats.t.ppf(0.975, 1) * 0.64
    assert pr.ci == pytest.approx((1.76 - half, 1.76 + half), abs=1e-9)
    q08 = rs.paired({0: 68.84, 1: 68.50}, cutout)
    assert q08.mean == pytest.approx(0.875, abs=1e-9)
    assert rs.paired({0: 1.0}, {1: 2.0}) is None
    one = rs.paired({0: 1.0}, {0: 0.5})
    assert one.mean == 0.5 and one.sd is None and one.p is None


# ---------------------------------------------------------------------------------------------
# The primary comparison and Holm within a family
# ---------------------------------------------------------------------------------------------
def test_primary_keeps_its_raw_p_and_the_rest_are_holm_corrected(tmp_path):
    accs = {
        "cutout_inside": [68.76, 66.83, 68.04],
        "keepcutout_inside": [67.94, 69.31, 67.28],
        "keepcutout_lowres_inside": [68.82, 68.09, 67.08],
        "keepcutout_inside_q04": [69.88, 69.23],
        "keepcutout_inside_q08": [68.84, 68.50],
    }
    rows = _rows(tmp_path, accs)
    comps = {c.method: c for c in rs.grid_comparisons(rows)}
    primary = comps["keepcutout_inside"]
    assert primary.primary and primary.p_holm is None and primary.ci_adj == primary.ci and primary.family_size == 3
    assert primary.p_final == primary.p
    rest = [comps[m] for m in ("keepcutout_lowres_inside", "keepcutout_inside_q04", "keepcutout_inside_q08")]
    assert [c.p_holm for c in rest] == pytest.approx(rs.holm([c.p for c in rest]), abs=1e-15)
    # Section 3.5's numbers: s = 0.85 with 8 df; q = 0.4 is +1.68, p = 0.064 raw, 0.191 after Holm.
    q04 = comps["keepcutout_inside_q04"]
    assert q04.df == 8 and q04.diff == pytest.approx(1.678333, abs=1e-6)
    assert q04.p == pytest.approx(0.06365, abs=1e-5) and q04.p_holm == pytest.approx(3 * q04.p, rel=1e-12)
    assert q04.ci == pytest.approx((-0.1207, 3.4774), abs=1e-4)
    # Its adjusted interval is Bonferroni's over the 3 secondary comparisons.
    half = stats.t.ppf(1 - 0.05 / 6, 8) * q04.se
    assert q04.ci_adj == pytest.approx((q04.diff - half, q04.diff + half), rel=1e-12)
    assert q04.paired.mean == pytest.approx(1.76, abs=1e-9)
    # The verdict rests on the adjusted p: "within the seed spread" although the raw p is 0.064.
    row = next(r for r in rows if r.method == "keepcutout_inside_q04")
    assert "within the seed spread" in row.verdict and "Holm over the grid's 3 secondary comparisons: 0.191" in row.verdict


def test_a_raw_p_below_005_that_holm_lifts_is_not_beyond_the_spread(tmp_path):
    # Every method's seeds 0.2 apart (s = 0.2, 10 df); low-res is +0.41 over Cutout (raw p about
    # 0.03), the others level with it. Five secondaries: Holm lifts 0.03 to about 0.15.
    base = [70.0, 70.4, 70.2]
    accs = {m: base for m in ("cutout", "keepcutout", "keepcutout_uniform", "cutout_earlyhead")}
    accs["keepcutout_lowres"] = [a + 0.41 for a in base]
    rows = _rows(tmp_path, accs)
    comps = {(c.method, c.base): c for c in rs.grid_comparisons(rows)}
    assert comps[("keepcutout", "cutout")].primary
    low = comps[("keepcutout_lowres", "cutout")]
    se = 0.2 * math.sqrt(2 / 3)
    assert low.df == 10 and low.se == pytest.approx(se) and low.p == pytest.approx(2 * stats.t.sf(0.41 / se, 10), rel=1e-9)
    assert low.family_size == 5 and low.p < 0.05 < low.p_holm and low.p_holm == pytest.approx(5 * low.p, rel=1e-12)
    row = next(r for r in rows if r.method == "keepcutout_lowres")
    # With the raw 95% interval the same difference would be "beyond": the Holm p decides.
    assert abs(row.gain) > row.gain_tol and "does NOT show" in row.verdict and "within the seed spread" in row.verdict


# ---------------------------------------------------------------------------------------------
# Power
# ---------------------------------------------------------------------------------------------
def test_power_and_detectable_effect():
    se = 0.8546088286461829 * math.sqrt(2 / 3)  # the inside grid's own spread, 3 seeds against 3
    assert rs.power(0.0, se, 8) == pytest.approx(0.05, abs=1e-12)
    d = rs.detectable(se, 8)
    assert d == pytest.approx(2.2336, abs=1e-4) and rs.power(d, se, 8) == pytest.approx(0.8, abs=1e-9)
    # At the spread pooled across the two grids (s = 0.61, 21 df) it would be 1.46: the figure
    # section 3.5 used to give as 1.45.
    assert rs.detectable(0.6074850576253668 * math.sqrt(2 / 3), 21) == pytest.approx(1.4574, abs=1e-4)
    # One degree of freedom: the bracket is found by doubling, not a fixed multiple of se.
    assert rs.power(rs.detectable(1.0, 1), 1.0, 1) == pytest.approx(0.8, abs=1e-9)
    assert rs.power(-1.0, 0.5, 10) == pytest.approx(rs.power(1.0, 0.5, 10), rel=1e-12)
    with pytest.raises(ValueError, match="se and df"):
        rs.power(1.0, 0.0, 3)


# ---------------------------------------------------------------------------------------------
# The report page
# ---------------------------------------------------------------------------------------------
def test_comparisons_table_puts_adjusted_beside_raw(tmp_path):
    rows = _rows(
        tmp_path,
        {"cutout_inside": [68.76, 66.83, 68.04], "keepcutout_inside": [67.94, 69.31, 67.28], "keepcutout_inside_q04": [69.88, 69.23]},
    )
    table = rr.render_comparisons(rs.grid_comparisons(rows))
    lines = [ln for ln in table.splitlines() if ln.startswith("| KeepCutout")]
    assert len(lines) == 2 and "(**primary**)" in lines[0] and "not adjusted (primary)" in lines[0]
    cells = [c.strip() for c in lines[1].split("|")[1:-1]]
    # test, difference, raw interval, raw p, Holm p, adjusted interval, paired differences.
    assert cells[1].startswith("pooled t") and cells[2].startswith("+1.68 ± ")
    assert cells[5].endswith("(of 1)") and cells[4] == cells[5].split(" ")[0]  # one secondary: Holm = raw
    assert cells[7].startswith("+1.12, +2.40 -> +1.76 (p = ")
