"""The training loop on tiny data: metrics, final record, exact resume, NaN stop, methods."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from keepmix.data.split import Split
from keepmix.train.checkpoint import load_checkpoint
from keepmix.train.config import TrainConfig
from keepmix.train.data import prepare_data
from keepmix.train.loop import FinishedRunError, NonFiniteLossError, RunInterrupted, Trainer, TrainForward, train
from keepmix.train.methods import build_method


@pytest.fixture(scope="module")
def tiny_data(cifar_uint8, cifar_labels):
    """48 real CIFAR-10 images to train on, 16 to test on."""
    classes = [str(i) for i in range(10)]
    train_split = Split(cifar_uint8[:48].clone(), cifar_labels[:48].clone(), classes)
    test_split = Split(cifar_uint8[48:].clone(), cifar_labels[48:].clone(), classes)
    return train_split, test_split


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(
        name="t",
        model="small",
        epochs=2,
        batch_size=16,
        lr=0.05,
        out_dir=str(tmp_path),
        dataset="cifar10",
        progress=False,
        pictures=False,
        log_every=1,
        threads=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def _run(cfg, tiny_data, **kw):
    train_split, test_split = tiny_data
    return train(cfg, data=prepare_data(train_split, test_split, cfg), log=lambda m: None, **kw)


def test_run_writes_metrics_config_final_and_checkpoint(tmp_path, tiny_data):
    cfg = _cfg(tmp_path, method="keepcutout", saliency="lowres")
    final = _run(cfg, tiny_data)
    run = Path(final["run_dir"])
    assert run.parent == tmp_path
    assert run.name.startswith("t-")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert {"train_loss", "train_acc", "test_acc", "test_loss", "lr", "images_per_s", "step"} <= set(r)
        assert 0.0 <= r["test_acc"] <= 100.0 and r["images_per_s"] > 0
    assert records[-1]["step"] == 2 * 3  # 48 images, batch 16
    assert yaml.safe_load((run / "config.yaml").read_text()) == cfg.to_dict()
    on_disk = json.loads((run / "final.json").read_text())
    assert on_disk["test_acc"] == records[-1]["test_acc"] == final["test_acc"]
    assert on_disk["seed"] == 0 and on_disk["config"]["method"] == "keepcutout"
    ck = load_checkpoint(run)
    assert ck["finished"] and ck["epoch"] == 2 and ck["global_step"] == 6
    # Resuming a finished run is an error, and writes nothing.
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(FinishedRunError, match="already finished"):
        Trainer(cfg, resume=run)
    assert sorted(p.name for p in run.iterdir()) == before


def test_test_accuracy_matches_a_direct_evaluation(tmp_path, tiny_data):
    cfg = _cfg(tmp_path, epochs=1)
    final = _run(cfg, tiny_data)
    from keepmix.models import build_model

    model = build_model("small", num_classes=10)
    model.load_state_dict(load_checkpoint(final["run_dir"])["model"])
    model.eval()
    x = tiny_data[1].images.float() / 255
    mean = torch.tensor((0.4914, 0.4822, 0.4465)).view(1, 3, 1, 1)
    std = torch.tensor((0.2470, 0.2435, 0.2616)).view(1, 3, 1, 1)
    with torch.no_grad():
        pred = model((x - mean) / std).argmax(1)
    assert final["test_acc"] == pytest.approx(100.0 * (pred == tiny_data[1].labels).float().mean().item())


@pytest.mark.parametrize("method, stop_at", [("recursivemix", 4), ("keepcutmix", 3)])
def test_interrupted_and_resumed_run_ends_bitwise_equal(tmp_path, tiny_data, method, stop_at):
    """Stop after `stop_at` steps (mid-epoch for 4, at the epoch boundary for 3), resume, and
    compare with an uninterrupted run: identical weights, optimiser state and metrics."""
    kw = dict(method=method, epochs=2, saliency="lowres", recursivemix_omega=0.5, warmup_epochs=0.5)
    full = _run(_cfg(tmp_path / "a", **kw), tiny_data)

    def stop(trainer, step):
        if step == stop_at:
            trainer.request_stop()

    with pytest.raises(RunInterrupted) as e:
        _run(_cfg(tmp_path / "b", **kw), tiny_data, on_step=stop)
    run_b = e.value.checkpoint.parent
    ck = load_checkpoint(run_b)
    assert not ck["finished"] and ck["global_step"] == stop_at
    if method == "recursivemix":  # the history travels in the checkpoint
        assert ck["ranks"][0]["method"]["_extra_state"]["images"].shape == (16, 3, 32, 32)
    resumed = train(None, resume=run_b, data=prepare_data(*tiny_data, _cfg(tmp_path / "b", **kw)), log=lambda m: None)
    a, b = load_checkpoint(full["run_dir"]), load_checkpoint(run_b)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(pa["momentum_buffer"], pb["momentum_buffer"])
    assert torch.equal(a["ranks"][0]["aug_rng"], b["ranks"][0]["aug_rng"])
    drop = ("images_per_s", "epoch_time_s", "eval_time_s", "elapsed_s")
    ma = [{k: v for k, v in json.loads(x).items() if k not in drop} for x in open(Path(full["run_dir"]) / "metrics.jsonl")]
    mb = [{k: v for k, v in json.loads(x).items() if k not in drop} for x in open(run_b / "metrics.jsonl")]
    assert ma == mb and len(mb) == 2
    assert resumed["test_acc"] == full["test_acc"]


def test_nan_loss_stops_with_a_clear_error_and_no_checkpoint(tmp_path, tiny_data):
    def poison(trainer, step):
        with torch.no_grad():
            trainer.model.fc.weight.fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match="loss became nan in epoch 1"):
        _run(_cfg(tmp_path), tiny_data, on_step=poison)
    (run,) = tmp_path.iterdir()
    assert not (run / "checkpoint.pt").exists() and not (run / "final.json").exists()


def test_too_few_images_for_a_batch(tmp_path, tiny_data):
    from keepmix.train.config import ConfigError

    with pytest.raises(ConfigError, match="too few for batch_size=64"):
        _run(_cfg(tmp_path, batch_size=64), tiny_data)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "method",
    [
        "none",
        "cutout",
        "keepcutout",
        "random_erasing",
        "keeprandomerasing",
        "mixup",
        "cutmix",
        "keepcutmix",
        "recursivemix",
        "keeprecursivemix",
        "autoaugment",
        "keepautoaugment",
        "randaugment",
        "keeprandaugment",
        "trivialaugment",
    ],
)
def test_every_method_prepares_a_normalised_batch(method, cifar_uint8, cifar_labels):
    from keepmix.models import build_model

    cfg = TrainConfig(method=method, model="small", saliency="lowres")
    model = build_model("small", num_classes=10)
    m = build_method(cfg, model, 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x, y = cifar_uint8[:8], cifar_labels[:8]
    x_before = x.clone()
    params_before = [p.clone() for p in model.parameters()]
    out = m.prepare(x, y, torch.Generator().manual_seed(0))
    again = m.prepare(x, y, torch.Generator().manual_seed(0)) if "recursive" not in method else out
    assert torch.equal(x, x_before)  # the caller's batch is never modified
    assert out.inputs.dtype == torch.float32 and out.inputs.shape == (8, 3, 32, 32)
    assert torch.equal(out.inputs, again.inputs) and torch.equal(out.targets, again.targets)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params_before, strict=True))
    if method in ("none", "mixup", "cutmix", "keepcutmix", "recursivemix", "keeprecursivemix") and out.targets.ndim == 1:
        assert torch.equal(out.targets, y)
    if method == "none":
        assert torch.allclose(out.inputs, (x.float() / 255 - 0.5) / 0.25)
    if out.targets.ndim == 2:
        assert torch.allclose(out.targets.sum(1), torch.ones(8))


def test_train_forward_returns_early_logits_and_feature_loss():
    from keepmix.models import build_model

    model = build_model("small", num_classes=10, early_head=True)
    fwd = TrainForward(model, early=True)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    logits, early, extra = fwd(x, lambda f: f.mean())
    assert torch.allclose(logits, model(x), atol=1e-6)
    assert torch.allclose(early, model.early_logits(x), atol=1e-6)
    assert torch.allclose(extra, model.forward_features(x).mean(), atol=1e-6)
    logits2, early2, none = fwd(x)
    assert none is None and torch.allclose(early2, early, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_with_amp_and_channels_last(tmp_path, tiny_data):
    cfg = _cfg(tmp_path, device="cuda", amp="on", channels_last="on", method="keepcutout", saliency="lowres")
    final = _run(cfg, tiny_data)
    assert final["amp"] and final["device"].startswith("cuda")
    assert 0 <= final["test_acc"] <= 100


def test_uniform_saliency_control_runs_no_saliency_pass(cifar_uint8, cifar_labels):
    """saliency=uniform: KeepCutout steered by a constant map; the model is never called."""
    from keepmix.models import build_model

    model = build_model("small", num_classes=10)
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    m = build_method(TrainConfig(method="keepcutout", model="small", saliency="uniform"), model, 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    out = m.prepare(cifar_uint8[:8], cifar_labels[:8], torch.Generator().manual_seed(0))
    assert not calls and out.inputs.shape == (8, 3, 32, 32)
    cut = (out.inputs == 0).all(dim=1)  # Cutout fills with 0 after normalisation
    assert cut.flatten(1).any(1).all()  # every image had a box cut
    for i in range(8):
        rows, cols = cut[i].nonzero(as_tuple=True)
        if len(rows):  # the cut box is clipped by the border: under 16 x 16 pixels
            assert (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) < 256


_METHODS = [
    "none",
    "cutout",
    "keepcutout",
    "random_erasing",
    "keeprandomerasing",
    "mixup",
    "cutmix",
    "keepcutmix",
    "recursivemix",
    "keeprecursivemix",
    "autoaugment",
    "keepautoaugment",
    "randaugment",
    "keeprandaugment",
    "trivialaugment",
]


@pytest.mark.parametrize("method", _METHODS)
def test_every_method_runs_its_op_through_the_protocol(method, cifar_uint8, cifar_labels):
    """prepare() is the op's call: on uint8 before normalisation when op.raw_pixels, with the
    saliency of the normalised clean batch for the Keep variants, labels for mixing ops."""
    from keepmix.base import Op
    from keepmix.models import build_model

    cfg = TrainConfig(method=method, model="small", saliency="lowres")
    model = build_model("small", num_classes=10)
    m = build_method(cfg, model, 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    if method == "none":
        assert m.op is None
        return
    op = m.op
    assert isinstance(op, Op)
    assert op.raw_pixels == ("augment" in method)
    x, y = cifar_uint8[:8], cifar_labels[:8]
    out = m.prepare(x, y, torch.Generator().manual_seed(1))
    if "recursive" in method:
        op.reset()
    g = torch.Generator().manual_seed(1)
    clean = m.normalize(x)
    inp = x if op.raw_pixels else clean
    if method.startswith("keep"):
        got, t = op(inp, y, saliency=m.saliency(clean, y), generator=g)
    elif op.mixes_labels:
        got, t = op(inp, y, generator=g)
    else:
        got, t = op(inp, generator=g), y
    want = m.normalize(got) if op.raw_pixels else got
    assert torch.equal(out.inputs, want) and torch.equal(out.targets, t)


def test_keepcutmix_and_keeprecursivemix_get_the_config(cifar_uint8):
    from keepmix.keep import KeepCutMix
    from keepmix.models import build_model
    from keepmix.placers import KeepPlacer
    from keepmix.recursive import KeepRecursiveMix

    model = build_model("small", num_classes=10)
    cfg = TrainConfig(method="keepcutmix", model="small", cutmix_alpha=0.7, cutmix_p=0.3, keep_quantile=0.4, cutmix_label_weight="saliency")
    op = build_method(cfg, model, 10, (0.5,) * 3, (0.25,) * 3).op
    assert isinstance(op, KeepCutMix) and isinstance(op.placer, KeepPlacer)
    assert (op.alpha, op.p, op.num_classes, op.label_weight, op.placer.q) == (0.7, 0.3, 10, "saliency", 0.4)
    rm = build_method(cfg.replace(method="keeprecursivemix"), model, 10, (0.5,) * 3, (0.25,) * 3).op
    assert isinstance(rm, KeepRecursiveMix) and rm.placer.q == 0.4 and rm.num_classes == 10


def test_recursivemix_feature_loss_uses_the_params_of_its_own_step(cifar_uint8, cifar_labels):
    from keepmix.models import build_model

    model = build_model("small", num_classes=10)
    m = build_method(TrainConfig(method="recursivemix", model="small", recursivemix_omega=0.5), model, 10, (0.5,) * 3, (0.25,) * 3)
    x, y = cifar_uint8[:8], cifar_labels[:8]
    first = m.prepare(x, y, torch.Generator().manual_seed(0))
    m.after_step(first, torch.randn(8, 10))
    second = m.prepare(x.flip(0), y.flip(0), torch.Generator().manual_seed(1))
    m.after_step(second, torch.randn(8, 10))
    m.prepare(x, y, torch.Generator().manual_seed(2))  # a later call: last_params moves on
    feats = model.forward_features(second.inputs)
    assert second.info is not m.rm.last_params
    want = m.rm.consistency_loss(feats, head=model.fc, params=second.info)
    assert torch.equal(second.feature_loss(feats), want) and float(want.detach()) > 0
    assert float(first.feature_loss(model.forward_features(first.inputs)).detach()) == 0.0  # no history at step 1


def test_method_ops_mix_every_image_and_skip_none():
    from keepmix.models import build_model
    from keepmix.train.show import method_ops

    model = build_model("small", num_classes=10)
    cfg = TrainConfig(model="small", cutmix_p=0.5)
    ops = method_ops(cfg, ["none", "cutmix", "keepcutmix", "cutout"], model, 10, (0.5,) * 3, (0.25,) * 3)
    assert list(ops) == ["cutmix", "keepcutmix", "cutout"]
    assert ops["cutmix"].p == 1.0 and ops["keepcutmix"].p == 1.0 and ops["cutout"].p == 1.0


def test_end_of_run_grid_draws_the_policy_and_its_keep_version_alike(tmp_path, tiny_data, monkeypatch):
    """save_run_grid of a keepautoaugment run: the AutoAugment column is the same draw as the
    KeepAutoAugment column outside the kept box."""
    from types import SimpleNamespace

    import keepmix.viz
    from keepmix.functional.boxes import box_masks
    from keepmix.models import build_model
    from keepmix.train.show import save_run_grid

    cfg = _cfg(tmp_path, method="keepautoaugment", saliency="full")
    trainer = SimpleNamespace(
        config=cfg,
        model=build_model("small", num_classes=10),
        data=prepare_data(*tiny_data, cfg),
        device=torch.device("cpu"),
        num_classes=10,
    )
    grids = []
    real = keepmix.viz.save_method_grid
    monkeypatch.setattr(keepmix.viz, "save_method_grid", lambda *a, **k: grids.append(real(*a, **k)) or grids[-1])
    assert save_run_grid(trainer, tmp_path / "methods.png", num_images=6).is_file()
    (grid,) = grids
    assert grid.columns[2:] == ["autoaugment", "keepautoaugment"]
    a, k = grid.outputs["autoaugment"], grid.outputs["keepautoaugment"]
    inside = box_masks(k.boxes, 32, 32)[:, None]
    assert torch.equal(torch.where(inside, 0, a.images), torch.where(inside, 0, k.images))
    assert not torch.equal(a.images, k.images)


def test_grid_ops_pairs_a_policy_with_its_keep_version_only():
    from keepmix.keep import KeepAutoAugment, KeepCutout
    from keepmix.policies import AutoAugment, RandAugment
    from keepmix.regional import Cutout
    from keepmix.train.show import grid_ops
    from keepmix.viz import InnerTransform

    keep = KeepAutoAugment("cifar10", size=8)
    plain, cut, kcut, ra = AutoAugment("cifar10"), Cutout(8), KeepCutout(8), RandAugment()
    ops = grid_ops({"autoaugment": plain, "keepautoaugment": keep, "cutout": cut, "keepcutout": kcut, "randaugment": ra})
    assert isinstance(ops["autoaugment"], InnerTransform) and ops["autoaugment"].paste is keep
    assert ops["keepautoaugment"] is keep and ops["cutout"] is cut and ops["keepcutout"] is kcut and ops["randaugment"] is ra
    assert grid_ops({"autoaugment": plain})["autoaugment"] is plain
