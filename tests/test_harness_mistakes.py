"""The mistakes a new user makes with the harness, by kind: each is one line on stderr, exit 2,
no traceback, the argument named, and nothing lost (the data and the previous checkpoint stay).
Also: resume identity (run ids), extending a finished run, silent surprises (AMP on the CPU,
a class missing from train, soft labels), and the small things of issue 11."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from PIL import Image

from keepmix.cli import build_parser, main
from keepmix.data.split import Split
from keepmix.train.checkpoint import load_checkpoint
from keepmix.train.config import ConfigError, TrainConfig
from keepmix.train.data import prepare_data
from keepmix.train.loop import RunInterrupted, Trainer, train
from keepmix.train.optim import lr_factor
from keepmix.train.run_dir import RunDir


@pytest.fixture(scope="module")
def folder(tmp_path_factory, cifar_uint8, cifar_labels):
    """train/ 48 images, test/ 16 images of real CIFAR-10, classes c0..c9."""
    root = tmp_path_factory.mktemp("folder")
    for i, (img, lab) in enumerate(zip(cifar_uint8, cifar_labels, strict=True)):
        d = root / ("train" if i < 48 else "test") / f"c{int(lab)}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(d / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def tiny_data(cifar_uint8, cifar_labels):
    classes = [str(i) for i in range(10)]
    return Split(cifar_uint8[:48].clone(), cifar_labels[:48].clone(), classes), Split(
        cifar_uint8[48:].clone(), cifar_labels[48:].clone(), classes
    )


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KEEPMIX_CACHE_DIR", str(tmp_path / "cache"))


def _args(folder, out, *extra):
    return [
        "train",
        "cifar10-small-none-quick",
        "--dataset",
        str(folder),
        "--out-dir",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--train-subset",
        "0",
        "--test-subset",
        "0",
        "--no-progress",
        "--threads",
        "1",
        "--no-pictures",
        *extra,
    ]


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(
        name="t",
        model="small",
        epochs=2,
        batch_size=16,
        lr=0.05,
        out_dir=str(tmp_path),
        progress=False,
        pictures=False,
        log_every=1,
        threads=1,
    )
    return TrainConfig(**{**base, **kw})


def _one_line_error(capsys, rc, *needles):
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    # One error line, the last thing printed (a run that got going has logged its epochs before).
    assert [ln for ln in lines if ln.startswith("keepmix train:")] == lines[-1:], err
    assert lines[-1].startswith("keepmix train: error: "), err
    for n in needles:
        assert n in lines[-1], (n, lines[-1])
    return lines[-1]


# ---------------------------------------------------------------------------- CLI mistakes


def _bad_yaml(tmp):
    (tmp / "bad.yaml").write_text("epochs: [1, 2\n")
    return ["--config", str(tmp / "bad.yaml")], ["cannot parse config file", "bad.yaml"]


def _list_yaml(tmp):
    (tmp / "list.yaml").write_text("- 1\n- 2\n")
    return ["--config", str(tmp / "list.yaml")], ["must hold a mapping"]


def _typo_yaml(tmp):
    (tmp / "typo.yaml").write_text("learning_rate: 0.1\n")
    return ["--config", str(tmp / "typo.yaml")], ["'learning_rate' (did you mean 'lr'?)"]


def _latin1_yaml(tmp):
    (tmp / "latin.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    return ["--config", str(tmp / "latin.yaml")], ["not UTF-8 text"]


MISTAKES = {
    "model": lambda tmp: (["--model", "bogus"], ["model='bogus'", "unknown model name"]),
    "device-tpu": lambda tmp: (["--device", "tpu"], ["device='tpu'"]),
    "device-garbage": lambda tmp: (["--device", "gpu0"], ["device='gpu0' is not a device"]),
    "early-block": lambda tmp: (["--model", "resnet20", "--early-head", "--early-block", "99"], ["early_block"]),
    "early-block-without-head": lambda tmp: (["--early-block", "99"], ["early_block=99", "early_head is off"]),
    "missing-config": lambda tmp: (["--config", str(tmp / "nope.yaml")], ["config file", "nope.yaml", "does not exist"]),
    "bad-yaml": _bad_yaml,
    "list-yaml": _list_yaml,
    "typo-yaml": _typo_yaml,
    "latin1-yaml": _latin1_yaml,
}


@pytest.mark.parametrize("kind", sorted(MISTAKES))
def test_cli_mistakes_are_one_line_exit_2_and_write_nothing(kind, tmp_path, folder, capsys):
    extra, needles = MISTAKES[kind](tmp_path)
    rc = main(_args(folder, tmp_path / "runs", *extra))
    _one_line_error(capsys, rc, *needles)
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu(tmp_path, folder, capsys):
    rc = main(_args(folder, tmp_path / "runs", "--device", "cuda"))
    _one_line_error(capsys, rc, "device='cuda'", "no GPU", "--device cpu")


def test_resume_of_something_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    _one_line_error(capsys, main(["train", "--resume", str(tmp_path / "plain")]), "not a keepmix run directory")
    _one_line_error(capsys, main(["train", "--resume", str(tmp_path / "absent")]), "no checkpoint at")
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"")
    _one_line_error(capsys, main(["train", "--resume", str(run)]), "empty (0 bytes)")
    (run / "checkpoint.pt").write_bytes(b"\x00garbage" * 50)
    _one_line_error(capsys, main(["train", "--resume", str(run)]), "cannot read checkpoint", "not a complete file")
    torch.save({"format_version": 1, "config": {}, "model": {}}, run / "checkpoint.pt")
    _one_line_error(capsys, main(["train", "--resume", str(run)]), "not a complete keepmix checkpoint", "optimizer")


def test_out_dir_that_is_a_file(tmp_path, folder, capsys):
    (tmp_path / "afile").write_text("x")
    line = _one_line_error(capsys, main(_args(folder, tmp_path / "afile")), "afile")
    assert "Not a directory" in line or "File exists" in line


def test_full_disk_during_the_checkpoint_write_keeps_the_last_one(tmp_path, folder, capsys, monkeypatch):
    import keepmix.train.checkpoint as ck

    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 2:  # epoch 1's checkpoint is written; the next write finds the disk full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(ck.os, "fsync", fsync)
    rc = main(_args(folder, tmp_path / "runs", "--epochs", "2"))
    _one_line_error(capsys, rc, "cannot write checkpoint", "No space left on device", "previous checkpoint is unchanged")
    monkeypatch.undo()
    (run,) = (tmp_path / "runs").iterdir()
    state = load_checkpoint(run)
    assert state["epoch"] == 1 and not state["finished"]
    assert not list(run.glob("*.tmp"))
    # The run resumes from the kept checkpoint and finishes.
    assert main(["train", "--resume", str(run)]) == 0
    assert RunDir(run).read_final()["steps"] == 2 * 3


def test_a_second_interrupt_during_the_write_waits_for_it(tmp_path, tiny_data, monkeypatch):
    """The first signal asks for a checkpoint; a second one arriving while it is written does
    not tear it: the write finishes, the run stops, the checkpoint resumes."""
    import keepmix.train.checkpoint as ck

    cfg = _cfg(tmp_path, epochs=3)
    holder = {}

    def first_signal(trainer, step):
        holder["t"] = trainer
        if step == 2:
            trainer._on_signal(signal.SIGINT, None)

    real_fsync = os.fsync

    def fsync(fd):
        holder["t"]._on_signal(signal.SIGINT, None)  # the second Ctrl-C, mid-write
        return real_fsync(fd)

    monkeypatch.setattr(ck.os, "fsync", fsync)
    with pytest.raises(RunInterrupted) as e:
        train(cfg, data=prepare_data(*tiny_data, cfg), on_step=first_signal, log=lambda m: None)
    monkeypatch.undo()
    assert e.value.signum == signal.SIGINT
    state = load_checkpoint(e.value.checkpoint)
    assert state["global_step"] == 2 and not state["finished"]
    assert not list(e.value.checkpoint.parent.glob("*.tmp"))


def test_a_second_interrupt_outside_a_write_is_one_line_exit_130(tmp_path, folder, capsys, monkeypatch):
    import keepmix.train.loop as loop

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train", interrupted)
    rc = main(_args(folder, tmp_path / "runs"))
    err = capsys.readouterr().err
    assert rc == 130 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "second interrupt" in err and "intact" in err


# ---------------------------------------------------------------------------- resume


def test_a_checkpoint_copied_from_another_run_is_refused(tmp_path, folder, capsys):
    assert main(_args(folder, tmp_path / "a")) == 0
    assert main(_args(folder, tmp_path / "b")) == 0
    capsys.readouterr()
    (run_a,), (run_b,) = (tmp_path / "a").iterdir(), (tmp_path / "b").iterdir()
    id_a, id_b = RunDir(run_a).read_run_id(), RunDir(run_b).read_run_id()
    assert id_a and id_b and id_a != id_b
    assert load_checkpoint(run_a)["run_id"] == id_a and RunDir(run_a).read_final()["run_id"] == id_a
    before = {p.name: p.read_bytes() for p in run_b.iterdir() if p.is_file() and p.name != "checkpoint.pt"}
    shutil.copy(run_a / "checkpoint.pt", run_b / "checkpoint.pt")
    _one_line_error(
        capsys, main(["train", "--resume", str(run_b), "--epochs", "3"]), f"belongs to run {id_a}", f"this folder is run {id_b}", "copied"
    )
    assert {p.name: p.read_bytes() for p in run_b.iterdir() if p.is_file() and p.name != "checkpoint.pt"} == before
    # A folder with another run's records but no run id (an older keepmix) is refused too.
    (run_b / "run_id").unlink()
    _one_line_error(capsys, main(["train", "--resume", str(run_b), "--epochs", "3"]), "splice")


def test_a_finished_run_is_extended_with_a_replanned_schedule(tmp_path, tiny_data):
    cfg = _cfg(tmp_path, epochs=2, warmup_epochs=0.5, min_lr=0.005)
    first = train(cfg, data=prepare_data(*tiny_data, cfg), log=lambda m: None)
    run = Path(first["run_dir"])
    with pytest.raises(ConfigError, match="epochs=1: .* already trained 2 epochs"):
        Trainer(None, resume=run, epochs=1)
    final = train(None, resume=run, epochs=4, data=prepare_data(*tiny_data, cfg), log=lambda m: None)
    assert final["epochs"] == 4 and final["steps"] == 4 * 3 and final["run_id"] == first["run_id"]
    assert final["schedule_changes"] == [{"at_step": 6, "at_epoch": 2, "epochs_before": 2, "epochs_after": 4}]
    assert "re-planned" in final["lr_schedule"]
    records = RunDir(run).read_metrics()
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert [r["planned_epochs"] for r in records] == [2, 2, 4, 4]
    # Old plan: cosine over 6 steps, ending at min_lr; new plan: cosine over 12 from step 6.
    warm, ratio = round(0.5 * 3), 0.005 / 0.05
    assert records[1]["lr"] == pytest.approx(0.05 * lr_factor(6, 6, warm, ratio)) == pytest.approx(0.005)
    for r in records[2:]:
        assert r["lr"] == pytest.approx(0.05 * lr_factor(r["step"], 12, warm, ratio))
    assert load_checkpoint(run)["config"]["epochs"] == 4
    assert RunDir(run).read_final()["epochs"] == 4


# ---------------------------------------------------------------------------- silent surprises


def test_amp_on_the_cpu_runs_in_bfloat16(tmp_path, tiny_data):
    cfg = _cfg(tmp_path, epochs=1, amp="on", device="cpu")
    msgs = []
    final = train(cfg, data=prepare_data(*tiny_data, cfg), log=msgs.append)
    assert final["amp"] and final["amp_dtype"] == "bfloat16"
    assert any("bfloat16" in m for m in msgs)
    assert not load_checkpoint(final["run_dir"])["scaler"]  # no loss scaling (GradScaler disabled)


def test_a_test_class_missing_from_train_is_an_error_naming_it(tmp_path, folder, capsys, cifar_uint8):
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    (bad / "test" / "zebra").mkdir()
    Image.fromarray(cifar_uint8[0].permute(1, 2, 0).numpy()).save(bad / "test" / "zebra" / "z.png")
    rc = main(_args(bad, tmp_path / "runs"))
    _one_line_error(capsys, rc, "class 'zebra' has test images but no training images")
    assert not (tmp_path / "runs").exists()


def test_soft_labels_whose_rows_do_not_sum_to_1_are_refused(cifar_uint8):
    from keepmix.regional import Cutout
    from keepmix.viz import save_method_grid

    x = cifar_uint8[:4]
    ok = torch.full((4, 10), 0.1)
    with pytest.raises(ValueError, match="row 1 sums to 2"):
        save_method_grid(x, torch.cat([ok[:1], ok[1:2] * 20, ok[2:]]), {"cutout": Cutout(8)}, "/nonexistent/x.png")
    with pytest.raises(TypeError, match="soft targets and must be floating point"):
        save_method_grid(x, torch.ones(4, 10, dtype=torch.long), {"cutout": Cutout(8)}, "/nonexistent/x.png")


# ---------------------------------------------------------------------------- small things


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("keepmix ")


def test_negative_boolean_fields_have_a_positive_opposite_not_no_no(capsys):
    p = build_parser()
    assert p.parse_args(["train", "x", "--no-bn-decay"]).no_bn_decay is True
    assert p.parse_args(["train", "x", "--bn-decay"]).no_bn_decay is False
    assert not hasattr(p.parse_args(["train", "x"]), "no_bn_decay")  # the preset decides
    with pytest.raises(SystemExit):
        p.parse_args(["train", "x", "--no-no-bn-decay"])
    assert "--no-no-bn-decay" not in p._subparsers._group_actions[0].choices["train"].format_help()


def test_typo_suggestions_by_alias_initials_and_spelling():
    from keepmix.train.config import config_from_dict

    for typo, meant in {
        "learning_rate": "lr",
        "batchsize": "batch_size",
        "num_epochs": "epochs",
        "momentun": "momentum",
        "weight-decay": "weight_decay",
    }.items():
        with pytest.raises(ConfigError, match=f"did you mean '{meant}'"):
            config_from_dict({typo: 1})
    with pytest.raises(ConfigError) as e:
        config_from_dict({"zzz_qqq": 1})
    assert "did you mean" not in str(e.value)


def test_show_does_not_create_a_data_folder(tmp_path, folder, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["show", "--dataset", str(folder), "--methods", "cutout", "--num-images", "2", "--out", "s.png"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["s.png"]
    assert build_parser().parse_args(["show"]).data_dir == ""


def test_a_failed_download_names_the_local_override(tmp_path):
    from keepmix.data import DataError, load_cifar

    with pytest.raises(DataError, match="KEEPMIX_CIFAR10_JPEG"):
        load_cifar(tmp_path, "cifar10", url=(tmp_path / "absent.tar.gz").as_uri())
    with pytest.raises(DataError, match="KEEPMIX_CIFAR100_JPEG"):
        load_cifar(tmp_path, "cifar100", url=(tmp_path / "absent.tar.gz").as_uri())


def test_the_wrong_size_error_suggests_no_cli_option(tmp_path, folder, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    Image.new("RGB", (16, 16)).save(bad / "train" / "c0" / "odd.png")
    line = _one_line_error(capsys, main(_args(bad, tmp_path / "runs")), "odd.png", "16x16")
    assert "pass size=" not in line and "--size" not in line and "from Python" in line


def test_the_run_prints_absolute_paths(tmp_path, folder, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(_args(folder, "runs")) == 0
    out = capsys.readouterr().out
    (run,) = (tmp_path / "runs").iterdir()
    assert f"run directory: {run.resolve()}" in out
    assert f"summary: {run.resolve() / 'final.json'}" in out
    assert json.loads((run / "final.json").read_text())["test_acc"] is not None
