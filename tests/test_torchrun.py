"""`torchrun --nproc_per_node 2 -m keepmix train ...` (gloo on the CPU): exits 0, and the
results are printed once (rank 0), with real numbers."""

from __future__ import annotations

import json
import os
import socket
import sys

from isolated import run_isolated


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_cli_under_torchrun_exits_0_and_prints_once(tmp_path, tiny_folder):
    out = tmp_path / "runs"
    env = dict(os.environ, KEEPMIX_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "keepmix",
        "train",
        "cifar10-small-keepcutout-quick",
        "--dataset",
        str(tiny_folder),
        "--out-dir",
        str(out),
        "--device",
        "cpu",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--train-subset",
        "0",
        "--test-subset",
        "0",
        "--threads",
        "1",
        "--no-progress",
        "--no-pictures",
    ]
    res = run_isolated(cmd, env=env, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "FAILED" not in res.stderr and "Traceback" not in res.stderr
    (run,) = out.iterdir()  # one run directory for both ranks
    assert res.stdout.count("run directory:") == 1 and res.stdout.count("final test accuracy:") == 1
    assert res.stderr.count("run directory:") == 1  # the trainer's own log: rank 0 only
    assert res.stderr.count("epoch 2/2:") == 1
    final = json.loads((run / "final.json").read_text())
    assert final["world_size"] == 2 and final["steps"] == 2 * (40 // 2 // 8)
    assert f"final test accuracy: {final['test_acc']:.2f}%" in res.stdout
    assert "None" not in res.stdout
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
