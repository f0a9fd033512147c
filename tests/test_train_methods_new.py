"""Harness methods for GridMask, AugMix (+ JSD loss), Attentive CutMix, ResizeMix, SaliencyMix and FMix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from keepmix.data.split import Split
from keepmix.models import build_model
from keepmix.train.checkpoint import load_checkpoint
from keepmix.train.config import METHODS, SALIENCY_METHODS, ConfigError, TrainConfig
from keepmix.train.data import prepare_data
from keepmix.train.loop import RunInterrupted, train
from keepmix.train.methods import AugMixJSDMethod, GridMaskMethod, StepBatch, build_method
from keepmix.train.presets import get_preset

NEW = ["gridmask", "augmix", "augmix_jsd", "attentive_cutmix", "resizemix", "keepresizemix", "saliencymix", "saliencymix_gradient", "fmix"]
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture(scope="module")
def tiny_data(cifar_uint8, cifar_labels):
    classes = [str(i) for i in range(10)]
    return (
        Split(cifar_uint8[:48].clone(), cifar_labels[:48].clone(), classes),
        Split(cifar_uint8[48:].clone(), cifar_labels[48:].clone(), classes),
    )


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
    return train(cfg, data=prepare_data(*tiny_data, cfg), log=lambda m: None, **kw)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, tiny_data):
    """A finished 1-epoch plain run: Attentive CutMix's teacher."""
    return _run(_cfg(tmp_path_factory.mktemp("teacher"), epochs=1), tiny_data)["run_dir"]


def _method(name, model=None, **kw):
    model = model or build_model("small", num_classes=10)
    return build_method(
        TrainConfig(method=name, model="small", saliency="lowres", **kw),
        model,
        10,
        MEAN,
        STD,
        teacher=model if name == "attentive_cutmix" else None,
    )


def test_the_new_methods_are_offered():
    assert set(NEW) <= set(METHODS)
    assert {"keepresizemix", "saliencymix_gradient"} <= set(SALIENCY_METHODS)
    assert not {"resizemix", "saliencymix", "fmix", "gridmask"} & set(SALIENCY_METHODS)


@pytest.mark.parametrize("name", NEW)
def test_every_new_method_prepares_a_normalised_batch_with_its_op(name, cifar_uint8, cifar_labels):
    m = _method(name)
    x, y = cifar_uint8[:8], cifar_labels[:8]
    x_before = x.clone()
    m.on_epoch_start()
    out = m.prepare(x, y, torch.Generator().manual_seed(0))
    again = m.prepare(x, y, torch.Generator().manual_seed(0))
    assert torch.equal(x, x_before)
    rows = 24 if name == "augmix_jsd" else 8
    assert out.inputs.dtype == torch.float32 and out.inputs.shape == (rows, 3, 32, 32)
    assert torch.equal(out.inputs, again.inputs) and torch.equal(out.targets, again.targets)
    assert out.targets.shape[0] == rows
    mixing = name not in ("gridmask", "augmix", "augmix_jsd")
    assert m.op.mixes_labels == mixing
    if mixing:
        assert out.targets.shape == (8, 10) and torch.allclose(out.targets.sum(1), torch.ones(8))
        # Every mixed row's weight on its own label is the exact share of its own pixels.
        assert (out.targets.max(1).values >= 0.0).all()
    else:
        assert torch.equal(out.targets[:8], y)
    # Normalised: the pixels the op leaves alone are (x / 255 - mean) / std.
    assert out.inputs.min() >= -2.0 - 1e-6 and out.inputs.max() <= 2.0 + 1e-6


@pytest.mark.parametrize(
    "name, op_type, raw",
    [
        ("gridmask", "GridMask", False),
        ("augmix", "AugMix", True),
        ("augmix_jsd", "AugMix", True),
        ("attentive_cutmix", "AttentiveCutMix", False),
        ("resizemix", "ResizeMix", False),
        ("keepresizemix", "ResizeMix", False),
        ("saliencymix", "SaliencyMix", False),
        ("saliencymix_gradient", "SaliencyMix", False),
        ("fmix", "FMix", False),
    ],
)
def test_each_method_builds_its_op_from_the_config(name, op_type, raw):
    m = _method(name)
    assert type(m.op).__name__ == op_type and m.op.raw_pixels == raw
    assert (m.saliency is not None) == (name in SALIENCY_METHODS)


