"""benchmarks/reproduce.py: the tiny grid end to end, the aggregation, the verdict sentences."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import re
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("reproduce", REPO / "benchmarks" / "reproduce.py")
rp = importlib.util.module_from_spec(_spec)
sys.modules["reproduce"] = rp  # dataclasses look their module up by name
_spec.loader.exec_module(rp)

TABLE_ROW = re.compile(
    r"^\| (?P<label>[^|]+) \| (?P<base>[^|]+) \| (?P<mean>\d+\.\d\d) ± (?P<std>\d+\.\d\d|n/a) \(n=(?P<n>\d+)\) \| "
    r"(?P<gain>[^|]+) \| (?P<paper>[^|]+) \| (?P<time>[^|]+) \|"
)


def _table_rows(md: str) -> dict[str, dict[str, str]]:
    rows = {}
    for line in md.splitlines():
        m = TABLE_ROW.match(line)
        if m:
            rows[m["label"].strip()] = {k: v.strip() for k, v in m.groupdict().items()}
    return rows


# ---------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------
def test_tiny_scale_end_to_end_writes_a_parsable_table_and_resumes(tmp_path, tiny_folder, isolated_env, capsys):
    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = ["--scale", "tiny", "--data", str(tiny_folder), "--out", str(out), "--runs-dir", str(runs)]
    assert rp.main(argv) == 0

    md = (out / "reproduce_tiny.md").read_text()
    rows = _table_rows(md)
    methods = rp.SCALES["tiny"].methods
    assert set(rows) == {rp.GRID_BY_KEY[m].label for m in methods}
    for m in methods:
        row = rows[rp.GRID_BY_KEY[m].label]
        assert row["n"] == "2"
        assert 0.0 <= float(row["mean"]) <= 100.0
        assert float(row["std"]) >= 0.0
        g = rp.GRID_BY_KEY[m]
        if g.base is not None:
            gain, se = row["gain"].split(" ± ")
            float(gain), float(se)  # both parse
        if g.paper_gain is not None:
            assert float(row["paper"]) == pytest.approx(g.paper_gain)
    # One plain sentence per Keep variant.
    assert md.count("- KeepCutout (full): ") == 1
    assert "command: `python benchmarks/reproduce.py --scale tiny" in md

    # JSON and CSV hold every run, and the table's mean is their mean.
    data = json.loads((out / "reproduce_tiny.json").read_text())
    assert len(data["runs"]) == len(methods) * 2
    with open(out / "reproduce_tiny.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(methods) * 2
    for m in methods:
        accs = [float(r["test_acc"]) for r in csv_rows if r["method"] == m]
        assert float(rows[rp.GRID_BY_KEY[m].label]["mean"]) == pytest.approx(statistics.fmean(accs), abs=0.006)
    # The run directories hold the harness's outputs.
    for m in methods:
        for s in (0, 1):
            d = runs / f"{m}-seed{s}"
            assert (d / "final.json").is_file() and (d / "metrics.jsonl").is_file() and (d / "config.yaml").is_file()

    # A second run trains nothing (finished cells are skipped) and gives the same table body.
    stamps = {p: p.stat().st_mtime_ns for p in runs.glob("*/final.json")}
    capsys.readouterr()
    assert rp.main(argv) == 0
    assert "training" not in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*/final.json")} == stamps
    assert _table_rows((out / "reproduce_tiny.md").read_text()) == rows
    # --report-only rebuilds the same table; its "Rerunning" line gives the grid's command.
    assert rp.main(argv + ["--report-only"]) == 0
    md = (out / "reproduce_tiny.md").read_text()
    assert _table_rows(md) == rows and "--report-only" in md.split("## Rerunning")[0]
    assert "--report-only`" not in md.split("## Rerunning")[1].split("(")[0]  # the command itself


def test_a_cell_run_with_other_settings_is_refused(tmp_path, tiny_folder, isolated_env, capsys):
    out, runs = tmp_path / "out", tmp_path / "runs"
    base = ["--scale", "tiny", "--data", str(tiny_folder), "--out", str(out), "--runs-dir", str(runs), "--methods", "none", "--seeds", "0"]
    assert rp.main(base) == 0
    capsys.readouterr()
    assert rp.main(base + ["--batch-size", "4"]) == 2
    err = capsys.readouterr().err
    assert "batch_size" in err and "other settings" in err


def test_parallel_jobs_run_cells_in_subprocesses(tmp_path, tiny_folder, isolated_env):
    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = ["--scale", "tiny", "--data", str(tiny_folder), "--out", str(out), "--runs-dir", str(runs), "--methods", "cutout", "--jobs", "2"]
    assert rp.main([*argv, "--threads", "3"]) == 0
    for s in (0, 1):
        spec = json.loads((runs / f"cutout-seed{s}" / "cell.json").read_text())
        assert spec["config"]["threads"] == 3 and spec["config"]["seed"] == s  # --threads, not cores // jobs
        assert json.loads((runs / f"cutout-seed{s}" / "final.json").read_text())["seed"] == s
    assert len(_table_rows((out / "reproduce_tiny.md").read_text())) == 1


def test_gpu_scale_settings_run_at_a_tiny_size_on_the_cpu(tmp_path, tiny_folder, isolated_env):
    """The GPU scale's recipe (ResNet-18, bf16 autocast, channels_last, early head) at 40 images."""
    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = [
        "--scale",
        "gpu",
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--train-subset",
        "40",
        "--test-subset",
        "20",
        "--batch-size",
        "20",
        "--seeds",
        "0",
        "--methods",
        "cutout",
        "keepcutout_early",
        "--data",
        str(tiny_folder),
        "--out",
        str(out),
        "--runs-dir",
        str(runs),
    ]
    assert rp.main(argv) == 0
    final = json.loads((runs / "keepcutout_early-seed0" / "final.json").read_text())
    cfg = final["config"]
    assert final["amp"] is True and cfg["amp_dtype"] == "bfloat16" and cfg["channels_last"] == "on"
    assert cfg["model"] == "resnet18" and cfg["early_head"] is True and cfg["saliency"] == "early"
    rows = _table_rows((out / "reproduce_gpu.md").read_text())
    assert set(rows) == {"Cutout", "KeepCutout (early)"} and rows["Cutout"]["std"] == "n/a"


