"""`keepmix train | show | plot`: help texts, errors with non-zero exits, a real run, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from keepmix.cli import build_parser, main
from keepmix.train.config import field_types


@pytest.fixture(scope="module")
def folder(tmp_path_factory, cifar_uint8, cifar_labels):
    """A tiny ImageFolder tree (train/ 48 images, test/ 16 images) of real CIFAR-10 images."""
    root = tmp_path_factory.mktemp("folder")
    for i, (img, lab) in enumerate(zip(cifar_uint8, cifar_labels, strict=True)):
        split = "train" if i < 48 else "test"
        d = root / split / f"c{int(lab)}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(d / f"{i:03d}.png")
    return root


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KEEPMIX_CACHE_DIR", str(tmp_path / "cache"))


def _train_args(folder, out, *extra):
    return [
        "train",
        "cifar10-small-cutout-quick",
        "--dataset",
        str(folder),
        "--out-dir",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--train-subset",
        "0",
        "--test-subset",
        "0",
        "--no-progress",
        "--threads",
        "1",
        *extra,
    ]


def test_help_texts_describe_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    top = capsys.readouterr().out
    for cmd in ("train", "show", "plot"):
        assert cmd in top
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for name in field_types():
        flag = "--" + name.replace("_", "-")
        assert flag in text, flag
    assert "--resume" in text and "--list-presets" in text and "--config" in text
    # Every option has a help text (argparse prints it next to the flag).
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        for action in p._actions:
            assert action.help, (name, action.dest)


def test_list_presets(capsys):
    assert main(["train", "--list-presets"]) == 0
    out = capsys.readouterr().out
    assert "cifar10-resnet18-keepcutout" in out and "cifar10-small-keepcutout-quick" in out


@pytest.mark.parametrize(
    "args, message, code",
    [
        (["train", "cifar10-resnet18-keepcutot"], "unknown preset", 2),
        (["train", "cifar10-resnet18-keepcutout", "--epochz", "3"], "unrecognized arguments: --epochz", 2),
        (["train", "cifar10-resnet18-keepcutout", "--epochs", "three"], "invalid int value", 2),
        (["train", "cifar10-resnet18-keepcutout", "--method", "nope"], "invalid choice", 2),
        (["train", "cifar10-resnet18-keepcutout", "--lr", "-1"], "lr must be >= 0", 2),
        (["train"], "give a preset", 2),
        (["train", "cifar10-small-none-quick", "--dataset", "/no/such/dir"], "no such path", 2),
    ],
)
def test_bad_input_exits_non_zero_and_writes_nothing(tmp_path, capsys, args, message, code):
    out = tmp_path / "runs"
    try:
        rc = main(args + ["--out-dir", str(out)])
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    assert rc == code
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_wrong_image_size_and_empty_folder(tmp_path, folder, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    Image.new("RGB", (16, 16)).save(bad / "train" / "c0" / "odd.png")
    assert main(_train_args(bad, tmp_path / "runs")) == 2
    err = capsys.readouterr().err
    assert "odd.png" in err
    (tmp_path / "empty").mkdir()
    assert main(_train_args(tmp_path / "empty", tmp_path / "runs")) == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_train_then_plot_then_resume_errors(tmp_path, folder, capsys):
    out = tmp_path / "runs"
    assert main(_train_args(folder, out, "--pictures")) == 0
    text = capsys.readouterr().out
    (run,) = out.iterdir()
    assert f"run directory: {run}" in text and "final test accuracy" in text
    for name in ("config.yaml", "metrics.jsonl", "final.json", "checkpoint.pt", "accuracy.png", "methods.png"):
        assert (run / name).is_file(), name
        assert name in text or name.endswith(".pt")
    assert main(["plot", str(run), str(run), "--labels", "a", "b", "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").stat().st_size > 0
    assert main(["train", "--resume", str(run)]) == 2
    assert "already finished" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "do not give" in err and "--lr" in err
    assert main(["plot", str(tmp_path / "nothing"), "--out", str(tmp_path / "q.png")]) == 2
    assert not (tmp_path / "q.png").exists()


def test_checkpoint_of_another_model_is_refused(tmp_path, folder, capsys):
    out = tmp_path / "runs"
    assert main(_train_args(folder, out, "--epochs", "1", "--no-pictures")) == 0
    (run,) = out.iterdir()
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    ck["finished"] = False
    ck["config"]["model"] = "resnet20"
    torch.save(ck, run / "checkpoint.pt")
    from keepmix.train.config import config_from_dict, save_config

    save_config(config_from_dict(ck["config"]), run / "config.yaml")  # the run's record agrees with its checkpoint
    assert main(["train", "--resume", str(run)]) == 2
    assert "another model" in capsys.readouterr().err


def test_config_file_and_flags_layer_over_the_preset(tmp_path, folder):
    from keepmix.cli import _config_from_args

    (tmp_path / "c.yaml").write_text("epochs: 7\nlr: 0.3\n")
    args = build_parser().parse_args(["train", "cifar10-resnet18-keepcutout", "--config", str(tmp_path / "c.yaml"), "--lr", "0.2"])
    cfg = _config_from_args(args)
    assert (cfg.method, cfg.epochs, cfg.lr, cfg.batch_size, cfg.name) == ("keepcutout", 7, 0.2, 128, "cifar10-resnet18-keepcutout")


def test_sigterm_writes_a_checkpoint_and_resume_finishes(tmp_path, folder):
    out = tmp_path / "runs"
    env = dict(os.environ, KEEPMIX_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "keepmix",
        *_train_args(folder, out, "--epochs", "12", "--batch-size", "8", "--no-pictures", "--log-every", "1"),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            runs = list(out.glob("*/metrics.jsonl")) if out.exists() else []
            if runs and runs[0].read_text().count("\n") >= 1:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the run never finished an epoch")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM" in err and "--resume" in err
    (run,) = out.iterdir()
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    assert not ck["finished"] and 1 <= ck["global_step"] < 12 * 6
    assert not list(run.glob("*.tmp")) and not (run / "final.json").exists()
    # Resume to the end: every epoch recorded once, every step taken once.
    res = subprocess.run(
        [sys.executable, "-m", "keepmix", "train", "--resume", str(run)], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr
    final = json.loads((run / "final.json").read_text())
    assert final["steps"] == 12 * 6
    epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 13))


def _captured_grids(monkeypatch) -> list:
    import keepmix.viz

    grids = []
    real = keepmix.viz.save_method_grid

    def capture(*args, **kwargs):
        grids.append(real(*args, **kwargs))
        return grids[-1]

    monkeypatch.setattr(keepmix.viz, "save_method_grid", capture)
    return grids


def _same_draw_outside_the_kept_box(grid, plain: str, keep: str) -> None:
    from keepmix.functional.boxes import box_masks

    a, k = grid.outputs[plain], grid.outputs[keep]
    assert a.boxes is None and k.region == "kept"
    inside = box_masks(k.boxes, *k.images.shape[-2:])[:, None]
    assert a.images.dtype == k.images.dtype == torch.uint8  # both on the uint8 batch, as in training
    assert torch.equal(torch.where(inside, 0, a.images), torch.where(inside, 0, k.images))
    assert not torch.equal(a.images, k.images)  # the kept box differs somewhere


def test_show_draws_autoaugment_and_keepautoaugment_alike(tmp_path, folder, monkeypatch, capsys):
    """`keepmix show`: the AutoAugment column is the same policy draw as the KeepAutoAugment
    column, so the two differ only inside the kept box."""
    grids = _captured_grids(monkeypatch)
    out = tmp_path / "show.png"
    assert (
        main(
            [
                "show",
                "--dataset",
                str(folder),
                "--methods",
                "autoaugment",
                "keepautoaugment",
                "cutmix",
                "--num-images",
                "6",
                "--seed",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert out.is_file() and f"wrote {out}" in capsys.readouterr().out
    (grid,) = grids
    assert grid.columns[2:] == ["autoaugment", "keepautoaugment", "cutmix"]
    _same_draw_outside_the_kept_box(grid, "autoaugment", "keepautoaugment")
    assert grid.outputs["cutmix"].region == "pasted"


def test_show_unknown_method_is_bad_input(tmp_path, folder, capsys):
    assert main(["show", "--dataset", str(folder), "--methods", "nope", "--out", str(tmp_path / "x.png")]) == 2
    assert "unknown method" in capsys.readouterr().err
