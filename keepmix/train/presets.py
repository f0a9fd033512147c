"""Named presets: the papers' training set-ups, plus quick CPU runs; anything else is an override.

A small set of recipes, each a row of a paper's table (every other combination is a preset plus
``--option value`` overrides, e.g. ``keepmix train cifar10-resnet18-keepcutmix --saliency lowres``):

* KeepAugment's Cutout table: ``cifar10-{resnet18,resnet110,wrn28-10}-{cutout,keepcutout}``,
  the Keep rows with their saliency suffixes ``-lowres``, ``-early``, ``-lowres-early``; the
  same pair on CIFAR-100 (``cifar100-resnet18-...``, Cutout 8);
* its AutoAugment table and Table 5: ``cifar10-wrn28-10-{autoaugment,keepautoaugment}`` (with
  the suffixes) and ``cifar10-wrn28-10-{gridmask,augmix,augmix_jsd,attentive_cutmix}``;
* every other method on ResNet-18: ``cifar10-resnet18-<method>``;
* ``cifar10-small-<method>-quick``: a run of a minute or two on a laptop CPU;
* UDA's two rows (below).

``keepmix train --list-presets [FILTER]`` lists them (FILTER: a substring or a glob).

Paper set-ups:

* KeepAugment (Gong et al. 2021): SGD momentum 0.9, cosine decay, 300 epochs, batch 128,
  crop (pad 4) + flip before the method, lr 0.1, weight decay 5e-4, q = 0.6, Cutout 16
  (CIFAR-100: 8), paste size 16, early head weight 0.3, low-res downscale 2. The plain
  baselines (none, cutout, cutmix, mixup, ...) use the same set-up, so a preset pair differs
  only in the method.
* RecursiveMix (Yang et al. 2022, official code): 200 epochs, batch 128, lr 0.1 cosine,
  weight decay 5e-4, AMP (on GPU), alpha 0.5, omega 0.5.

The methods KeepAugment's Table 5 compares against (GridMask, AugMix, Attentive CutMix) and
those of OpenMixup / mmpretrain (ResizeMix, SaliencyMix, FMix) train in KeepAugment's set-up
above (so that they sit beside KeepAutoAugment as in Table 5), with each method's own
parameters at its paper's setting:

* GridMask (Chen et al. 2020): ``r = 0.6``, ``P = 0.8``, mode 1 (drop the squares), no
  rotation, ``p`` ramped linearly over the first 80% of the epochs (the official ImageNet
  script: 240 of 300). The paper reports CIFAR-10 results but the official code we read gives
  only the ImageNet script's parameters; the unit range ``d`` in [14, 32) is its ImageNet
  [96, 224) scaled to 32 px. Not a verified CIFAR-10 setting.
* AugMix (Hendrycks et al. 2020): the paper's CIFAR-10 setting: severity 3, width 3, random
  depth 1-3, alpha 1, the AugMix op list (no enhance ops); ``augmix_jsd`` adds the
  Jensen-Shannon loss with weight 12 (the paper's).
* Attentive CutMix (Walawalkar et al. 2020): ``N = 6`` cells (the paper's, on ResNet-50's 7 x 7
  grid; a CIFAR ResNet-18's last map is 4 x 4, so 6 cells paste 37.5% of the image, not
  12%); the paper's teacher is an ImageNet-pretrained ResNet-50, here a finished keepmix run
  that ``teacher_run`` must name (the preset leaves it empty, and the method refuses to start
  without it).
* ResizeMix (Qin et al. 2020): ``tau`` ~ U(0.1, 0.8) (the paper's CIFAR and ImageNet range);
  ``keepresizemix`` places the paste with KeepAugment's rule (q = 0.6; not in any paper).
* SaliencyMix (Uddin et al. 2021): alpha 1, p 0.5 (the official CIFAR recipe), the spectral
  residual map; ``saliencymix_gradient`` uses keepmix's gradient saliency instead (not in the
  paper; it takes the ``saliency`` suffixes like the Keep variants).
* FMix (Harris et al. 2020): alpha 1, decay power 3 (the paper's CIFAR-10 setting).

Semi-supervised (KeepAugment section 4.3): ``cifar10-wrn28-2-uda-<A>-<labels>`` for
the paper's two rows (4,000 and 2,500 labels; A = randaugment or keeprandaugment), in UDA's
CIFAR-10 GPU recipe (google-research/uda ``image/scripts/run_cifar10_gpu.sh`` at 602483d and
``image/main.py``; see :mod:`keepmix.train.uda`): WRN-28-2, labelled batch 64, unlabelled
batch 5 x 64, softmax temperature 0.4, confidence threshold 0.8, weight 1, no TSA, SGD
Nesterov momentum 0.9, lr 0.03, weight decay 5e-4, cosine to 0.004 x lr, no warm-up, 500k
steps (given as the epochs of the labelled subset that make at least 500k steps; epochs here
are passes over the labelled images). The supervised batch gets crop + flip only
(``method=none``). KeepRandAugment: q = 0.6, paste 16, the full-resolution saliency of the
maximum logit. ``cifar10-small-uda-<A>-quick`` is a CPU-sized run of the same.
"""

