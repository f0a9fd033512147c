"""Atomic checkpoint writes, weights_only loading, model mismatch errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from keepmix.train.checkpoint import FORMAT_VERSION, CheckpointError, check_model_state, load_checkpoint, save_checkpoint, to_cpu


def _state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "model": {"w": torch.randn(3, 4, generator=g)},
        "epoch": seed,
        "rng": g.get_state(),
        "hist": None,
        "ranks": [{"a": torch.arange(3)}],
        "name": "x",
        "lr": 0.1,
        "finished": False,
        "config": {"epochs": 3},
        "global_step": 7,
    }


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_round_trip_with_weights_only(tmp_path):
    state = _state(1)
    save_checkpoint(state, tmp_path / "checkpoint.pt")
    for where in (tmp_path / "checkpoint.pt", tmp_path):  # a file or its run directory
        back = load_checkpoint(where)
        assert back.pop("format_version") == 1
        assert _same(back, state)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_failed_write_keeps_the_old_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(_state(1), path)
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        f.write(b"partial garbage")  # half a file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_state(2), path)
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_arbitrary_objects_are_refused(tmp_path):
    torch.save({"format_version": 1, "x": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"w": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a keepmix checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_model_mismatch_is_named():
    a = torch.nn.Linear(4, 3)
    check_model_state(a, torch.nn.Linear(4, 3).state_dict())
    with pytest.raises(CheckpointError, match="another model.*another shape.*'weight'"):
        check_model_state(a, torch.nn.Linear(5, 3).state_dict())
    with pytest.raises(CheckpointError, match="missing.*unexpected"):
        check_model_state(a, {"weight": torch.zeros(3, 4), "extra": torch.zeros(1)})


def test_to_cpu_detaches_and_keeps_structure():
    x = torch.ones(2, requires_grad=True) * 2
    out = to_cpu({"a": [x, (x, 1)], "b": None})
    assert not out["a"][0].requires_grad and isinstance(out["a"][1], tuple) and out["b"] is None


def test_load_trained_model_rebuilds_the_run_architecture(tmp_path):
    """The model of a run comes back with its early head, trained weights and eval mode."""
    from keepmix.models import build_model
    from keepmix.train.checkpoint import load_trained_model
    from keepmix.train.config import TrainConfig

    cfg = TrainConfig(model="resnet20", early_head=True, early_block=1, method="keepcutout", saliency="early")
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, early_head=True, early_block=1)
    save_checkpoint({"format_version": FORMAT_VERSION, "config": cfg.to_dict(), "model": model.state_dict()}, tmp_path / "checkpoint.pt")
    loaded, config = load_trained_model(tmp_path, num_classes=10)
    assert config == cfg and loaded.early_block == 1 and not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    with pytest.raises(CheckpointError, match="another model"):
        load_trained_model(tmp_path, num_classes=100)  # the fc of another dataset


def test_empty_truncated_garbage_and_incomplete_checkpoints_say_why(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(_state(1), good)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty \(0 bytes\)"):
        load_checkpoint(tmp_path / "empty.pt")
    (tmp_path / "half.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*half.pt.*truncated"):
        load_checkpoint(tmp_path / "half.pt")
    (tmp_path / "garbage.pt").write_bytes(b"hello garbage" * 10)
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*garbage.pt.*not a complete file written by torch.save"):
        load_checkpoint(tmp_path / "garbage.pt")
    torch.save({"format_version": FORMAT_VERSION, "model": {}}, tmp_path / "part.pt")
    with pytest.raises(CheckpointError, match="not a complete keepmix checkpoint: it lacks config"):
        load_checkpoint(tmp_path / "part.pt")
    with pytest.raises(CheckpointError, match="lacks optimizer"):
        load_checkpoint(good, require=("config", "optimizer"))
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list, not a keepmix checkpoint"):
        load_checkpoint(tmp_path / "list.pt")
    torch.save({"format_version": 99, **_state(1)}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format 99; this keepmix reads format 1"):
        load_checkpoint(tmp_path / "future.pt")


def test_a_folder_that_is_not_a_run_is_named_as_such(tmp_path):
    with pytest.raises(CheckpointError, match="not a keepmix run directory"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.yaml").write_text("epochs: 1\n")
    with pytest.raises(CheckpointError, match="run directory without a checkpoint"):
        load_checkpoint(tmp_path)


def _dev_full_mkstemp(real_mkstemp):
    """mkstemp that returns a descriptor of /dev/full (every write fails with a real ENOSPC
    from the kernel), while the named temporary file exists as mkstemp made it."""
    import os

    def mkstemp(*a, **k):
        fd, name = real_mkstemp(*a, **k)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name

    return mkstemp


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full to make a real ENOSPC")
def test_full_disk_names_the_folder_and_the_space_needed_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    import tempfile

    from keepmix.train.checkpoint import CheckpointWriteError

    # What the checkpoint must not do: torch.save straight into a full file hides ENOSPC in a RuntimeError.
    f = open("/dev/full", "wb")  # noqa: SIM115 (closing it flushes into the full device, which raises too)
    with pytest.raises(RuntimeError):
        torch.save({"x": torch.zeros(100_000)}, f)
    with pytest.raises(OSError):
        f.close()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(_state(1), path)
    monkeypatch.setattr(tempfile, "mkstemp", _dev_full_mkstemp(tempfile.mkstemp))
    with pytest.raises(CheckpointWriteError) as e:
        save_checkpoint(_state(2), path)
    monkeypatch.undo()
    msg = str(e.value)
    assert "\n" not in msg and "disk is full" in msg and f"the folder {str(tmp_path)!r} needs " in msg and " MiB for it" in msg
    assert msg.endswith("the previous checkpoint is unchanged")
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
