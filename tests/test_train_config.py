"""Run config, presets, command-line values, optimiser and lr schedule."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from keepmix.train.config import METHODS, ConfigError, TrainConfig, config_from_dict, load_config, parse_value, save_config
from keepmix.train.optim import build_optimizer, build_scheduler, lr_factor
from keepmix.train.presets import PRESETS, describe_preset, get_preset, preset_names


def test_defaults_are_valid_and_round_trip_through_yaml(tmp_path):
    cfg = TrainConfig(name="x", epochs=7, lr=0.05, nesterov=True)
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert not list(tmp_path.glob("*.tmp"))


def test_toml_config(tmp_path):
    (tmp_path / "c.toml").write_text('name = "t"\nepochs = 3\nlr = 1\nflip = false\n')
    cfg = load_config(tmp_path / "c.toml")
    assert (cfg.name, cfg.epochs, cfg.lr, cfg.flip) == ("t", 3, 1.0, False)
    assert isinstance(cfg.lr, float)


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"lr": "x"}, ["lr", "float"]),
        ({"epochs": 2.5}, ["epochs", "int"]),
        ({"flip": 1}, ["flip", "bool"]),
        ({"method": "cutmixx"}, ["method", "one of"]),
        ({"epochs": 0}, ["epochs", ">= 1"]),
        ({"label_smoothing": 1.0}, ["label_smoothing"]),
        ({"keep_quantile": 0.0}, ["keep_quantile"]),
        ({"lr": math.nan}, ["lr", "finite"]),
        ({"method": "keepcutout", "saliency": "early"}, ["early_head"]),
        ({"warmup_epochs": 400.0}, ["warmup_epochs"]),
        ({"nesterov": True, "momentum": 0.0}, ["nesterov"]),
    ],
)
def test_bad_values_name_the_field(changes, words):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**changes)
    for w in words:
        assert w in str(e.value)


def test_unknown_keys_are_errors_with_suggestions(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        config_from_dict({"epoch": 3})
    (tmp_path / "bad.yaml").write_text("batch_sise: 3\n")
    with pytest.raises(ConfigError, match="batch_sise.*batch_size"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_parse_value_types():
    assert parse_value("epochs", "5") == 5
    assert parse_value("lr", "1e-3") == 1e-3
    assert parse_value("flip", "no") is False
    assert parse_value("model", "wrn28_10") == "wrn28_10"
    with pytest.raises(ConfigError, match="epochs expects a int"):
        parse_value("epochs", "five")
    with pytest.raises(ConfigError, match="unknown option"):
        parse_value("epoch", "5")


def test_every_preset_is_valid_and_paper_setups_hold():
    for name in preset_names():
        cfg = get_preset(name)
        assert cfg.name == name
        assert describe_preset(name)
    keep = get_preset("cifar10-resnet18-keepcutout")
    assert (keep.epochs, keep.batch_size, keep.momentum, keep.lr, keep.crop_padding, keep.flip) == (300, 128, 0.9, 0.1, 4, True)
    assert (keep.keep_quantile, keep.cutout_length, keep.saliency) == (0.6, 16, "full")
    early = get_preset("cifar10-resnet18-keepcutout-lowres-early")
    assert early.saliency == "lowres+early" and early.early_head and early.early_loss_weight == 0.3
    assert early.saliency_downscale == 2
    rm = get_preset("cifar10-resnet18-recursivemix")
    assert (rm.epochs, rm.batch_size, rm.lr, rm.weight_decay, rm.recursivemix_alpha) == (200, 128, 0.1, 5e-4, 0.5)
    assert get_preset("cifar100-resnet18-cutout").cutout_length == 8
    assert get_preset("cifar10-wrn28-10-keepautoaugment").model == "wrn28_10"
    for m in METHODS:  # a plain baseline and a quick CPU preset for every method
        assert f"cifar10-resnet18-{m}" in PRESETS and f"cifar10-small-{m}-quick" in PRESETS
    quick = get_preset("cifar10-small-keepcutout-quick")
    assert quick.model == "small" and quick.train_subset > 0 and quick.epochs <= 10


def test_preset_overrides_and_unknown_preset():
    cfg = get_preset("cifar10-resnet18-cutmix", epochs=2, lr=0.2)
    assert (cfg.epochs, cfg.lr, cfg.method, cfg.cutmix_p) == (2, 0.2, "cutmix", 0.5)
    with pytest.raises(ConfigError, match="unknown preset.*Did you mean.*cifar10-resnet18-cutmix"):
        get_preset("cifar10-resnet18-cutmx")


def test_lr_factor_warmup_then_cosine():
    total, warm = 100, 10
    f = [lr_factor(s, total, warm, 0.01) for s in range(total + 1)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    # strict=False: each list is zipped with itself shifted by one, so the second is one shorter.
    assert all(a < b for a, b in zip(f[:10], f[1:10], strict=False))  # warm-up rises
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))  # cosine never rises
    assert f[10] == pytest.approx(1.0) and f[100] == pytest.approx(0.01)
    assert f[55] == pytest.approx(0.01 + 0.99 * 0.5)  # half way down the cosine


@settings(max_examples=30, deadline=None)
@given(total=st.integers(1, 500), warm=st.integers(0, 50), ratio=st.floats(0, 1))
def test_lr_factor_stays_in_range(total, warm, ratio):
    for s in range(0, total + warm + 1, max(1, (total + warm) // 20)):
        f = lr_factor(s, total, warm, ratio)
        low = 0.0 if s < warm else ratio  # warm-up starts below the cosine's floor
        assert low - 1e-12 < f <= 1.0 + 1e-12


def test_optimizer_and_scheduler_follow_the_config():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    model(torch.zeros(1, 3, 5, 5))
    cfg = TrainConfig(lr=0.2, momentum=0.8, nesterov=True, weight_decay=1e-3, no_bn_decay=True, epochs=2, warmup_epochs=1.0)
    opt = build_optimizer(model, cfg)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-3, 0.0]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    assert all(p.ndim > 1 for p in opt.param_groups[0]["params"])
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.8
    sched = build_scheduler(opt, cfg, steps_per_epoch=4)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.05, 0.1, 0.15, 0.2])
    assert lrs[4] == pytest.approx(0.2) and lrs[7] < lrs[5] < lrs[4]


def test_presets_are_the_papers_rows_and_filter():
    from keepmix.train.presets import PRESETS, preset_names

    assert len(PRESETS) < 100, "a small set of named recipes; anything else is an override"
    assert preset_names("wrn28-10-keepcutout") == [
        "cifar10-wrn28-10-keepcutout",
        "cifar10-wrn28-10-keepcutout-early",
        "cifar10-wrn28-10-keepcutout-lowres",
        "cifar10-wrn28-10-keepcutout-lowres-early",
    ]
    assert all(n.endswith("-quick") for n in preset_names("*-quick")) and preset_names("*-quick")
    assert preset_names("no-such-preset") == []