from __future__ import annotations

from typing import Any

from keepmix.train.config import METHODS, ConfigError, TrainConfig, config_from_dict

__all__ = ["PRESETS", "preset_names", "get_preset", "check_preset_name", "describe_preset"]

_KEEP_SETUP: dict[str, Any] = dict(
    epochs=300,
    batch_size=128,
    lr=0.1,
    momentum=0.9,
    nesterov=False,
    weight_decay=5e-4,
    warmup_epochs=0.0,
    crop_padding=4,
    flip=True,
    keep_quantile=0.6,
    keep_paste_size=16,
    early_loss_weight=0.3,
    saliency_downscale=2,
)
_RECURSIVEMIX_SETUP: dict[str, Any] = dict(_KEEP_SETUP, epochs=200, recursivemix_alpha=0.5, recursivemix_omega=0.5)

# Each method's own parameters at its paper's setting (see the module docstring).
_METHOD_SETUP: dict[str, dict[str, Any]] = {
    "gridmask": dict(
        gridmask_d_min=14, gridmask_d_max=32, gridmask_ratio=0.6, gridmask_rotate=0.0, gridmask_mode=1, gridmask_p=0.8, gridmask_ramp=0.8
    ),
    "augmix": dict(augmix_severity=3, augmix_width=3, augmix_depth=-1, augmix_alpha=1.0, augmix_all_ops=False),
    "augmix_jsd": dict(augmix_severity=3, augmix_width=3, augmix_depth=-1, augmix_alpha=1.0, augmix_all_ops=False, augmix_jsd_weight=12.0),
    "attentive_cutmix": dict(attentive_top_k=6),
    "resizemix": dict(resizemix_scale_min=0.1, resizemix_scale_max=0.8),
    "keepresizemix": dict(resizemix_scale_min=0.1, resizemix_scale_max=0.8),
    "saliencymix": dict(cutmix_alpha=1.0, cutmix_p=0.5),
    "saliencymix_gradient": dict(cutmix_alpha=1.0, cutmix_p=0.5),
    "fmix": dict(fmix_alpha=1.0, fmix_decay_power=3.0),
}

# Preset-name spelling of each model name (hyphens read better in a preset name).
_MODELS = {"resnet18": "resnet18", "resnet110": "resnet110", "wrn28-10": "wrn28_10"}
_DATASETS = {"cifar10": dict(dataset="cifar10", cutout_length=16), "cifar100": dict(dataset="cifar100", cutout_length=8)}
_SALIENCY_SUFFIX = {"lowres": "lowres", "early": "early", "lowres-early": "lowres+early"}
# (dataset, model, methods): the rows of the papers' tables (see the module docstring).
_TABLES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("cifar10", "resnet18", tuple(METHODS)),
    ("cifar10", "resnet110", ("cutout", "keepcutout")),
    (
        "cifar10",
        "wrn28-10",
        ("cutout", "keepcutout", "autoaugment", "keepautoaugment", "gridmask", "augmix", "augmix_jsd", "attentive_cutmix"),
    ),
    ("cifar100", "resnet18", ("cutout", "keepcutout")),
)
# Saliency-suffixed rows: the Keep methods of KeepAugment's tables (others take --saliency).
_SUFFIXED = ("keepcutout", "keepautoaugment")

# The quick CPU set-up: the small net on a class-balanced subset, a few epochs. Sized so the
# whole run (data loading, training, evaluation, pictures) takes about a minute on 2 cores.
_QUICK_SETUP: dict[str, Any] = dict(
    dataset="cifar10",
    model="small",
    epochs=4,
    batch_size=64,
    lr=0.05,
    weight_decay=5e-4,
    warmup_epochs=0.5,
    train_subset=2000,
    test_subset=1000,
    log_every=5,
    saliency="lowres",
)