def test_early_scale_trains_the_head_after_one_block(tmp_path, tiny_folder, isolated_env):
    """The early-head placement grid (ResNet-20) at 40 images: the block-1 cell's head sits after
    one block of the first stage, and its saliency comes from that head."""
    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = [
        "--scale",
        "early",
        "--epochs",
        "1",
        "--train-subset",
        "40",
        "--test-subset",
        "20",
        "--batch-size",
        "20",
        "--seeds",
        "0",
        "--methods",
        "keepcutout_early",
        "keepcutout_early1",
        "--data",
        str(tiny_folder),
        "--out",
        str(out),
        "--runs-dir",
        str(runs),
    ]
    assert rp.main(argv) == 0
    cfg1 = json.loads((runs / "keepcutout_early1-seed0" / "final.json").read_text())["config"]
    cfg0 = json.loads((runs / "keepcutout_early-seed0" / "final.json").read_text())["config"]
    assert cfg1["model"] == cfg0["model"] == "resnet20" and cfg1["early_block"] == 1 and cfg0["early_block"] == 0
    from keepmix.train.checkpoint import load_trained_model

    model, config = load_trained_model(runs / "keepcutout_early1-seed0", num_classes=10)
    assert model.early_block == 1 and not model.training and config.early_block == 1
    rows = _table_rows((out / "reproduce_early.md").read_text())
    assert set(rows) == {"KeepCutout (early)", "KeepCutout (early, block 1)"}


