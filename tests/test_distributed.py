"""DDP on the CPU: 2 gloo processes train together, reduce their metrics, keep own RNG streams."""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

from keepmix.train.config import ConfigError
from keepmix.train.distributed import DistInfo, all_reduce_sum, any_rank, gather_objects, init_distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_with_timeout(fn, args: tuple, nprocs: int, timeout: float) -> None:
    """``mp.spawn`` bounded in time: the workers are killed and the test fails if they hang."""
    ctx = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                pytest.fail(f"{nprocs} gloo workers did not finish in {timeout:.0f} s and were killed")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()


def _worker(rank: int, world: int, port: int, out: str, train_images, train_labels, test_images, test_labels) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from keepmix.data.split import Split
    from keepmix.train.config import TrainConfig
    from keepmix.train.data import prepare_data
    from keepmix.train.distributed import shutdown_distributed
    from keepmix.train.loop import Trainer

    classes = [str(i) for i in range(10)]
    cfg = TrainConfig(
        name="ddp",
        model="small",
        method="keepcutmix",
        saliency="lowres",
        epochs=2,
        batch_size=8,
        out_dir=out,
        progress=False,
        pictures=False,
        device="cpu",
        log_every=1,
    )
    data = prepare_data(Split(train_images, train_labels, classes), Split(test_images, test_labels, classes), cfg)
    trainer = Trainer(cfg, data=data, run_dir=os.path.join(out, "run"), log=lambda m: None)
    assert trainer.dist.world_size == world and trainer.dist.rank == rank
    final = trainer.run()
    # Extra collective checks while the group is up.
    info = trainer.dist
    assert all_reduce_sum(torch.tensor([rank + 1.0]), info).item() == sum(range(1, world + 1))
    assert any_rank(rank == 1, info) and not any_rank(False, info)
    assert gather_objects({"r": rank}, info) == [{"r": r} for r in range(world)]
    torch.save(
        {"model": trainer.model.state_dict(), "final": final if rank == 0 else None, "seen": trainer.pos.global_step},
        os.path.join(out, f"rank{rank}.pt"),
    )
    del trainer  # DDP first, then the group (shutdown_distributed collects what is left)
    shutdown_distributed(info)


def test_two_gloo_processes_train_one_model(tmp_path, cifar_uint8, cifar_labels):
    args = (
        2,
        _free_port(),
        str(tmp_path),
        cifar_uint8[:48].clone(),
        cifar_labels[:48].clone(),
        cifar_uint8[48:].clone(),
        cifar_labels[48:].clone(),
    )
    _spawn_with_timeout(_worker, args, nprocs=2, timeout=240)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    # DDP: both ranks end with the same weights.
    for k, v in r0["model"].items():
        if k.endswith("num_batches_tracked") or "running" in k:
            continue  # BatchNorm statistics are per rank (no SyncBN)
        assert torch.allclose(v, r1["model"][k], atol=1e-6), k
    # 48 images, 24 per rank, batch 8: 3 steps per epoch on each rank.
    assert r0["seen"] == r1["seen"] == 6
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ck["world_size"] == 2 and len(ck["ranks"]) == 2
    assert not torch.equal(ck["ranks"][0]["aug_rng"], ck["ranks"][1]["aug_rng"])  # own augmentation streams
    # Metrics reduced over ranks: the test accuracy is over all 16 test images, not a shard.
    from keepmix.models import build_model

    model = build_model("small", num_classes=10)
    model.load_state_dict(ck["model"])
    model.eval()
    mean = torch.tensor((0.4914, 0.4822, 0.4465)).view(1, 3, 1, 1)
    std = torch.tensor((0.2470, 0.2435, 0.2616)).view(1, 3, 1, 1)
    with torch.no_grad():
        pred = model((cifar_uint8[48:].float() / 255 - mean) / std).argmax(1)
    expected = 100.0 * (pred == cifar_labels[48:]).float().mean().item()
    assert r0["final"]["test_acc"] == pytest.approx(expected)
    assert r0["final"]["world_size"] == 2
    import json

    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]  # written once (rank 0), not per rank


def test_single_process_is_a_no_op(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    info = init_distributed("cpu")
    assert not info.enabled and info.is_main and info.device == torch.device("cpu")
    t = torch.tensor([1.0, 2.0])
    out = all_reduce_sum(t, info)
    assert torch.equal(out, t) and out is not t
    assert any_rank(True, info) and not any_rank(False, info)
    assert gather_objects({"a": torch.ones(1)}, DistInfo())[0]["a"].item() == 1.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_requested_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match="no GPU"):
        init_distributed("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_device_picks_cuda(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed("auto").device.type == "cuda"
