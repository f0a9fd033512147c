"""UDA (keepmix.train.uda): TSA, the confidence mask and the consistency term against hand-computed
examples, the label-free saliency, bad input, and a tiny end-to-end `keepmix train` run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from keepmix.data.split import Split
from keepmix.saliency import Saliency
from keepmix.train.config import ConfigError, TrainConfig
from keepmix.train.data import prepare_data
from keepmix.train.loop import Trainer
from keepmix.train.uda import (
    augment_unlabelled,
    build_uda_augment,
    confidence_mask,
    consistency_loss,
    sharpen,
    tsa_cross_entropy,
    tsa_mask,
    tsa_threshold,
    uda_loss,
)

CLASSES = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def tiny_data(cifar_uint8, cifar_labels):
    """40 real CIFAR-10 images to train on (4 per class), 24 to test on."""
    train = Split(cifar_uint8[:40].clone(), cifar_labels[:40].clone(), CLASSES)
    return train, Split(cifar_uint8[40:].clone(), cifar_labels[40:].clone(), CLASSES)


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(
        name="u",
        model="small",
        epochs=1,
        batch_size=4,
        lr=0.05,
        out_dir=str(tmp_path),
        progress=False,
        pictures=False,
        log_every=1,
        threads=1,
        semi_labels=10,
        semi_mu=2,
        saliency="lowres",
    )
    base.update(kw)
    return TrainConfig(**base)


# ----------------------------------------------------------------------------- TSA
def test_tsa_threshold_by_hand():
    # eta = alpha * (1 - 1/K) + 1/K with K = 10 at t = 0.5:
    assert tsa_threshold("linear", 0.5, 10) == pytest.approx(0.5 * 0.9 + 0.1)  # 0.55
    assert tsa_threshold("log", 0.5, 10) == pytest.approx((1 - math.exp(-2.5)) * 0.9 + 0.1)  # 0.926123
    assert tsa_threshold("exp", 0.5, 10) == pytest.approx(math.exp(-2.5) * 0.9 + 0.1)  # 0.173877
    assert tsa_threshold("log", 0.5, 10) == pytest.approx(0.926123, abs=1e-6)
    assert tsa_threshold("exp", 0.5, 10) == pytest.approx(0.173877, abs=1e-6)
    # From 1/K at the start to 1 at the end (exp and log reach exp(-5) away from it).
    assert tsa_threshold("linear", 0.0, 10) == pytest.approx(0.1)
    assert tsa_threshold("linear", 1.0, 10) == pytest.approx(1.0)
    assert tsa_threshold("linear", 2.0, 4) == pytest.approx(1.0)  # clipped
    assert tsa_threshold("exp", 1.0, 10) == pytest.approx(1.0)
    assert tsa_threshold("log", 0.0, 10) == pytest.approx(0.1)
    assert tsa_threshold("none", 0.0, 10) == 1.0
    with pytest.raises(ValueError, match="uda_tsa"):
        tsa_threshold("cosine", 0.5, 10)


def test_tsa_mask_and_cross_entropy_by_hand():
    # Probabilities (0.7, 0.2, 0.1) for both rows; row 0's label is class 0 (p = 0.7), row 1's class 1 (p = 0.2).
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1]]))
    labels = torch.tensor([0, 1])
    # eta = 0.55: 0.7 > 0.55 is left out, 0.2 <= 0.55 trains.
    assert tsa_mask(logits, labels, 0.55).tolist() == [0.0, 1.0]
    loss, mask = tsa_cross_entropy(logits, labels, 0.55)
    assert mask.tolist() == [0.0, 1.0]
    assert loss.item() == pytest.approx(-math.log(0.2), rel=1e-5)  # the kept example's CE over 1 kept example
    # eta = 1 (no TSA): the plain mean.
    loss, mask = tsa_cross_entropy(logits, labels, 1.0)
    assert mask.tolist() == [1.0, 1.0]
    assert loss.item() == pytest.approx((-math.log(0.7) - math.log(0.2)) / 2, rel=1e-5)
    # Everything above the threshold: a zero loss (divided by max(kept, 1)), no NaN.
    loss, mask = tsa_cross_entropy(logits, torch.tensor([0, 0]), 0.1)
    assert mask.tolist() == [0.0, 0.0] and loss.item() == 0.0


# ----------------------------------------------------------------------------- consistency
def test_confidence_mask_by_hand():
    logits = torch.log(torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8], [0.81, 0.19]]))
    # Strictly above 0.8: 0.9 yes, 0.5 no, 0.8 no (not strictly above), 0.81 yes.
    assert confidence_mask(logits, 0.8).tolist() == [1.0, 0.0, 0.0, 1.0]
    assert confidence_mask(logits, 0.0).tolist() == [1.0, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="uda_threshold"):
        confidence_mask(logits, 1.5)


def test_consistency_loss_by_hand():
    # Row 0: clean p = (0.6, 0.4), sharpened at T = 0.5: (0.36, 0.16) / 0.52 = (9/13, 4/13) = (0.692308, 0.307692);
    # augmented q = (0.5, 0.5): KL = 9/13 ln(18/13) + 4/13 ln(8/13) = 0.225292 - 0.149387 = 0.075906.
    # Row 1: clean p = (0.52, 0.48): max 0.52 is not above the threshold 0.55: masked out.
    clean = torch.log(torch.tensor([[0.6, 0.4], [0.52, 0.48]])).requires_grad_(True)
    aug = torch.zeros(2, 2, requires_grad=True)
    target = sharpen(clean, 0.5)
    assert target[0].tolist() == pytest.approx([0.692308, 0.307692], abs=1e-6)
    loss, mask = consistency_loss(clean, aug, temperature=0.5, threshold=0.55)
    assert mask.tolist() == [1.0, 0.0]
    kl0 = 9 / 13 * math.log(18 / 13) + 4 / 13 * math.log(8 / 13)
    assert kl0 == pytest.approx(0.075906, abs=1e-6)
    assert loss.item() == pytest.approx(kl0 / 2, abs=1e-6)  # averaged over the whole unlabelled batch
    loss.backward()
    assert clean.grad is None or torch.all(clean.grad == 0)  # the target carries no gradient
    assert aug.grad[0].abs().sum() > 0 and torch.all(aug.grad[1] == 0)
    # A target probability that underflows (a very sharp temperature) adds 0, not NaN.
    sharp, _ = consistency_loss(torch.tensor([[50.0, -50.0]]), torch.zeros(1, 2), temperature=0.01, threshold=0.0)
    assert torch.isfinite(sharp) and sharp.item() == pytest.approx(math.log(2), rel=1e-5)


def test_uda_loss_adds_the_weighted_parts():
    g = torch.Generator().manual_seed(0)
    sup, clean, aug = (torch.randn(n, 10, generator=g) for n in (4, 8, 8))
    labels = torch.tensor([0, 1, 2, 3])
    out = uda_loss(sup, labels, clean, aug, tsa=0.55, temperature=0.4, threshold=0.0, weight=2.5)
    ce, _ = tsa_cross_entropy(sup, labels, 0.55)
    kl, _ = consistency_loss(clean, aug, 0.4, 0.0)
    assert out.total.item() == pytest.approx(ce.item() + 2.5 * kl.item(), rel=1e-6)
    assert out.conf_mask.tolist() == [1.0] * 8


# ----------------------------------------------------------------------------- label-free saliency
class _SpySaliency:
    """Records how it is called; returns a constant map."""

    def __init__(self):
        self.calls = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        images = args[0]
        return torch.ones(images.shape[0], *images.shape[-2:])


def test_augment_unlabelled_calls_the_saliency_with_images_only(cifar_uint8):
    from keepmix.keep import KeepRandAugment

    spy = _SpySaliency()
    norm = lambda x: x.float() / 255.0  # noqa: E731
    out = augment_unlabelled(KeepRandAugment(2, 9), cifar_uint8[:8], norm, spy, torch.Generator().manual_seed(0))
    assert out.shape == (8, 3, 32, 32) and out.dtype == torch.float32
    assert len(spy.calls) == 1
    args, kwargs = spy.calls[0]
    assert len(args) == 1 and kwargs == {}  # the images alone: no labels argument at all
    assert torch.equal(args[0], norm(cifar_uint8[:8]))


def test_saliency_without_labels_takes_the_max_logit_of_a_spy_logits_function():
    torch.manual_seed(0)
    w = torch.randn(10, 3 * 8 * 8)
    seen = []

    def spy_logits(x):  # what the saliency pass feeds the network
        seen.append(x.detach().clone())
        return x.flatten(1) @ w.t()

    x = torch.randn(4, 3, 8, 8)
    sal = Saliency(spy_logits)(x)  # labels=None: the maximum logit
    assert len(seen) == 1 and torch.equal(seen[0], x)
    top = (x.flatten(1) @ w.t()).argmax(1)
    expected = w[top].view(4, 3, 8, 8).abs().amax(dim=1)  # d(max logit)/dx of a linear map
    assert torch.allclose(sal, expected)


def test_a_semi_supervised_run_never_gives_the_saliency_labels(tmp_path, tiny_data):
    cfg = _cfg(tmp_path, uda_augment="keeprandaugment", epochs=1)
    trainer = Trainer(cfg, data=prepare_data(*tiny_data, cfg), log=lambda m: None)
    real = trainer.semi.saliency
    spy = _SpySaliency()

    def wrapped(*args, **kwargs):
        spy(*args, **kwargs)
        return real(*args, **kwargs)

    trainer.semi.saliency = wrapped
    trainer.run()
    assert len(spy.calls) == trainer.steps_per_epoch == 10 // 4
    for args, kwargs in spy.calls:
        assert len(args) == 1 and kwargs == {}
        assert args[0].shape == (cfg.semi_mu * cfg.batch_size, 3, 32, 32)  # the unlabelled batch only


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "field, value, match",
    [
        ("semi_mu", 0, "semi_mu must be >= 1"),
        ("uda_threshold", 1.5, "uda_threshold must be in \\[0, 1\\]"),
        ("uda_threshold", -0.1, "uda_threshold must be in \\[0, 1\\]"),
        ("uda_temperature", 0.0, "uda_temperature must be > 0"),
        ("uda_weight", -1.0, "uda_weight must be >= 0"),
        ("semi_labels", -4, "semi_labels must be >= 0"),
    ],
)
def test_bad_values_name_the_option(field, value, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**{"semi_labels": 40, field: value})


def test_early_saliency_without_an_early_head_is_refused():
    with pytest.raises(ConfigError, match="early head: set early_head=true"):
        TrainConfig(semi_labels=40, uda_augment="keeprandaugment", saliency="early")
    # A model built without its head, given a config that asks for early saliency:
    from keepmix.models import build_model

    cfg = TrainConfig(semi_labels=40, uda_augment="keeprandaugment", saliency="early", early_head=True)
    with pytest.raises(ConfigError, match="saliency='early'.*has none: set early_head=true"):
        build_uda_augment(cfg, build_model("small", early_head=False))
    op, sal = build_uda_augment(cfg, build_model("small", early_head=True))
    assert sal is not None and type(op).__name__ == "KeepRandAugment"


@pytest.mark.parametrize(
    "labels, match",
    [
        (41, "semi_labels=41 but the training set has only 40 images"),
        (40, "semi_labels=40 but the training set has only 40 images: keeping every label leaves no unlabelled images"),
        (15, "semi_labels=15 is not divisible by the 10 classes"),
        (50, "semi_labels=50 but the training set has only 40"),
    ],
)
def test_bad_label_counts_name_semi_labels(tmp_path, tiny_data, labels, match):
    cfg = _cfg(tmp_path, semi_labels=labels)
    with pytest.raises(ConfigError, match=match):
        Trainer(cfg, data=prepare_data(*tiny_data, cfg), log=lambda m: None)
    assert not any(tmp_path.iterdir())  # nothing written


def test_too_small_an_unlabelled_pool_and_mixing_methods_are_refused(tmp_path, tiny_data):
    cfg = _cfg(tmp_path, semi_labels=30, semi_mu=5, batch_size=4)  # 10 unlabelled < 20
    with pytest.raises(ConfigError, match="semi_mu=5.*too few for one unlabelled batch of 20"):
        Trainer(cfg, data=prepare_data(*tiny_data, cfg), log=lambda m: None)
    cfg = _cfg(tmp_path, method="cutmix")
    with pytest.raises(ConfigError, match="method='cutmix' cannot train the labelled batch"):
        Trainer(cfg, data=prepare_data(*tiny_data, cfg), log=lambda m: None)


def test_cli_bad_input_is_one_line_naming_the_option(tiny_folder, tmp_path, isolated_env, capsys):
    from keepmix.cli import main

    base = [
        "train",
        "cifar10-small-uda-randaugment-quick",
        "--dataset",
        str(tiny_folder),
        "--out-dir",
        str(tmp_path / "runs"),
        "--test-subset",
        "0",
    ]
    for extra, match in (
        (["--semi-labels", "45"], "semi_labels=45 but the training set has only 40 images"),
        (["--semi-labels", "15"], "semi_labels=15 is not divisible by the 10 classes"),
        (["--semi-mu", "0"], "semi_mu must be >= 1"),
        (["--uda-threshold", "2"], "uda_threshold must be in [0, 1]"),
    ):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and match in err, err


# ----------------------------------------------------------------------------- end to end
def test_keepmix_train_semi_supervised_end_to_end(tiny_folder, tmp_path, isolated_env, capsys):
    from keepmix.cli import main

    rc = main(
        [
            "train",
            "cifar10-small-uda-keeprandaugment-quick",
            "--dataset",
            str(tiny_folder),
            "--out-dir",
            str(tmp_path / "runs"),
            "--semi-labels",
            "10",
            "--batch-size",
            "5",
            "--semi-mu",
            "2",
            "--epochs",
            "2",
            "--test-subset",
            "0",
            "--uda-tsa",
            "linear",
            "--threads",
            "1",
            "--no-progress",
            "--no-pictures",
        ]
    )
    out = capsys.readouterr()
    assert rc == 0, out.err
    (run,) = list((tmp_path / "runs").iterdir())
    final = json.loads((run / "final.json").read_text())
    assert final["steps"] == 2 * (10 // 5) and final["config"]["semi_labels"] == 10
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert 0.0 <= r["tsa_kept"] <= 1.0 and 0.0 <= r["uda_confident"] <= 1.0 and r["uda_loss"] >= 0.0
        assert 0.1 <= r["tsa_threshold"] <= 1.0
    assert records[-1]["unlabelled_batches"] == 4
    assert records[0]["tsa_threshold"] < records[1]["tsa_threshold"]  # the linear schedule rises


def test_wrn28_2_is_registered_with_an_early_head():
    from keepmix.models import build_model, count_parameters

    assert count_parameters(build_model("wrn28_2")) == 1_467_610
    m = build_model("wrn28_2", early_head=True).eval()
    x = torch.randn(2, 3, 32, 32)
    assert m(x).shape == (2, 10) and m.early_logits(x).shape == (2, 10)
    assert m.early_head.fc.in_features == 32  # after stage 1: 16 x 2 channels


def test_presets_for_the_papers_two_rows():
    from keepmix.train.presets import get_preset

    for labels in (4000, 2500):
        ra = get_preset(f"cifar10-wrn28-2-uda-randaugment-{labels}")
        keep = get_preset(f"cifar10-wrn28-2-uda-keeprandaugment-{labels}")
        assert ra.model == keep.model == "wrn28_2" and ra.semi_labels == keep.semi_labels == labels
        assert (ra.uda_augment, keep.uda_augment) == ("randaugment", "keeprandaugment")
        assert ra.to_dict() | {"uda_augment": None, "name": None} == keep.to_dict() | {"uda_augment": None, "name": None}
        assert ra.epochs * (labels // ra.batch_size) >= 500_000
        assert (ra.semi_mu, ra.uda_temperature, ra.uda_threshold, ra.uda_weight, ra.uda_tsa) == (5, 0.4, 0.8, 1.0, "none")
