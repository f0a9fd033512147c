"""benchmarks/bench_engine.py runs end to end at a tiny size and writes its tables."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))


def test_bench_engine_quick(tmp_path):
    import bench_engine

    assert bench_engine.main(["--quick", "--rounds", "1", "--sample-s", "0.001", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "engine.json").read_text())
    assert {r["op"] for r in data["overhead"]} == {name for name, *_ in bench_engine.OPS}
    assert all(r["met"] in (True, False) for r in data["overhead"] if r["batch"] == 8)
    md = (tmp_path / "engine.md").read_text()
    assert "## Overhead per call" in md and "## Policies" in md and "## Throughput" in md
