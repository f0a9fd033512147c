"""The harness as parts (issue 24): the method registry, the step strategies, the audited failures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from keepmix.train.config import METHODS, SALIENCY_METHODS, TrainConfig

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def folder(tmp_path_factory, cifar_uint8, cifar_labels):
    """A tiny ImageFolder tree (train/ 48 images, test/ 16 images) of real 32 px CIFAR-10 images."""
    root = tmp_path_factory.mktemp("folder")
    for i, (img, lab) in enumerate(zip(cifar_uint8, cifar_labels, strict=True)):
        d = root / ("train" if i < 48 else "test") / f"c{int(lab)}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(d / f"{i:03d}.png")
    return root


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KEEPMIX_CACHE_DIR", str(tmp_path / "cache"))


def _args(folder, out, *extra):
    return [
        "train",
        "cifar10-small-cutout-quick",
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
        "--no-pictures",
        "--threads",
        "1",
        *extra,
    ]


def _one_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    return err[0]


# ----------------------------------------------------------------------------- the registry
def test_every_method_is_one_registry_entry_and_builds_its_step():
    from keepmix.models import build_model
    from keepmix.train.registry import METHOD_REGISTRY, build_method

    assert tuple(METHOD_REGISTRY) == METHODS
    assert set(SALIENCY_METHODS) == {n for n, e in METHOD_REGISTRY.items() if e.saliency}
    model = build_model("small", num_classes=10)
    fields = set(TrainConfig().to_dict())
    for name, entry in METHOD_REGISTRY.items():
        assert set(entry.options) <= fields, name
        m = build_method(TrainConfig(method=name, model="small"), model, 10, (0.5,) * 3, (0.25,) * 3, teacher=model)
        assert type(m) is entry.step and (m.op is None) == (entry.build_op is None) and (m.saliency is not None) == entry.saliency
        if entry.counterpart is not None:
            assert METHOD_REGISTRY[entry.counterpart].counterpart == name


def test_no_name_prefix_or_op_type_dispatch_is_left_in_the_harness():
    sources = [*(ROOT / "keepmix" / "train").glob("*.py"), *(ROOT / "keepmix" / "viz").glob("*.py")]
    for path in sources:
        text = path.read_text()
        assert 'startswith("keep")' not in text and 'f"keep{' not in text, path
        if path.name != "methods.py":  # there, each step class checks the type of the op it is given (an argument check)
            assert not re.search(r"isinstance\([^)]*(RecursiveMix|CutMix|SaliencyMix|GridMask|AugMix)", text), path


@pytest.mark.parametrize(
    "extra, field",
    [
        (["--cutout-length", "64"], "method=cutout"),
        (["--method", "keepautoaugment", "--keep-paste-size", "64"], "method=keepautoaugment"),
        (["--method", "keepcutout", "--cutout-length", "40", "--saliency", "full"], "method=keepcutout"),
    ],
)
def test_an_option_the_images_cannot_take_is_refused_before_training(folder, tmp_path, capsys, extra, field):
    from keepmix.cli import main

    rc = main(_args(folder, tmp_path, *extra))
    line = _one_line(capsys)
    assert rc == 2 and line.startswith(f"keepmix train: error: {field} cannot run on this data's 32x32 images (")
    assert "is larger than the 32x32 images" in line
    assert not list(tmp_path.glob("*/checkpoint.pt")) and not list(tmp_path.glob("*/config.yaml"))


def test_a_uda_augmentation_is_checked_on_the_data_as_a_method_is(folder, tmp_path, capsys):
    from keepmix.cli import main

    extra = ("--semi-labels", "20", "--no-semi-balanced", "--semi-mu", "1", "--method", "none")
    rc = main(_args(folder, tmp_path, *extra, "--uda-augment", "keeprandaugment", "--keep-paste-size", "48"))
    line = _one_line(capsys)
    assert rc == 2 and "uda_augment=keeprandaugment cannot run on this data's 32x32 images" in line and "keep_paste_size=48" in line


def test_the_config_is_validated_once_per_cli_run(folder, tmp_path, monkeypatch, capsys):
    from keepmix.cli import main
    from keepmix.train.loop import RunInterrupted, Trainer

    calls = []
    real = TrainConfig.validate

    def counting(self):
        calls.append(1)
        return real(self)

    def stop(self):
        raise RunInterrupted(None, None)

    monkeypatch.setattr(TrainConfig, "validate", counting)
    monkeypatch.setattr(Trainer, "run", stop)
    assert main(_args(folder, tmp_path)) == 130
    assert len(calls) == 1


# ----------------------------------------------------------------------------- the step strategies
def test_the_uda_step_and_the_loop_do_not_import_each_other():
    for name in ("uda", "steps", "setup", "registry", "methods"):
        text = (ROOT / "keepmix" / "train" / f"{name}.py").read_text()
        assert not re.search(r"^\s*(from keepmix\.train\.loop |import keepmix\.train\.loop)", text, re.M), name


# ----------------------------------------------------------------------------- resume: edits, locks
def _interrupted_run(folder, tmp_path):
    from keepmix.train.config import config_from_dict
    from keepmix.train.loop import RunInterrupted, train
    from keepmix.train.presets import PRESETS

    cfg = config_from_dict(
        dict(PRESETS["cifar10-small-none-quick"], dataset=str(folder), out_dir=str(tmp_path), epochs=2, batch_size=16,
             train_subset=0, test_subset=0, progress=False, pictures=False, threads=1, log_every=1)
    )  # fmt: skip
    with pytest.raises(RunInterrupted) as e:
        train(cfg, on_step=lambda t, s: t.request_stop() if s == 4 else None, log=lambda m: None)
    return Path(e.value.checkpoint).parent


def test_an_edited_config_yaml_is_refused_on_resume_naming_what_changed_and_safe_edits_apply(folder, tmp_path, capsys):
    import yaml

    from keepmix.cli import main
    from keepmix.train.loop import Trainer

    run = _interrupted_run(folder, tmp_path)
    original = (run / "config.yaml").read_text()
    values = yaml.safe_load(original)
    (run / "config.yaml").write_text(yaml.safe_dump(dict(values, lr=0.2, batch_size=8), sort_keys=False))
    assert main(["train", "--resume", str(run)]) == 2
    line = _one_line(capsys)
    assert "was edited since the checkpoint was written" in line
    assert "lr: 0.05 in the checkpoint, 0.2 in config.yaml" in line and "batch_size: 16 in the checkpoint, 8 in config.yaml" in line
    (run / "config.yaml").write_text(yaml.safe_dump(dict(values, log_every=7), sort_keys=False))
    trainer = Trainer(None, resume=run, log=lambda m: None)
    assert trainer.config.log_every == 7 and trainer.config.lr == values["lr"]
    trainer._release()


def test_a_second_run_in_the_same_directory_is_refused_and_a_stale_lock_is_taken_over(folder, tmp_path, capsys):
    from keepmix.cli import main
    from keepmix.train.run_dir import RunDir, RunDirBusy, RunLock

    run = _interrupted_run(folder, tmp_path)
    held = RunLock.acquire(RunDir(run))  # a live holder (this process, through another open file)
    try:
        with pytest.raises(RunDirBusy, match=f"process {__import__('os').getpid()} on "):
            RunLock.acquire(RunDir(run))
        assert main(["train", "--resume", str(run)]) == 2
        assert "is in use" in _one_line(capsys)
    finally:
        held.release()
    # A lock file left by a process that died: the flock went with it; the pid names no process.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    (run / "lock").write_text(f"{dead} somehost\n")
    lock = RunLock.acquire(RunDir(run))
    assert lock.stale == dead
    lock.release()
    assert main(["train", "--resume", str(run)]) == 0
    assert [r["epoch"] for r in RunDir(run).read_metrics()] == [1, 2]


# ----------------------------------------------------------------------------- other failures
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_show_on_cuda_without_a_gpu_is_one_line(folder, tmp_path, capsys):
    from keepmix.cli import main

    assert main(["show", "--dataset", str(folder), "--device", "cuda", "--out", str(tmp_path / "x.png")]) == 2
    line = _one_line(capsys)
    assert "--device cuda: no CUDA GPU is available here" in line and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("command, module", [("train", "yaml"), ("train", "tqdm"), ("plot", "matplotlib")])
def test_without_the_train_extra_train_and_plot_say_how_to_install_it(tmp_path, monkeypatch, capsys, command, module):
    from keepmix.cli import main

    monkeypatch.setitem(sys.modules, module, None)  # import and find_spec fail as without the package
    args = ["train", "cifar10-small-none-quick", "--out-dir", str(tmp_path)] if command == "train" else ["plot", str(tmp_path)]
    assert main(args) == 2
    line = _one_line(capsys)
    assert (
        line.startswith(f"keepmix {command}: error: keepmix {command} needs the [train] extra") and 'pip install "keepmix[train]"' in line
    )
    assert list(tmp_path.iterdir()) == []  # no work done, no run folder


def test_the_harness_modules_load_no_tqdm_yaml_or_matplotlib_at_import():
    code = (
        "import sys; import keepmix.train, keepmix.train.registry, keepmix.train.config, keepmix.viz, keepmix.cli; "
        "print(sorted(m for m in ('keepmix.train.loop', 'yaml', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_the_run_grid_draws_the_saliency_at_the_runs_resolution(tmp_path, monkeypatch, cifar_uint8, cifar_labels):
    from types import SimpleNamespace

    import keepmix.viz
    from keepmix.data.split import Split
    from keepmix.models import build_model
    from keepmix.saliency import Saliency
    from keepmix.train.data import prepare_data
    from keepmix.train.methods import build_saliency
    from keepmix.train.show import _one_per_class, save_run_grid

    classes = [str(i) for i in range(10)]
    cfg = TrainConfig(name="t", method="keepcutout", model="small", saliency="lowres", saliency_downscale=2, out_dir=str(tmp_path))
    data = prepare_data(Split(cifar_uint8[:48], cifar_labels[:48], classes), Split(cifar_uint8[48:], cifar_labels[48:], classes), cfg)
    model = build_model("small", num_classes=10).eval()
    trainer = SimpleNamespace(config=cfg, model=model, data=data, device=torch.device("cpu"), num_classes=10)
    seen = []
    real = keepmix.viz.save_method_grid
    monkeypatch.setattr(keepmix.viz, "save_method_grid", lambda *a, **k: seen.append(k) or real(*a, **k))
    save_run_grid(trainer, tmp_path / "methods.png", num_images=4)
    (kw,) = seen
    assert "at 1/2 resolution, upsampled, as this run (lowres) computes it" in kw["saliency_note"]
    grid_sal = kw["saliency"]
    pick = _one_per_class(data.test.labels, 4)  # the grid's images: recompute the map on them
    images, labels = data.test.images[pick], data.test.labels[pick]
    mean, std = torch.tensor(data.mean).view(1, -1, 1, 1), torch.tensor(data.std).view(1, -1, 1, 1)
    x = (images.float() / 255 - mean) / std
    assert torch.allclose(grid_sal, build_saliency(cfg, model)(x, labels))
    assert not torch.allclose(grid_sal, Saliency(model)(x, labels))  # not the full-resolution map


def test_resuming_what_is_not_a_run_leaves_it_untouched(tmp_path, capsys):
    from keepmix.cli import main

    (tmp_path / "plain").mkdir()
    assert main(["train", "--resume", str(tmp_path / "plain")]) == 2
    assert main(["train", "--resume", str(tmp_path / "absent")]) == 2
    assert list((tmp_path / "plain").iterdir()) == [] and not (tmp_path / "absent").exists()