def test_op_fields_come_from_the_config():
    from keepmix.placers import KeepPlacer

    g = _method(
        "gridmask", gridmask_d_min=5, gridmask_d_max=9, gridmask_ratio=0.3, gridmask_rotate=45.0, gridmask_mode=0, gridmask_p=0.5
    ).op
    assert g.d_range == (5, 9) and g.ratio == 0.3 and g.rotate == (0.0, 45.0) and g.mode == 0 and g.p_max == 0.5
    a = _method("augmix", augmix_severity=5, augmix_width=2, augmix_depth=2, augmix_alpha=0.5, augmix_all_ops=True).op
    assert (a.severity, a.width, a.depth, a.alpha, a.all_ops) == (5, 2, 2, 0.5, True)
    assert _method("augmix_jsd", augmix_jsd_weight=3.0).weight == 3.0
    assert _method("attentive_cutmix", attentive_top_k=3).op.top_k == 3
    r = _method("resizemix", resizemix_scale_min=0.2, resizemix_scale_max=0.5).op
    assert r.scale == (0.2, 0.5) and type(r.placer).__name__ == "UniformPlacer"
    k = _method("keepresizemix", keep_quantile=0.3).op
    assert isinstance(k.placer, KeepPlacer) and k.placer.q == 0.3
    s = _method("saliencymix", cutmix_alpha=0.5, cutmix_p=0.25).op
    assert (s.alpha, s.p, s.saliency) == (0.5, 0.25, "spectral")
    assert _method("saliencymix_gradient").op.saliency == "gradient"
    f = _method("fmix", fmix_alpha=0.5, fmix_decay_power=2.0).op
    assert (f.alpha, f.decay_power) == (0.5, 2.0)


@pytest.mark.parametrize(
    "field, value",
    [
        ("gridmask_d_min", 40),
        ("gridmask_d_min", 0),
        ("gridmask_ratio", 1.0),
        ("gridmask_rotate", 400.0),
        ("gridmask_p", 1.5),
        ("gridmask_ramp", -0.1),
        ("gridmask_mode", 2),
        ("augmix_severity", 11),
        ("augmix_width", 0),
        ("augmix_depth", 0),
        ("augmix_alpha", 0.0),
        ("augmix_jsd_weight", -1.0),
        ("attentive_top_k", 0),
        ("resizemix_scale_min", 0.9),
        ("resizemix_scale_min", 0.0),
        ("resizemix_scale_max", 1.5),
        ("fmix_alpha", 0.0),
        ("fmix_decay_power", 0.0),
    ],
)
def test_bad_method_fields_are_refused_by_name(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: value})


def test_saliencymix_gradient_with_the_early_head_needs_it():
    with pytest.raises(ConfigError, match="early_head"):
        TrainConfig(method="saliencymix_gradient", saliency="early")


# ------------------------------------------------------------------------------- GridMask
def test_gridmask_probability_follows_the_linear_schedule():
    m = _method("gridmask", epochs=10, gridmask_p=0.8, gridmask_ramp=0.8)
    assert isinstance(m, GridMaskMethod) and m.ramp_epochs == 8
    ps = []
    for _ in range(10):
        m.on_epoch_start()
        ps.append(m.op.p)
    assert ps == pytest.approx([0.8 * min(1.0, e / 8) for e in range(10)])
    flat = _method("gridmask", epochs=10, gridmask_p=0.7, gridmask_ramp=0.0)
    flat.on_epoch_start()
    assert flat.op.p == 0.7


def test_gridmask_state_restores_the_epoch_and_its_masks(cifar_uint8, cifar_labels):
    x, y = cifar_uint8[:16], cifar_labels[:16]
    a = _method("gridmask", epochs=6, gridmask_ramp=1.0)
    for _ in range(3):
        a.on_epoch_start()
    b = _method("gridmask", epochs=6, gridmask_ramp=1.0)
    b.load_state_dict(a.state_dict())
    assert a.state_dict() == {"epochs_started": 3} and b.op.p == a.op.p == pytest.approx(0.8 * 2 / 6)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(a.prepare(x, y, g1).inputs, b.prepare(x, y, g2).inputs)
    with pytest.raises(ValueError, match="epochs_started"):
        b.load_state_dict({"epoch": 1})