def test_bad_options_exit_2(tmp_path, monkeypatch, capsys):
    assert rp.main(["--scale", "tiny", "--methods", "keepcutout_early1", "--out", str(tmp_path)]) == 2
    assert "early_block" in capsys.readouterr().err
    assert rp.main(["--scale", "tiny", "--model", "nosuchnet", "--out", str(tmp_path)]) == 2
    assert "nosuchnet" in capsys.readouterr().err
    assert rp.main(["--scale", "tiny", "--methods", "cutout", "nosuch", "--out", str(tmp_path)]) == 2
    assert "nosuch" in capsys.readouterr().err
    assert rp.main(["--scale", "tiny", "--jobs", "0", "--out", str(tmp_path)]) == 2
    assert rp.main(["--scale", "tiny", "--threads", "0", "--out", str(tmp_path)]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert rp.main(["--scale", "gpu", "--out", str(tmp_path)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tiny_grid_on_cuda(tmp_path, tiny_folder, isolated_env):
    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = ["--scale", "tiny", "--device", "cuda", "--data", str(tiny_folder), "--out", str(out), "--runs-dir", str(runs)]
    assert rp.main(argv) == 0
    final = json.loads((runs / "keepcutout-seed0" / "final.json").read_text())
    assert final["device"].startswith("cuda")
    assert "GPU" in (out / "reproduce_tiny.md").read_text()


# ---------------------------------------------------------------------------------------------
# Grid definition
# ---------------------------------------------------------------------------------------------
def test_every_method_builds_a_valid_config_at_every_scale():
    for scale in rp.SCALES.values():
        for key in scale.methods:
            g = rp.GRID_BY_KEY[key]
            cfg = rp.cell_config(scale, g.key, 3)
            assert cfg.seed == 3 and cfg.name == f"{g.key}-seed3"
            assert 1 <= cfg.eval_every <= cfg.epochs
            for k, v in g.fields.items():
                assert getattr(cfg, k) == v
    everything = {m.key for m in rp.GRID}
    inside = {k for k in everything if "_inside" in k}
    q_sweep = {"keepcutout_inside_q04", "keepcutout_inside_q08"}  # run on request, beside the inside grid
    assert len(rp.GRID) == 30 and set(rp.SCALES["gpu"].methods) == everything - inside
    assert set(rp.SCALES["inside"].methods) == inside - q_sweep
    for key, q in (("keepcutout_inside_q04", 0.4), ("keepcutout_inside_q08", 0.8)):
        cfg = rp.cell_config(rp.SCALES["inside"], key, 0)
        assert cfg.keep_quantile == q and cfg.whole_boxes and cfg.saliency == "full"
    # The small net's stages are single blocks: the head-after-one-block variant is refused
    # up front (not a failed cell after the others trained).
    assert set(rp.SCALES["cpu"].methods) == everything - {"keepcutout_early1"} - inside
    with pytest.raises(rp.GridError, match="keepcutout_early1 cannot run on small: early_block"):
        rp.cell_config(rp.SCALES["cpu"], "keepcutout_early1", 0)
    early = rp.SCALES["early"]
    assert set(early.methods) == {"cutout", "keepcutout", "keepcutout_uniform", "cutout_earlyhead", "keepcutout_early", "keepcutout_early1"}
    assert rp.cell_config(early, "keepcutout_early1", 0).model == "resnet20"
    # The same settings as the cpu grid apart from the model: the two tables are comparable.
    assert {k: v for k, v in early.fields.items() if k != "model"} == {k: v for k, v in rp.SCALES["cpu"].fields.items() if k != "model"}
    # Every Keep variant sits beside its base method, with the paper's gain.
    for g in rp.GRID:
        if g.key.startswith("keep"):
            # (a whole-box Keep variant sits beside whole-box Cutout: the same area cut)
            assert g.base == g.fields["method"][len("keep") :] + ("_inside" if g.fields.get("whole_boxes") else "")
            # Every Keep variant has the paper's gain beside it, except the control the paper lacks
            # and KeepResizeMix, which no paper has.
            no_paper_row = g.fields.get("saliency") == "uniform" or g.key == "keepresizemix" or bool(g.fields.get("whole_boxes"))
            assert (g.paper_gain is None) == no_paper_row
            assert g.paper_gain is None or g.paper_gain > 0
    cpu = rp.cell_config(rp.SCALES["cpu"], "none", 0)
    assert cpu.eval_every == cpu.epochs  # the CPU grid evaluates once, at the end
    assert rp.cell_config(rp.SCALES["cpu"], "none", 0, {"epochs": 3}).eval_every == 3
    with pytest.raises(rp.GridError, match="unknown method"):
        rp.cell_config(rp.SCALES["cpu"], "cutmixx", 0)


# ---------------------------------------------------------------------------------------------
# Aggregation on synthetic run directories
# ---------------------------------------------------------------------------------------------
def _fake_run(runs: Path, method: str, seed: int, acc: float, epoch_times=(10.0, 10.0)) -> None:
    d = runs / rp.cell_name(method, seed)
    d.mkdir(parents=True)
    metrics = [{"epoch": i + 1, "epoch_time_s": t, "images_per_s": 100.0} for i, t in enumerate(epoch_times)]
    metrics[-1]["test_acc"] = acc
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    (d / "final.json").write_text(
        json.dumps(
            {"test_acc": acc, "best_test_acc": acc + 1, "epochs": len(epoch_times), "steps": 10, "wall_time_s": sum(epoch_times) + 5.0}
        )
    )


def test_aggregate_means_stds_gains_and_time_ratios(tmp_path):
    accs = {"none": [80.0, 82.0, 81.0], "cutout": [82.0, 84.0, 83.0], "keepcutout": [83.0, 83.5, 84.0], "keepcutout_lowres": [70.0]}
    for m, values in accs.items():
        for s, a in enumerate(values):
            times = (20.0, 20.0) if m == "keepcutout" else (10.0, 10.0)
            _fake_run(tmp_path, m, s, a, times)
    methods = ["none", "cutout", "keepcutout", "keepcutout_lowres", "cutmix"]
    records = rp.collect(tmp_path, methods, [0, 1, 2])
    assert len(records) == 10
    assert records[0].train_time_s == 20.0 and records[0].wall_time_s == 25.0
    rows = {r.method: r for r in rp.aggregate(records, methods)}

    none, cutout, keep = rows["none"], rows["cutout"], rows["keepcutout"]
    assert none.acc_mean == pytest.approx(81.0) and none.acc_std == pytest.approx(1.0) and none.n == 3
    assert none.gain is None and none.verdict == ""
    # The spread pooled over the grid: variances 1, 1 and 0.25 with 2 degrees of freedom each.
    sd = math.sqrt((2 * 1.0 + 2 * 1.0 + 2 * 0.25) / 6)
    assert cutout.gain == pytest.approx(2.0)
    assert cutout.gain_se == pytest.approx(sd * math.sqrt(2 / 3)) and cutout.gain_tol == pytest.approx(2.4469 * cutout.gain_se, rel=1e-4)
    assert keep.acc_std == pytest.approx(statistics.stdev([83.0, 83.5, 84.0]))
    assert keep.gain == pytest.approx(0.5)
    assert keep.gain_se == pytest.approx(sd * math.sqrt(2 / 3))
    assert keep.time_ratio == pytest.approx(2.0) and keep.paper_cost == pytest.approx(2.0)
    assert keep.paper_gain == 0.5 and keep.base_label == "Cutout"
    # +0.5 is within the 95% interval of zero (2.447 * 0.71), and the paper's +0.5 is too.
    assert "does NOT show" in keep.verdict and "also within it" in keep.verdict
    low = rows["keepcutout_lowres"]
    # One seed has no std of its own, but the pooled spread still gives its difference an error.
    assert low.n == 1 and low.acc_std is None and low.gain == pytest.approx(-13.0)
    assert low.gain_se == pytest.approx(sd * math.sqrt(1 + 1 / 3))
    assert "opposite direction" in low.verdict
    cutmix = rows["cutmix"]
    assert cutmix.n == 0 and cutmix.acc_mean is None and "no finished run" in cutmix.verdict

    meta = {
        "scale": "x",
        "command": "c",
        "date": "d",
        "commit": "k",
        "machine": "m",
        "jobs": 1,
        "runs_dir": "r",
        "description": "desc",
        "expected_time": "t",
        "seeds": [0, 1, 2],
        "settings": {"epochs": 2},
        "missing": ["cutmix-seed0"],
    }
    md = rp.render_markdown(list(rows.values()), meta)
    table = _table_rows(md)
    assert table["KeepCutout (full)"]["mean"] == "83.50" and table["KeepCutout (full)"]["gain"].startswith("+0.50 ± ")
    assert table["KeepCutout (low-res)"]["std"] == "n/a"
    assert "| CutMix | crop+flip only | no finished run |" in md
    assert "cutmix-seed0" in md
    paths = rp.write_outputs(tmp_path / "out", "x", list(rows.values()), records, meta)
    assert [p.name for p in paths] == ["reproduce_x.md", "reproduce_x.json", "reproduce_x.csv"]


def test_keepcutout_variants_are_set_against_the_uniform_map_control(tmp_path):
    accs = {
        "cutout": [70.0, 71.0],
        "keepcutout_uniform": [72.0, 72.4],
        "keepcutout": [72.2, 72.6],
        "keepcutout_lowres": [76.0, 76.4],
        "cutout_earlyhead": [68.3, 68.5],
        "keepcutout_early": [68.0, 68.4],
        "keepcutmix": [75.0, 75.0],
    }
    for m, values in accs.items():
        for s, a in enumerate(values):
            _fake_run(tmp_path, m, s, a)
    methods = list(accs)
    rows = rp.aggregate(rp.collect(tmp_path, methods, [0, 1]), methods)
    sentences = rp.control_sentences(rows)
    # One per KeepCutout variant: against the uniform map, or for the early-head variant (which
    # also trains the head) against Cutout + early head; KeepCutMix is not a KeepCutout.
    assert [s.split(":")[0] for s in sentences] == ["KeepCutout (full)", "KeepCutout (low-res)", "KeepCutout (early)"]
    # Pooled spread: sample variances 0.5 (Cutout), 0.02 (the early-head control), 0 (KeepCutMix)
    # and 0.08 (two seeds 0.4 apart) for the other four, one degree of freedom each.
    se = math.sqrt((0.5 + 0.02 + 4 * 0.08) / 7) * math.sqrt(1 / 2 + 1 / 2)
    assert sentences[0].startswith(f"KeepCutout (full): +0.20 ± {se:.2f}") and "adds nothing measurable" in sentences[0]
    assert "the saliency map itself adds accuracy" in sentences[1]
    assert "over Cutout + early head" in sentences[2] and "adds nothing measurable to a network" in sentences[2]
    meta = {
        "scale": "x",
        "command": "c",
        "date": "d",
        "commit": "k",
        "machine": "m",
        "jobs": 1,
        "runs_dir": "r",
        "description": "desc",
        "expected_time": "t",
        "seeds": [0, 1],
        "settings": {"epochs": 2},
    }
    md = rp.render_markdown(rows, meta)
    assert "Against the control" in md and all(s in md for s in sentences)
    assert rp.control_sentences([r for r in rows if r.method not in ("keepcutout_uniform", "cutout_earlyhead")]) == []
    # Worse than the control, beyond the spread.
    for s in (0, 1):
        (tmp_path / f"keepcutout_lowres-seed{s}" / "final.json").unlink()
        (tmp_path / f"keepcutout_lowres-seed{s}" / "metrics.jsonl").unlink()
        (tmp_path / f"keepcutout_lowres-seed{s}").rmdir()
        _fake_run(tmp_path, "keepcutout_lowres", s, 68.0 + 0.4 * s)
    rows = rp.aggregate(rp.collect(tmp_path, methods, [0, 1]), methods)
    assert "worse regions than area alone" in rp.control_sentences(rows)[1]


def test_each_keep_method_is_set_against_its_own_uniform_map_control(tmp_path):
    """KeepResizeMix's control is KeepResizeMix on a constant map, not KeepCutout's."""
    accs = {
        "resizemix": [70.0, 70.4],
        "keepresizemix": [73.0, 73.4],
        "keepresizemix_uniform": [72.8, 73.2],
        "keepcutout_uniform": [60.0, 60.4],
    }
    for m, values in accs.items():
        for s, a in enumerate(values):
            _fake_run(tmp_path, m, s, a)
    rows = rp.aggregate(rp.collect(tmp_path, list(accs), [0, 1]), list(accs))
    (sentence,) = rp.control_sentences(rows)
    # Two seeds 0.4 apart everywhere: pooled s = sqrt(0.08), se = s * sqrt(1/2 + 1/2) = 0.28.
    assert sentence.startswith("KeepResizeMix: +0.20 ± 0.28 points over the uniform-map control") and "nothing measurable" in sentence


def test_unfinished_cells_are_not_collected(tmp_path):
    _fake_run(tmp_path, "none", 0, 50.0)
    (tmp_path / "none-seed1").mkdir()
    (tmp_path / "none-seed1" / "checkpoint.pt").write_bytes(b"")
    assert [r.seed for r in rp.collect(tmp_path, ["none"], [0, 1])] == [0]
    assert rp.cell_status(tmp_path / "none-seed1") == "partial"
    assert rp.cell_status(tmp_path / "none-seed2") == "todo"


@pytest.mark.parametrize(
    "gain, se, paper, expect",
    [
        (1.0, 0.2, 0.5, ["shows the paper's effect", "larger than the paper's"]),
        (0.6, 0.2, 0.5, ["shows the paper's effect"]),
        (0.3, 0.1, 2.0, ["shows the paper's effect", "smaller than the paper's"]),
        (-1.0, 0.2, 0.5, ["does NOT show", "opposite direction"]),
        (0.1, 0.3, 0.5, ["does NOT show", "within the seed spread of zero", "also within it"]),
        (-0.1, 0.1, 0.5, ["does NOT show", "within the seed spread of zero", "lies outside it"]),
        (-0.5, 0.1, -0.08, ["shows the paper's effect", "larger than the paper's"]),
    ],
)
def test_verdict_sentences(gain, se, paper, expect):
    text = rp.verdict("KeepX", "X", gain, se, paper, 2, 2)
    assert text.startswith("KeepX: ")
    for phrase in expect:
        assert phrase in text
    # Exactly one of the three conclusions.
    assert ("shows the paper's effect" in text) + ("does NOT show" in text) == 1


def test_difference_uses_the_pooled_spread_and_t():
    spread = rp.pooled_spread([(2, 1.0), (3, 2.0), (1, None), (0, None), (2, None)])
    # (1 * 1 + 2 * 4) / (1 + 2) = 3
    assert spread.df == 3 and spread.sd == pytest.approx(math.sqrt(3.0))
    assert rp.pooled_spread([(1, None), (2, None)]) is None
    diff, se, tol = rp.difference(10.0, 2, 9.0, 3, spread)
    assert diff == 1.0 and se == pytest.approx(math.sqrt(3.0) * math.sqrt(1 / 2 + 1 / 3))
    assert tol == pytest.approx(3.182 * se, abs=1e-3 * se)
    assert rp.difference(1.0, 2, 0.0, 2, None) == (1.0, None, None)
    # Student's t quantiles (scipy), not a table: exact at every df, normal in the limit.
    from scipy.stats import t

    assert rp.t975(13) == pytest.approx(2.1604, abs=1e-4) and rp.t975(1) == pytest.approx(12.7062, abs=1e-4)
    assert rp.t975(2.5) == pytest.approx(t.ppf(0.975, 2.5)) and rp.t975(1e6) == pytest.approx(1.95997, abs=1e-4)
    with pytest.raises(ValueError, match="df"):
        rp.t975(0)
    # A gain of 3 standard errors is "beyond" by a 2 se rule but not with t for 2 degrees of freedom.
    assert "within the seed spread" in rp.verdict("A", "B", 3.0, 1.0, None, 2, 2, tol=4.303)


def test_verdict_edge_cases():
    assert rp.verdict("A", None, None, None, None, 2, 0) == ""
    assert "no paper number" in rp.verdict("A", "B", 5.0, 1.0, None, 2, 2)
    assert "beyond the seed spread" in rp.verdict("A", "B", 5.0, 1.0, None, 2, 2)
    assert "within the seed spread" in rp.verdict("A", "B", 1.0, 1.0, None, 2, 2)
    assert "one seed" in rp.verdict("A", "B", 1.0, None, 0.5, 1, 2)
    assert "cannot compare" in rp.verdict("A", "B", None, None, 0.5, 0, 2)


def test_mean_std():
    assert rp.mean_std([]) == (None, None)
    assert rp.mean_std([3.0]) == (3.0, None)
    m, s = rp.mean_std([1.0, 2.0, 4.0])
    assert m == pytest.approx(7 / 3) and s == pytest.approx(float(np.std([1.0, 2.0, 4.0], ddof=1)))


def test_a_cell_stopped_by_the_time_limit_resumes_to_the_same_result(tmp_path, tiny_folder, isolated_env):
    splits = rp.load_splits(str(tiny_folder))
    cfg = rp.cell_config(rp.SCALES["tiny"], "cutout", 0)
    whole = rp.run_cell(tmp_path / "whole", cfg, splits)

    from keepmix.train.loop import RunInterrupted

    cut = tmp_path / "runs" / rp.cell_name("cutout", 0)
    with pytest.raises(RunInterrupted):
        rp.run_cell(cut, cfg, splits, deadline=0.0)  # long past: stops after the first step
    assert rp.cell_status(cut) == "partial" and not (cut / "failed.json").exists()

    # The grid resumes the checkpoint (and reports a stopped grid with exit status 3 first).
    out = tmp_path / "out"
    argv = [
        "--scale",
        "tiny",
        "--methods",
        "cutout",
        "--seeds",
        "0",
        "--data",
        str(tiny_folder),
        "--out",
        str(out),
        "--runs-dir",
        str(tmp_path / "runs"),
    ]
    assert rp.main(argv + ["--time-limit", "1e-9"]) == 3
    assert "cutout-seed0" in (out / "reproduce_tiny.md").read_text()  # listed as missing
    assert rp.main(argv) == 0
    resumed = json.loads((cut / "final.json").read_text())
    assert resumed["test_acc"] == whole["test_acc"] and resumed["steps"] == whole["steps"]
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(cut / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# Teachers (Attentive CutMix) and a subset of cells
# ---------------------------------------------------------------------------------------------
def test_attentive_cutmix_cells_get_their_teacher_cell_and_run_after_it(tmp_path, tiny_folder, isolated_env, capsys):
    runs, out = tmp_path / "runs", tmp_path / "out"
    cfg = rp.cell_config(rp.SCALES["tiny"], "attentive_cutmix", 1, runs_dir=runs)
    assert cfg.teacher_run == str(runs / "none-seed1") and cfg.method == "attentive_cutmix"
    assert rp.cell_config(rp.SCALES["cpu"], "attentive_cutmix", 0).teacher_run == str(rp.default_runs_dir("cpu") / "none-seed0")
    assert rp.teacher_cell("attentive_cutmix", 3) == ("none", 3) and rp.teacher_cell("cutout", 3) is None
    # The teacher cells come first, once each; the other cells keep their order.
    assert rp.order_with_teachers([("attentive_cutmix", 0), ("cutout", 0), ("none", 0), ("attentive_cutmix", 1)]) == [
        ("none", 0),
        ("none", 1),
        ("attentive_cutmix", 0),
        ("cutout", 0),
        ("attentive_cutmix", 1),
    ]
    argv = [
        "--scale",
        "tiny",
        "--methods",
        "attentive_cutmix",
        "--seeds",
        "0",
        "--data",
        str(tiny_folder),
        "--out",
        str(out),
        "--runs-dir",
        str(runs),
    ]
    assert rp.main(argv) == 0
    for cell in ("none-seed0", "attentive_cutmix-seed0"):
        assert (runs / cell / "final.json").is_file()
    final = json.loads((runs / "attentive_cutmix-seed0" / "final.json").read_text())
    assert final["config"]["teacher_run"] == str(runs / "none-seed0")
    # The table covers the scale's grid: the cells of this command, the rest listed as missing.
    md = (out / "reproduce_tiny.md").read_text()
    assert set(_table_rows(md)) == {"crop+flip only", "Attentive CutMix"}
    assert "cutout-seed0" in md.split("Cells without a finished run")[1]


def test_a_teacher_without_its_checkpoint_is_refused_before_training(tmp_path, tiny_folder, isolated_env, capsys):
    runs = tmp_path / "runs"
    _fake_run(runs, "none", 0, 50.0)  # a copied summary: final.json, no checkpoint.pt
    argv = [
        "--scale",
        "tiny",
        "--methods",
        "attentive_cutmix",
        "--seeds",
        "0",
        "--data",
        str(tiny_folder),
        "--out",
        str(tmp_path / "out"),
        "--runs-dir",
        str(runs),
    ]
    assert rp.main(argv) == 2
    err = capsys.readouterr().err
    assert "none-seed0" in err and "no checkpoint.pt" in err
    assert not (runs / "attentive_cutmix-seed0").exists()
