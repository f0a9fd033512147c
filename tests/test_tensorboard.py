"""`keepmix train --log tensorboard`: real event files, read back with TensorBoard's own
EventAccumulator: the losses, accuracies and lr of metrics.jsonl, and the method grid image."""

from __future__ import annotations

import pytest

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from keepmix.cli import main  # noqa: E402
from keepmix.train.run_dir import RunDir  # noqa: E402


def test_tensorboard_event_files_hold_the_metrics_and_the_grid(tmp_path, tiny_folder, monkeypatch, capsys):
    monkeypatch.setenv("KEEPMIX_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "runs"
    rc = main(
        [
            "train",
            "cifar10-small-keepcutout-quick",
            "--dataset",
            str(tiny_folder),
            "--out-dir",
            str(out),
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--train-subset",
            "0",
            "--test-subset",
            "0",
            "--no-progress",
            "--threads",
            "1",
            "--no-pictures",
            "--log",
            "tensorboard",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    (run,) = out.iterdir()
    files = RunDir(run)
    assert "tensorboard --logdir" in capsys.readouterr().out
    acc = EventAccumulator(str(files.tensorboard), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    records = files.read_metrics()  # metrics.jsonl is still written, and is the reference
    assert [r["epoch"] for r in records] == [1, 2]
    for key, tag in {
        "train_loss": "train/loss",
        "train_acc": "train/acc",
        "test_loss": "test/loss",
        "test_acc": "test/acc",
        "lr": "lr",
    }.items():
        assert tag in tags["scalars"], tag
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [r["step"] for r in records]
        assert [e.value for e in events] == pytest.approx([r[key] for r in records], rel=1e-6)
    assert "methods" in tags["images"]
    (img,) = acc.Images("methods")
    assert img.width > 100 and img.height > 100 and img.encoded_image_string[:4] == b"\x89PNG"
    assert files.methods_png.is_file()


def test_jsonl_is_the_default_and_writes_no_event_files(tmp_path, tiny_folder, monkeypatch, capsys):
    monkeypatch.setenv("KEEPMIX_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "runs"
    assert (
        main(
            [
                "train",
                "cifar10-small-none-quick",
                "--dataset",
                str(tiny_folder),
                "--out-dir",
                str(out),
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--train-subset",
                "0",
                "--test-subset",
                "0",
                "--no-progress",
                "--threads",
                "1",
                "--no-pictures",
            ]
        )
        == 0
    )
    (run,) = out.iterdir()
    assert RunDir(run).metrics.is_file() and not RunDir(run).tensorboard.exists()


def test_a_resumed_run_goes_on_writing_its_event_files(tmp_path, tiny_folder, monkeypatch, capsys):
    """`--resume RUN --epochs N` without --log: a run logged to TensorBoard stays logged, and
    the event files then hold every epoch of metrics.jsonl once."""
    monkeypatch.setenv("KEEPMIX_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "runs"
    args = ["train", "cifar10-small-none-quick", "--dataset", str(tiny_folder), "--out-dir", str(out), "--epochs", "1"]
    args += ["--batch-size", "8", "--train-subset", "0", "--test-subset", "0", "--no-progress", "--threads", "1"]
    assert main([*args, "--no-pictures", "--log", "tensorboard"]) == 0, capsys.readouterr().err
    (run,) = out.iterdir()
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0, capsys.readouterr().err
    assert "tensorboard --logdir" in capsys.readouterr().out
    files = RunDir(run)
    records = files.read_metrics()
    assert [r["epoch"] for r in records] == [1, 2]
    acc = EventAccumulator(str(files.tensorboard), size_guidance={"scalars": 0})
    acc.Reload()
    events = acc.Scalars("train/loss")
    assert [e.step for e in events] == [r["step"] for r in records]
    assert [e.value for e in events] == pytest.approx([r["train_loss"] for r in records], rel=1e-6)