def test_gridmask_run_interrupted_mid_epoch_resumes_bitwise(tmp_path, tiny_data):
    kw = dict(method="gridmask", epochs=3, gridmask_ramp=1.0)
    full = _run(_cfg(tmp_path / "a", **kw), tiny_data)

    def stop(trainer, step):
        if step == 4:  # inside epoch 2 (3 steps per epoch)
            trainer.request_stop()

    with pytest.raises(RunInterrupted) as e:
        _run(_cfg(tmp_path / "b", **kw), tiny_data, on_step=stop)
    run_b = e.value.checkpoint.parent
    assert load_checkpoint(run_b)["ranks"][0]["method"] == {"epochs_started": 2}
    train(None, resume=run_b, data=prepare_data(*tiny_data, _cfg(tmp_path / "b", **kw)), log=lambda m: None)
    a, b = load_checkpoint(full["run_dir"]), load_checkpoint(run_b)
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
    assert a["ranks"][0]["method"] == b["ranks"][0]["method"] == {"epochs_started": 3}


# ------------------------------------------------------------------------------- AugMix + JSD
def _reference_jsd(logits, labels, weight=12.0, smoothing=0.0):
    """CE on the clean third plus weight * JS, written out from the paper."""
    b = logits.shape[0] // 3
    clean, a1, a2 = logits[:b], logits[b : 2 * b], logits[2 * b :]
    ce = F.cross_entropy(clean, labels, label_smoothing=smoothing)
    p = [F.softmax(t, 1) for t in (clean, a1, a2)]
    m = ((p[0] + p[1] + p[2]) / 3).clamp(1e-7, 1)
    kl = [(q * (q.clamp_min(1e-30).log() - m.log())).sum(1).mean() for q in p]
    return ce + weight * sum(kl) / 3


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_augmix_jsd_trains_with_clean_ce_plus_12_js_through_the_current_loop(smoothing, cifar_uint8, cifar_labels):
    from keepmix.targets import SoftTargetCrossEntropy

    model = build_model("small", num_classes=10)
    m = _method("augmix_jsd", model=model, label_smoothing=smoothing)
    assert isinstance(m, AugMixJSDMethod) and m.weight == 12.0 and not m.loop_calls_loss
    x, y = cifar_uint8[:8], cifar_labels[:8]
    g = torch.Generator().manual_seed(3)
    batch = m.prepare(x, y, g)
    # The three thirds: the clean batch, then two independent AugMix draws.
    aug1, aug2 = m.op.splits(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(batch.inputs, m.normalize(torch.cat([x, aug1, aug2])))
    assert not torch.equal(aug1, aug2) and torch.equal(batch.targets, y.repeat(3))
    # What the loop computes today: criterion over every row + feature_loss(features).
    feats = model.forward_features(batch.inputs)
    logits = model.classify(feats)
    loop_loss = SoftTargetCrossEntropy(smoothing)(logits, batch.targets) + batch.feature_loss(feats)
    want = _reference_jsd(logits, y, smoothing=smoothing)
    assert loop_loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert batch.loss(logits, batch.targets).item() == pytest.approx(want.item(), rel=1e-5)
    # ... and the same gradient.
    g_loop = torch.autograd.grad(loop_loss, model.fc.weight, retain_graph=True)[0]
    g_ref = torch.autograd.grad(want, model.fc.weight)[0]
    assert torch.allclose(g_loop, g_ref, atol=1e-6)


def test_a_loop_that_calls_the_loss_hook_gets_no_folded_feature_loss(cifar_uint8, cifar_labels):
    m = _method("augmix_jsd")
    m.loop_calls_loss = True
    batch = m.prepare(cifar_uint8[:4], cifar_labels[:4], torch.Generator().manual_seed(0))
    assert batch.feature_loss is None and batch.loss is not None
    assert StepBatch(batch.inputs, batch.targets).loss is None  # the hook is optional


def test_augmix_jsd_trains_end_to_end(tmp_path, tiny_data):
    final = _run(_cfg(tmp_path, method="augmix_jsd", epochs=1), tiny_data)
    rec = json.loads((Path(final["run_dir"]) / "metrics.jsonl").read_text().splitlines()[-1])
    assert rec["step"] == 3 and rec["train_loss"] > 0 and 0 <= final["test_acc"] <= 100


# ------------------------------------------------------------------------------- Attentive CutMix
def test_attentive_cutmix_refuses_a_missing_or_bad_teacher(tmp_path):
    model = build_model("small", num_classes=10)
    cfg = TrainConfig(method="attentive_cutmix", model="small")
    with pytest.raises(ConfigError, match="teacher_run"):
        build_method(cfg, model, 10, MEAN, STD)
    with pytest.raises(ConfigError, match="teacher_run .* cannot serve as the teacher"):
        build_method(cfg.replace(teacher_run=str(tmp_path / "nothing")), model, 10, MEAN, STD)


def test_attentive_cutmix_pastes_the_trained_teachers_top_cells(teacher_run, cifar_uint8, cifar_labels):
    from keepmix.attentive_cutmix import top_cells
    from keepmix.train.checkpoint import load_trained_model

    model = build_model("small", num_classes=10)
    m = build_method(TrainConfig(method="attentive_cutmix", model="small", teacher_run=teacher_run), model, 10, MEAN, STD)
    teacher = m.op.teacher.model
    assert teacher is not model and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    trained, _ = load_trained_model(teacher_run, 10)
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), trained.state_dict().values(), strict=True))
    x, y = cifar_uint8[:8], cifar_labels[:8]
    out = m.prepare(x, y, torch.Generator().manual_seed(2))
    params = m.op.sample_params(m.normalize(x), y, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = top_cells(trained.forward_features(m.normalize(x)), 6)[params.perm]
    assert torch.equal(params.cells, want) and params.cells.sum(dim=(1, 2)).eq(6).all()
    # 6 of the 4 x 4 cells of 8 x 8 pixels: the partner's share is 6 / 16.
    own = out.targets.gather(1, y.view(-1, 1)).squeeze(1)
    moved = params.perm != torch.arange(8)
    assert torch.allclose(own[moved & (y != y[params.perm])], torch.tensor(10 / 16))


# ------------------------------------------------------------------------------- SaliencyMix
def test_saliencymix_gradient_uses_the_methods_saliency_of_the_clean_batch(cifar_uint8, cifar_labels):
    m = _method("saliencymix_gradient")
    seen = []

    def fake(x, labels):
        seen.append(x)
        sal = torch.zeros(x.shape[0], 32, 32)
        sal[:, 3, 29] = 1.0  # every partner's peak at (3, 29)
        return sal

    m.saliency = fake
    x, y = cifar_uint8[:8], cifar_labels[:8]
    out = m.prepare(x, y, torch.Generator().manual_seed(0))
    assert torch.equal(seen[0], m.normalize(x))
    params = m.op.sample_params(m.normalize(x), y, saliency=fake(m.normalize(x), y), generator=torch.Generator().manual_seed(0))
    assert (params.peaks == torch.tensor([3, 29])).all()
    assert out.targets.shape == (8, 10)


# ------------------------------------------------------------------------------- presets
def test_paper_presets_of_the_new_methods():
    assert get_preset("cifar10-resnet18-augmix_jsd").augmix_jsd_weight == 12.0
    aug = get_preset("cifar10-resnet18-augmix")
    assert (aug.augmix_severity, aug.augmix_width, aug.augmix_depth, aug.augmix_all_ops) == (3, 3, -1, False)
    gm = get_preset("cifar10-wrn28-10-gridmask")
    assert (gm.gridmask_ratio, gm.gridmask_p, gm.gridmask_ramp, gm.epochs) == (0.6, 0.8, 0.8, 300)
    sm = get_preset("cifar10-resnet18-saliencymix")
    assert (sm.cutmix_alpha, sm.cutmix_p) == (1.0, 0.5)
    # Saliency variants of the other Keep methods are overrides of the preset.
    assert get_preset("cifar10-resnet18-saliencymix_gradient", saliency="lowres").saliency == "lowres"
    assert get_preset("cifar10-resnet18-keepresizemix", saliency="early", early_head=True).early_head
    rm = get_preset("cifar10-resnet18-resizemix")
    assert (rm.resizemix_scale_min, rm.resizemix_scale_max) == (0.1, 0.8)
    fm = get_preset("cifar10-resnet18-fmix")
    assert (fm.fmix_alpha, fm.fmix_decay_power) == (1.0, 3.0)
    ac = get_preset("cifar10-resnet18-attentive_cutmix")
    assert ac.attentive_top_k == 6 and ac.teacher_run == ""
    assert get_preset("cifar10-resnet18-attentive_cutmix", teacher_run="runs/x").teacher_run == "runs/x"
    for name in NEW:
        assert get_preset(f"cifar10-small-{name}-quick").method == name
