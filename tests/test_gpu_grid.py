"""benchmarks/gpu_grid.py at the tiny size on the CPU: every cell kind trains and writes its
record, the resume skips finished runs, shards and the time limit pick and stop, the time
model prints, the step-cost table is written."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import gpu_grid as G  # noqa: E402


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_grid")
    rc = G.main(["--device", "cpu", "--tiny", "--out", str(out), "--seeds", "0"])
    assert rc == 0
    return out


def test_every_cell_kind_trains_and_writes_its_record(grid):
    recipe = G.tiny_recipe()
    names = sorted(p.name for p in (grid / "records").glob("*.json"))
    assert names == sorted(f"{c.name}__s0.json" for c in G.CELLS)
    assert {c.kind for c in G.CELLS} == {
        "none",
        "cutout",
        "keepcutout",
        "cutmix",
        "keepcutmix",
        "autoaugment",
        "keepautoaugment",
        "recursivemix",
    }
    for c in G.CELLS:
        rec = json.loads((grid / "records" / f"{c.name}__s0.json").read_text())
        assert rec["cell"] == c.name and rec["seed"] == 0 and rec["recipe"] == recipe.fingerprint()
        assert 0.0 <= rec["accuracy"] <= 1.0 and 0.0 <= rec["accuracy_no_tta"] <= 1.0
        assert rec["steps"] == recipe.epochs * (recipe.n_train // recipe.batch_size)
        assert len(rec["epoch_seconds"]) == recipe.epochs
    report = (grid / "gpu_grid.md").read_text()
    assert all(f"| {c.name} | 1 |" in report for c in G.CELLS)
    assert "regime check" in report and "saliency's own effect" in report
    assert (grid / "time_model.md").read_text().startswith("Time model (ESTIMATE")


def test_resume_skips_finished_runs(grid, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in (grid / "records").glob("*.json")}
    assert G.main(["--device", "cpu", "--tiny", "--out", str(grid), "--seeds", "0"]) == 0
    printed = capsys.readouterr().out
    assert "18 already done, 0 to run" in printed
    assert "Time model (ESTIMATE" in printed  # the time model prints before every grid
    assert {p.name: p.stat().st_mtime_ns for p in (grid / "records").glob("*.json")} == before


def test_a_changed_recipe_does_not_count_as_done(grid):
    other = G.tiny_recipe().__class__(**{**G.tiny_recipe().__dict__, "epochs": 3})
    assert not G.is_done(grid, G.CELLS[0], 0, other)
    assert G.is_done(grid, G.CELLS[0], 0, G.tiny_recipe())
    # compiling does not change the recipe: a grid can be resumed with --no-compile
    assert G.Recipe().fingerprint() == G.Recipe(compile=False).fingerprint() != G.Recipe(epochs=15).fingerprint()


def test_shard_and_time_limit(tmp_path, capsys):
    assert G.parse_shard("2/3") == (2, 3)
    with pytest.raises(SystemExit):
        G.parse_shard("4/3")
    runs = G.grid_runs()
    assert len(runs) == 54 and runs[:18] == [(c, 0) for c in G.CELLS]  # seed-major
    shards = [runs[i - 1 :: 3] for i in (1, 2, 3)]
    assert sorted((c.name, s) for sh in shards for c, s in sh) == sorted((c.name, s) for c, s in runs)
    rc = G.main(["--device", "cpu", "--tiny", "--out", str(tmp_path), "--shard", "2/3", "--time-limit", "0.00001"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "18 runs in shard 2/3" in printed and "rerun the same command to resume" in printed
    assert not list(tmp_path.glob("records/*.json"))


def test_time_model_estimate_fits_and_orders_the_saliency_variants(tmp_path, capsys):
    recipe = G.Recipe()
    tm = G.time_model(recipe)
    rel = {k: v["relative"] for k, v in tm["kinds"].items()}
    assert math.isclose(rel["keepcutout:full"], 5 / 3, rel_tol=1e-6)
    assert 1 < rel["keepcutout:lowres+early"] < rel["keepcutout:early"] < rel["keepcutout:full"]
    assert 1 < rel["keepcutout:lowres"] < rel["keepcutout:full"]
    assert rel["none"] == rel["cutout"] == rel["recursivemix"] == 1.0
    assert tm["runs"] == 54 and tm["source"] == "estimate" and tm["fits"] and tm["total_seconds"] <= 540
    assert tm["epochs_that_fit"] >= recipe.epochs
    assert G.main(["--time-model", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "ESTIMATE at an assumed 200 TFLOP/s" in printed and "54 runs" in printed and "FITS" in printed
    # measured step times replace the estimate
    measured = {k: 0.01 for k in tm["kinds"]}
    tm2 = G.time_model(recipe, measured=measured)
    assert tm2["source"] == "measured" and math.isclose(tm2["kinds"]["cutout"]["epoch_seconds"], 0.01 * 48)
    assert "MEASURED" in G.format_time_model(tm2, recipe)


def test_step_cost_table_at_tiny_size(tmp_path, capsys):
    assert G.main(["--device", "cpu", "--tiny", "--step-cost", "--out", str(tmp_path)]) == 0
    sc = json.loads((tmp_path / "step_cost.json").read_text())
    rows = sc["rows"]
    assert set(rows) == set(G.STEP_COST_CELLS)  # no compiled-vs-eager row on the CPU
    assert rows["cutout16"]["ratio_to_cutout"] == 1.0
    assert all(v["seconds_per_step"] > 0 for v in rows.values())
    md = (tmp_path / "step_cost.md").read_text()
    for label in ("Cutout", "KeepCutout (full)", "KeepCutout (low-res)", "KeepCutout (early)", "KeepCutout (low-res + early)"):
        assert f"| {label} |" in md
    assert "MEASURED" in (tmp_path / "time_model_measured.md").read_text()


def test_flip_translate_is_a_reflected_shift_and_alternates_the_flip():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    none = torch.zeros(6, dtype=torch.bool)
    assert torch.equal(G.flip_translate(x, 0, none, 0, g), x)
    assert torch.equal(G.flip_translate(x, 1, none, 0, g), x.flip(-1))  # odd epochs flip the other half
    half = torch.tensor([True, False] * 3)
    y = G.flip_translate(x, 0, half, 0, g)
    assert torch.equal(y[0], x[0].flip(-1)) and torch.equal(y[1], x[1])
    z = G.flip_translate(x, 0, none, 2, g, chunk=4)
    padded = torch.nn.functional.pad(x.float(), (2, 2, 2, 2), mode="reflect")
    for i in range(6):  # every output is one 8x8 window of the reflect-padded image
        wins = [padded[i, :, a : a + 8, b : b + 8] for a in range(5) for b in range(5)]
        assert any(torch.equal(z[i].float(), w) for w in wins)


def test_summary_pools_the_spread_over_seeds():
    recs = [dict(cell="cutout16", accuracy=a) for a in (0.950, 0.952, 0.954)]
    recs += [dict(cell="keepcutout16", accuracy=a) for a in (0.955, 0.957, 0.959)]
    s = G.summarize(recs)
    assert math.isclose(s["pooled_sd"], 0.2, rel_tol=1e-6) and s["pooled_df"] == 4
    comp = {c["label"]: c for c in s["comparisons"]}["KeepCutout (full) vs Cutout"]
    assert math.isclose(comp["diff"], 0.5, rel_tol=1e-6)
    assert math.isclose(comp["ci"], G.t_quantile(0.975, 4) * 0.2 * math.sqrt(2 / 3), rel_tol=1e-6)
    assert s["detectable"] > s["ci_halfwidth"] > 0


def test_the_grid_builds_its_ops_with_the_harness_registry_as_the_cells_say():
    import keepmix

    r = G.tiny_recipe()
    direct = {
        "cutout16": keepmix.Cutout(16),
        "cutout16_inside": keepmix.Cutout(16, placer=keepmix.UniformPlacer(whole_boxes=True)),
        "keepcutout24": keepmix.KeepCutout(24, q=r.keep_q),
        "keepcutout16_inside": keepmix.KeepCutout(16, q=r.keep_q, whole_boxes=True),
        "cutmix": keepmix.CutMix(alpha=r.cutmix_alpha, p=r.cutmix_p, num_classes=10),
        "keepautoaugment": keepmix.KeepAutoAugment("cifar10", size=r.keep_paste_size, q=r.keep_q),
    }
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(6) % 10
    sal = torch.rand(6, 32, 32, generator=torch.Generator().manual_seed(1))
    assert G.build_op(G.CELL_BY_NAME["crop+flip"], r, 10) is None
    for name, ref in direct.items():
        op = G.build_op(G.CELL_BY_NAME[name], r, 10)
        assert type(op) is type(ref), name
        xi = x if op.raw_pixels else x.float() / 255
        kw = {"saliency": sal} if op.needs_saliency(xi) else {}
        a = op(xi, y, generator=torch.Generator().manual_seed(0), **kw)
        b = ref(xi, y, generator=torch.Generator().manual_seed(0), **kw)
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True)) if isinstance(a, tuple) else torch.equal(a, b), name