# UDA's CIFAR-10 GPU recipe (see the module docstring and keepmix.train.uda).
_UDA_SETUP: dict[str, Any] = dict(
    dataset="cifar10",
    model="wrn28_2",
    method="none",
    batch_size=64,
    semi_mu=5,
    lr=0.03,
    momentum=0.9,
    nesterov=True,
    weight_decay=5e-4,
    warmup_epochs=0.0,
    min_lr=0.03 * 0.004,
    crop_padding=4,
    flip=True,
    uda_tsa="none",
    uda_temperature=0.4,
    uda_threshold=0.8,
    uda_weight=1.0,
    keep_quantile=0.6,
    keep_paste_size=16,
    saliency="full",
)
_UDA_STEPS = 500_000
_UDA_LABELS = (4000, 2500)
_UDA_AUGMENTS = ("randaugment", "keeprandaugment")


def _uda_presets() -> dict[str, dict[str, Any]]:
    presets: dict[str, dict[str, Any]] = {}
    for labels in _UDA_LABELS:
        steps_per_epoch = labels // _UDA_SETUP["batch_size"]
        epochs = -(-_UDA_STEPS // steps_per_epoch)
        every = max(1, epochs // 160)  # about 160 evaluations and checkpoints per run
        for aug in _UDA_AUGMENTS:
            name = f"cifar10-wrn28-2-uda-{aug}-{labels}"
            presets[name] = dict(
                _UDA_SETUP, semi_labels=labels, uda_augment=aug, epochs=epochs, eval_every=every, checkpoint_every=every, name=name
            )
    for aug in _UDA_AUGMENTS:
        name = f"cifar10-small-uda-{aug}-quick"
        presets[name] = dict(
            _UDA_SETUP,
            model="small",
            semi_labels=1000,
            batch_size=32,
            semi_mu=2,
            epochs=8,
            lr=0.05,
            min_lr=0.0,
            test_subset=1000,
            log_every=5,
            saliency="lowres",
            uda_augment=aug,
            name=name,
        )
    return presets


def _build() -> dict[str, dict[str, Any]]:
    presets: dict[str, dict[str, Any]] = {}
    for ds, mname, methods in _TABLES:
        for method in methods:
            base = _RECURSIVEMIX_SETUP if "recursivemix" in method else _KEEP_SETUP
            name = f"{ds}-{mname}-{method}"
            fields = dict(base, **_DATASETS[ds], **_METHOD_SETUP.get(method, {}), model=_MODELS[mname], method=method, name=name)
            presets[name] = fields
            if method in _SUFFIXED:
                for suffix, mode in _SALIENCY_SUFFIX.items():
                    presets[f"{name}-{suffix}"] = dict(fields, name=f"{name}-{suffix}", saliency=mode, early_head="early" in mode)
    for method in METHODS:
        name = f"cifar10-small-{method}-quick"
        presets[name] = dict(_QUICK_SETUP, **_METHOD_SETUP.get(method, {}), method=method, name=name)
    presets.update(_uda_presets())
    return presets


#: Preset name -> the fields it sets (every other field keeps the TrainConfig default).
PRESETS: dict[str, dict[str, Any]] = _build()


def preset_names(pattern: str | None = None) -> list[str]:
    """Preset names, sorted; ``pattern`` keeps those containing it, or matching it as a glob."""
    import fnmatch

    names = sorted(PRESETS)
    if not pattern:
        return names
    return [n for n in names if pattern in n or fnmatch.fnmatchcase(n, pattern)]


def check_preset_name(name: str) -> None:
    """Raise :class:`ConfigError` (with the closest names) unless ``name`` is a preset."""
    if name not in PRESETS:
        import difflib

        close = difflib.get_close_matches(name, PRESETS, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown preset {name!r}.{hint} `keepmix train --list-presets` lists them all.")


def get_preset(name: str, **overrides: Any) -> TrainConfig:
    """The validated config of preset ``name`` with ``overrides`` applied on top."""
    check_preset_name(name)
    return config_from_dict({**PRESETS[name], **overrides}, where="overrides")


def describe_preset(name: str) -> str:
    """One line: model, method, epochs, then the other fields the preset sets that differ from the defaults."""
    default = TrainConfig().to_dict()
    p = {**default, **PRESETS[name]}
    fields = {k: p[k] for k in ("dataset", "model", "method", "epochs")}
    fields.update({k: v for k, v in PRESETS[name].items() if k not in fields and k != "name" and default.get(k) != v})
    return ", ".join(f"{k}={v}" for k, v in fields.items())
