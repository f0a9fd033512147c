"""benchmarks/saliency_agreement.py: the agreement measures on known rankings, and a smoke run."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
sa = importlib.import_module("saliency_agreement")


def _scores(b: int = 6, n: int = 100, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_a_map_agrees_perfectly_with_itself_and_with_any_monotone_copy():
    full = _scores()
    for same in (full, 3.0 * full + 1.0, full.exp()):
        a = sa.agreement(same, full, q=0.6)
        assert a["precision"] == pytest.approx([1.0] * 6) and a["spearman"] == pytest.approx([1.0] * 6)
        assert a["important_cut"] == pytest.approx([0.0] * 6)  # the full map's top 20% is never cut


def test_a_reversed_map_cuts_what_the_full_map_protects():
    full = _scores()
    a = sa.agreement(-full, full, q=0.6)
    # -full cuts the full map's top 60 of 100: only 20 of them are among its own bottom 60, and
    # exactly its top 20 are "important".
    assert a["precision"] == pytest.approx([20 / 60] * 6, abs=0.02)
    assert a["important_cut"] == pytest.approx([20 / 60] * 6, abs=0.02)
    assert a["spearman"] == pytest.approx([-1.0] * 6)


def test_mean_cut_area_averages_the_area_below_the_quantile():
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]], dtype=torch.float64)
    area = torch.tensor([[10.0, 20.0, 30.0, 40.0, 50.0]], dtype=torch.float64)
    # The 0.6-quantile of 1..5 is 3.4: positions 1, 2 and 3 may be cut.
    assert sa.mean_cut_area(scores, area, 0.6) == pytest.approx([20.0])
    assert sa.mean_cut_area(-scores, area, 0.6) == pytest.approx([40.0])  # reversed: positions 3, 4 and 5


def test_region_scores_are_box_sums_at_every_position():
    sal = _scores(2, 64, 1).view(2, 8, 8)
    centred = sa.region_scores(sal, 4, "center")
    whole = sa.region_scores(sal, 4, "inside")
    assert centred.shape == (2, 64) and whole.shape == (2, 25)
    for b in range(2):
        for cy in range(8):
            for cx in range(8):
                y1, y2, x1, x2 = max(cy - 2, 0), min(cy + 2, 8), max(cx - 2, 0), min(cx + 2, 8)
                assert centred[b, cy * 8 + cx] == pytest.approx(float(sal[b, y1:y2, x1:x2].sum()))
        for t in range(5):
            for left in range(5):
                assert whole[b, t * 5 + left] == pytest.approx(float(sal[b, t : t + 4, left : left + 4].sum()))


def test_smoke_run_on_a_trained_early_head_run(tmp_path, tiny_folder, isolated_env):
    from keepmix.train.config import TrainConfig
    from keepmix.train.data import load_data
    from keepmix.train.loop import train

    cfg = TrainConfig(
        name="e",
        model="small",
        method="keepcutout",
        saliency="early",
        early_head=True,
        epochs=1,
        batch_size=20,
        lr=0.05,
        out_dir=str(tmp_path / "runs"),
        dataset=str(tiny_folder),
        progress=False,
        pictures=False,
        threads=1,
    )
    final = train(cfg, data=load_data(cfg), log=lambda m: None)
    out = tmp_path / "out"
    assert sa.main(["--quick", "--runs-dir", str(tmp_path / "runs"), "--data", str(tiny_folder), "--out", str(out)]) == 0
    data = json.loads((out / "saliency_agreement.json").read_text())
    (r,) = data["results"]
    assert r["run"] == final["run_dir"] and r["early_placement"] == "after the whole first stage"
    assert r["images"] == 24 and 0 <= r["test_acc"] <= 100 and 0 <= r["early_head_acc"] <= 100
    assert set(r["agreement"]) == {"low-res (1/2)", "early head", "random (chance)"}
    for by_pos in r["agreement"].values():
        for a in by_pos.values():
            assert 0 <= a["precision"] <= 1 and 0 <= a["important_cut"] <= 1 and -1 <= a["spearman"] <= 1
    ca = r["cut_area"]
    assert set(ca) == {"Cutout (no rule)", "full", "low-res (1/2)", "early head", "random (chance)", "uniform (control)"}
    # Every clipped 16 x 16 box centred on a 32 x 32 image, averaged: (sum of side lengths / 32)^2.
    sides = [min(c + 8, 32) - max(c - 8, 0) for c in range(32)]
    assert ca["Cutout (no rule)"] == pytest.approx((sum(sides) / 32) ** 2)
    areas = torch.tensor([a * b for a in sides for b in sides], dtype=torch.float64)
    assert ca["uniform (control)"] == pytest.approx(float(areas[areas < torch.quantile(areas, 0.6)].mean()))
    assert all(0 < v < 256 for v in ca.values())
    md = (out / "saliency_agreement.md").read_text()
    assert md.count("| e-") == 4 and "whole boxes" in md and "The area KeepCutout cuts" in md
    with pytest.raises(SystemExit):
        sa.main(["--out", str(out)])  # no runs given
