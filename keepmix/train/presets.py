"""Named presets: the papers' training set-ups, plus quick CPU runs.

Naming: ``<dataset>-<model>-<method>[-<saliency>]`` e.g. ``cifar10-resnet18-keepcutout``,
``cifar10-resnet18-keepcutout-lowres``, ``cifar10-wrn28-10-keepautoaugment-early``; and
``cifar10-small-<method>-quick`` for a run of a minute or two on a laptop CPU.

Paper set-ups (SPEC 3 and 4):

* KeepAugment (Gong et al. 2021): SGD momentum 0.9, cosine decay, 300 epochs, batch 128,
  crop (pad 4) + flip before the method, lr 0.1, weight decay 5e-4, q = 0.6, Cutout 16
  (CIFAR-100: 8), paste size 16, early head weight 0.3, low-res downscale 2. The plain
  baselines (none, cutout, cutmix, mixup, ...) use the same set-up, so a preset pair differs
  only in the method.
* RecursiveMix (Yang et al. 2022, official code): 200 epochs, batch 128, lr 0.1 cosine,
  weight decay 5e-4, AMP (on GPU), alpha 0.5, omega 0.5.
"""

from __future__ import annotations

from typing import Any

from keepmix.train.config import METHODS, ConfigError, TrainConfig, config_from_dict

__all__ = ["PRESETS", "preset_names", "get_preset", "describe_preset"]

_KEEP_SETUP: dict[str, Any] = dict(
    epochs=300, batch_size=128, lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
    warmup_epochs=0.0, crop_padding=4, flip=True, keep_quantile=0.6, keep_paste_size=16,
    early_loss_weight=0.3, saliency_downscale=2,
)
_RECURSIVEMIX_SETUP: dict[str, Any] = dict(_KEEP_SETUP, epochs=200, recursivemix_alpha=0.5, recursivemix_omega=0.5)

# Preset-name spelling of each model name (hyphens read better in a preset name).
_MODELS = {"resnet18": "resnet18", "preact-resnet18": "preact_resnet18", "resnet20": "resnet20",
           "resnet56": "resnet56", "resnet110": "resnet110", "wrn28-10": "wrn28_10"}
_DATASETS = {"cifar10": dict(dataset="cifar10", cutout_length=16), "cifar100": dict(dataset="cifar100", cutout_length=8)}
_SALIENCY_SUFFIX = {"lowres": "lowres", "early": "early", "lowres-early": "lowres+early"}

# The quick CPU set-up: the small net on a class-balanced subset, a few epochs. Sized so the
# whole run (data loading, training, evaluation, pictures) takes about a minute on 2 cores.
_QUICK_SETUP: dict[str, Any] = dict(
    dataset="cifar10", model="small", epochs=4, batch_size=64, lr=0.05, weight_decay=5e-4,
    warmup_epochs=0.5, train_subset=2000, test_subset=1000, log_every=5, saliency="lowres",
)


def _build() -> dict[str, dict[str, Any]]:
    presets: dict[str, dict[str, Any]] = {}
    for ds, ds_fields in _DATASETS.items():
        for mname, model in _MODELS.items():
            for method in METHODS:
                base = _RECURSIVEMIX_SETUP if "recursivemix" in method else _KEEP_SETUP
                name = f"{ds}-{mname}-{method}"
                fields = dict(base, **ds_fields, model=model, method=method, name=name)
                presets[name] = fields
                if method.startswith("keep"):
                    for suffix, mode in _SALIENCY_SUFFIX.items():
                        presets[f"{name}-{suffix}"] = dict(
                            fields, name=f"{name}-{suffix}", saliency=mode, early_head="early" in mode
                        )
    for method in METHODS:
        name = f"cifar10-small-{method}-quick"
        presets[name] = dict(_QUICK_SETUP, method=method, name=name)
    return presets


#: Preset name -> the fields it sets (every other field keeps the TrainConfig default).
PRESETS: dict[str, dict[str, Any]] = _build()


def preset_names() -> list[str]:
    """All preset names, sorted."""
    return sorted(PRESETS)


def get_preset(name: str, **overrides: Any) -> TrainConfig:
    """The validated config of preset ``name`` with ``overrides`` applied on top."""
    if name not in PRESETS:
        import difflib

        close = difflib.get_close_matches(name, PRESETS, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown preset {name!r}.{hint} `keepmix train --list-presets` lists them all.")
    return config_from_dict({**PRESETS[name], **overrides}, where="overrides")


def describe_preset(name: str) -> str:
    """One line: model, method, epochs, then the other fields the preset sets that differ from the defaults."""
    default = TrainConfig().to_dict()
    p = {**default, **PRESETS[name]}
    fields = {k: p[k] for k in ("dataset", "model", "method", "epochs")}
    fields.update({k: v for k, v in PRESETS[name].items() if k not in fields and k != "name" and default.get(k) != v})
    return ", ".join(f"{k}={v}" for k, v in fields.items())
