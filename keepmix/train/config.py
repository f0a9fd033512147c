"""The run configuration: one flat dataclass, YAML load/save, and command-line overrides.

Flat on purpose: every field is one ``--flag`` on the command line and one line in the run's
``config.yaml``, so "any preset field overridable from the command line" needs no special
cases and the saved file is the complete record of a run.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keepmix.train.registry import METHOD_REGISTRY, UDA_AUGMENTS

__all__ = ["TrainConfig", "ConfigError", "METHODS", "SALIENCY_METHODS", "SALIENCY_MODES", "load_config", "save_config", "config_from_dict"]


class ConfigError(ValueError):
    """A configuration that cannot run: unknown field, bad value, unknown preset."""


#: Augmentation methods the trainer offers (applied after crop + flip): the registry's entries.
METHODS = tuple(METHOD_REGISTRY)

#: Methods that compute a saliency map of the training model (the Keep variants and
#: SaliencyMix with the gradient map): they read ``saliency`` / ``saliency_downscale``.
SALIENCY_METHODS = tuple(n for n, e in METHOD_REGISTRY.items() if e.saliency)

#: How Keep* methods compute the saliency map (KeepAugment's three variants); "uniform" is the ablation control (a
#: constant map: the quantile rule's choice of positions without any image content).
SALIENCY_MODES = ("full", "lowres", "early", "lowres+early", "uniform")


def _f(default: Any, help: str, choices: tuple | None = None) -> Any:
    meta: dict[str, Any] = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every option of a training run. Presets fill it; the command line overrides any field."""

    # --- run -------------------------------------------------------------------------------
    name: str = _f("run", "run name; the run directory is <out_dir>/<name>-<timestamp>")
    out_dir: str = _f("runs", "directory under which run directories are created")
    seed: int = _f(0, "random seed (model init, data order, augmentation draws)")
    device: str = _f("auto", "device to train on: auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    threads: int = _f(0, "CPU threads for torch (0 = leave torch's default)")
    # --- data ------------------------------------------------------------------------------
    dataset: str = _f(
        "cifar10",
        "dataset name (cifar10, cifar100) or a path to an ImageFolder directory / .tar.gz; "
        "for cifar10 the KEEPMIX_CIFAR10_JPEG environment variable may point at a local copy",
    )
    data_dir: str = _f(
        "", "where named datasets (cifar10, cifar100) are downloaded / looked for; empty = $KEEPMIX_DATA_DIR or ~/.cache/keepmix/data"
    )
    train_subset: int = _f(0, "train on a class-balanced subset of this many images (0 = all)")
    test_subset: int = _f(0, "evaluate on a class-balanced subset of this many test images (0 = all)")
    crop_padding: int = _f(4, "random-crop padding in pixels before the method (0 = no crop)")
    flip: bool = _f(True, "random horizontal flip before the method")
    # --- model -----------------------------------------------------------------------------
    model: str = _f("resnet18", "network: resnet18, preact_resnet18, resnet20, resnet56, resnet110, wrn28_10, wrn28_2, small")
    early_head: bool = _f(False, "add the early-exit head (needed by saliency=early; trained jointly)")
    early_loss_weight: float = _f(0.3, "weight of the early head's loss in the training loss")
    early_block: int = _f(
        0,
        "put the early head after this many blocks of the first stage "
        "(0 = after the whole stage, the paper's placement; ResNets and WRN only)",
    )
    # --- method ----------------------------------------------------------------------------
    method: str = _f("none", "augmentation method applied after crop + flip", METHODS)
    saliency: str = _f(
        "full",
        "saliency for Keep* methods: full, lowres (downscale first), early (early head), lowres+early, "
        "or uniform (a constant map, no saliency pass: an ablation control)",
        SALIENCY_MODES,
    )
    saliency_downscale: int = _f(2, "downscale factor of the low-resolution saliency")
    keep_quantile: float = _f(0.6, "KeepAugment threshold: quantile q of the region scores")
    keep_score: str = _f("sum", "KeepAugment's region score: sum (the paper's box sum) or mean (box sum over box area)", ("sum", "mean"))
    whole_boxes: bool = _f(
        False,
        "Cutout / KeepCutout boxes only where they fit whole (no clipping): the same area cut, so "
        "Cutout-inside is KeepCutout-inside's exact control",
    )
    keep_paste_size: int = _f(16, "side of the region KeepAutoAugment/KeepRandAugment paste back from the clean image")
    cutout_length: int = _f(16, "Cutout square side in pixels (CIFAR-10: 16, CIFAR-100: 8)")
    erasing_p: float = _f(0.5, "Random Erasing probability per image")
    erasing_value: str = _f(
        "random_pixel",
        "Random Erasing fill: zero (the mean after normalisation), random_box, random_pixel (the paper's)",
        ("zero", "random_box", "random_pixel"),
    )
    mixup_alpha: float = _f(1.0, "Mixup Beta(a, a) parameter")
    cutmix_alpha: float = _f(1.0, "CutMix Beta(b, b) parameter")
    cutmix_p: float = _f(0.5, "CutMix probability (CIFAR 0.5, ImageNet 1.0)")
    cutmix_label_weight: str = _f(
        "area", "KeepCutMix label weight of the patch: area (CutMix's rule) or saliency (its saliency share)", ("area", "saliency")
    )
    autoaugment_policy: str = _f("cifar10", "AutoAugment policy", ("cifar10", "svhn", "imagenet"))
    randaugment_n: int = _f(2, "RandAugment: number of ops per image")
    randaugment_m: int = _f(9, "RandAugment: magnitude (0..30 scale)")
    recursivemix_alpha: float = _f(0.5, "RecursiveMix: paste area ratio r ~ U(0, alpha)")
    recursivemix_omega: float = _f(0.5, "RecursiveMix: consistency loss weight omega")
    gridmask_d_min: int = _f(14, "GridMask: smallest unit size d in pixels (d is drawn from d_min .. d_max - 1 per image)")
    gridmask_d_max: int = _f(32, "GridMask: unit sizes are below this (pixels; ImageNet's official (96, 224) scaled to 32 px)")
    gridmask_ratio: float = _f(0.6, "GridMask: stripe width over unit size r in (0, 1); a unit keeps 1 - (1 - r)^2")
    gridmask_rotate: float = _f(0.0, "GridMask: the grid's angle is drawn in [0, rotate) degrees per image (0 = no rotation)")
    gridmask_mode: int = _f(1, "GridMask: 1 drops the squares (GridMask), 0 drops the stripes (revised GridMask)")
    gridmask_p: float = _f(0.8, "GridMask: probability P that an image is masked (the schedule's upper bound)")
    gridmask_ramp: float = _f(
        0.8,
        "GridMask: p rises linearly from 0 to P over this fraction of the epochs (official: 240 of 300 epochs = 0.8; 0 = P from the start)",
    )
    augmix_severity: int = _f(3, "AugMix: op severity in [1, 10]")
    augmix_width: int = _f(3, "AugMix: number of chains k")
    augmix_depth: int = _f(-1, "AugMix: ops per chain (>= 1), or -1 for a random depth in 1..3 per chain and image")
    augmix_alpha: float = _f(1.0, "AugMix: Dirichlet (chain weights) and Beta (skip weight) concentration")
    augmix_all_ops: bool = _f(False, "AugMix: add color, contrast, brightness, sharpness (torchvision's default; off in the paper)")
    augmix_jsd_weight: float = _f(12.0, "augmix_jsd: weight of the Jensen-Shannon consistency term (paper: 12)")
    teacher_run: str = _f(
        "",
        "attentive_cutmix: run directory (or checkpoint) of a finished keepmix run on the same dataset whose trained model is the teacher",
    )
    attentive_top_k: int = _f(6, "attentive_cutmix: number of teacher grid cells N pasted per image (paper: 6)")
    resizemix_scale_min: float = _f(0.1, "ResizeMix: smallest scale tau of the pasted partner's side")
    resizemix_scale_max: float = _f(0.8, "ResizeMix: largest scale tau of the pasted partner's side")
    fmix_alpha: float = _f(1.0, "FMix: Beta(a, a) parameter of the mask share lambda")
    fmix_decay_power: float = _f(3.0, "FMix: decay power of the Fourier spectrum (larger = smoother masks)")
    # --- semi-supervised: UDA (KeepAugment section 4.3; defaults: google-research/uda's CIFAR-10 GPU recipe, see keepmix.train.uda)
    semi_labels: int = _f(0, "semi-supervised UDA: keep the labels of this many training images, the rest unlabelled (0 = supervised)")
    semi_balanced: bool = _f(True, "semi_labels: the same number of labels per class (semi_labels a multiple of the classes)")
    semi_mu: int = _f(5, "semi-supervised: the unlabelled batch is semi_mu x batch_size (UDA's unsup_ratio; CIFAR-10: 5)")
    uda_augment: str = _f(
        "randaugment",
        "UDA's augmentation A of the unlabelled batch (keeprandaugment: saliency from the max logit)",
        tuple(UDA_AUGMENTS),
    )
    uda_tsa: str = _f(
        "none", "training-signal annealing of the supervised loss (UDA's CIFAR-10 GPU recipe: none)", ("none", "linear", "log", "exp")
    )
    uda_temperature: float = _f(0.4, "UDA: softmax temperature that sharpens the target p(y | x) (1 = no sharpening)")
    uda_threshold: float = _f(0.8, "UDA: confidence threshold in [0, 1]: the consistency term counts where max p(y | x) > it (0 = all)")
    uda_weight: float = _f(1.0, "UDA: weight of the consistency term")
    # --- optimisation ----------------------------------------------------------------------
    epochs: int = _f(300, "number of training epochs")
    batch_size: int = _f(128, "batch size per process (per GPU under torchrun)")
    lr: float = _f(0.1, "peak learning rate (reached after warm-up)")
    momentum: float = _f(0.9, "SGD momentum")
    nesterov: bool = _f(False, "use Nesterov momentum")
    weight_decay: float = _f(5e-4, "weight decay (not applied to BatchNorm and bias parameters when no_bn_decay)")
    no_bn_decay: bool = _f(False, "exclude BatchNorm weights and biases from weight decay")
    warmup_epochs: float = _f(0.0, "linear learning-rate warm-up length in epochs (may be fractional)")
    min_lr: float = _f(0.0, "learning rate at the end of the cosine decay")
    label_smoothing: float = _f(0.0, "label smoothing epsilon of the cross-entropy")
    # --- speed -----------------------------------------------------------------------------
    amp: str = _f("auto", "mixed precision: auto (on for CUDA), on, off", ("auto", "on", "off"))
    amp_dtype: str = _f("float16", "mixed-precision dtype: float16 (with loss scaling) or bfloat16", ("float16", "bfloat16"))
    channels_last: str = _f("auto", "channels_last memory format: auto (on for CUDA), on, off", ("auto", "on", "off"))
    compile: bool = _f(False, "wrap the model with torch.compile")
    # --- bookkeeping -----------------------------------------------------------------------
    eval_every: int = _f(1, "evaluate on the test set every N epochs (and always after the last)")
    checkpoint_every: int = _f(1, "write the checkpoint every N epochs (and always after the last / on a signal)")
    log_every: int = _f(20, "update the progress bar and check the loss for NaN every N steps")
    max_steps_per_epoch: int = _f(0, "cap the steps per epoch (0 = full epoch); for quick runs")
    progress: bool = _f(True, "show a progress bar per epoch")
    pictures: bool = _f(True, "write the method grid and the accuracy curve into the run directory")

    def __post_init__(self) -> None:
        self.validate()

    # -- validation -------------------------------------------------------------------------
    def validate(self) -> TrainConfig:
        """Raise :class:`ConfigError` naming the first field with a bad value."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            want = _base_type(f.type)
            if want is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
                setattr(self, f.name, v)
            if want is bool and not isinstance(v, bool) or want is not bool and isinstance(v, bool) or not isinstance(v, want):
                raise ConfigError(f"{f.name} must be {want.__name__}, got {v!r} ({type(v).__name__})")
            if want is float and not math.isfinite(typing.cast(float, v)):  # a float: isinstance(v, want) above
                raise ConfigError(f"{f.name} must be a finite number, got {v!r}")
            choices = f.metadata.get("choices")
            if choices is not None and v not in choices:
                raise ConfigError(f"{f.name} must be one of {', '.join(choices)}; got {v!r}")

        def need(cond: bool, name: str, what: str) -> None:
            if not cond:
                raise ConfigError(f"{name} must be {what}, got {getattr(self, name)!r}")

        need(bool(self.name) and "/" not in self.name, "name", "a non-empty name without '/'")
        for n in (
            "epochs",
            "batch_size",
            "eval_every",
            "checkpoint_every",
            "log_every",
            "saliency_downscale",
            "keep_paste_size",
            "cutout_length",
            "randaugment_n",
        ):
            need(getattr(self, n) >= 1, n, ">= 1")
        for n in (
            "train_subset",
            "test_subset",
            "crop_padding",
            "threads",
            "max_steps_per_epoch",
            "randaugment_m",
            "early_block",
            "lr",
            "weight_decay",
            "warmup_epochs",
            "min_lr",
            "momentum",
            "early_loss_weight",
            "recursivemix_omega",
        ):
            need(getattr(self, n) >= 0, n, ">= 0")
        need(self.lr > 0, "lr", "> 0")
        need(self.min_lr <= self.lr, "min_lr", f"<= lr ({self.lr})")
        need(self.momentum < 1, "momentum", "in [0, 1)")
        need(0 <= self.label_smoothing < 1, "label_smoothing", "in [0, 1)")
        need(0 < self.keep_quantile < 1, "keep_quantile", "strictly between 0 and 1")
        need(0 <= self.erasing_p <= 1, "erasing_p", "a probability in [0, 1]")
        need(0 <= self.cutmix_p <= 1, "cutmix_p", "a probability in [0, 1]")
        need(0 < self.recursivemix_alpha <= 1, "recursivemix_alpha", "in (0, 1]")
        need(self.mixup_alpha > 0, "mixup_alpha", "> 0")
        need(self.cutmix_alpha > 0, "cutmix_alpha", "> 0")
        need(self.randaugment_m <= 30, "randaugment_m", "in [0, 30]")
        need(self.warmup_epochs <= self.epochs, "warmup_epochs", f"<= epochs ({self.epochs})")
        need(1 <= self.gridmask_d_min < self.gridmask_d_max, "gridmask_d_min", f">= 1 and < gridmask_d_max ({self.gridmask_d_max})")
        need(0 < self.gridmask_ratio < 1, "gridmask_ratio", "strictly between 0 and 1")
        need(self.gridmask_mode in (0, 1), "gridmask_mode", "1 (drop the squares) or 0 (drop the stripes)")
        need(0 <= self.gridmask_rotate <= 360, "gridmask_rotate", "in [0, 360] degrees")
        need(0 <= self.gridmask_p <= 1, "gridmask_p", "a probability in [0, 1]")
        need(0 <= self.gridmask_ramp <= 1, "gridmask_ramp", "a fraction of the epochs in [0, 1]")
        need(1 <= self.augmix_severity <= 10, "augmix_severity", "in [1, 10]")
        need(self.augmix_width >= 1, "augmix_width", ">= 1")
        need(self.augmix_depth == -1 or self.augmix_depth >= 1, "augmix_depth", ">= 1, or -1 (random 1..3)")
        need(self.augmix_alpha > 0, "augmix_alpha", "> 0")
        need(self.augmix_jsd_weight >= 0, "augmix_jsd_weight", ">= 0")
        need(self.attentive_top_k >= 1, "attentive_top_k", ">= 1")
        need(
            0 < self.resizemix_scale_min <= self.resizemix_scale_max,
            "resizemix_scale_min",
            f"in (0, resizemix_scale_max = {self.resizemix_scale_max}]",
        )
        need(self.resizemix_scale_max <= 1, "resizemix_scale_max", "<= 1")
        need(self.fmix_alpha > 0, "fmix_alpha", "> 0")
        need(self.fmix_decay_power > 0, "fmix_decay_power", "> 0")
        need(self.semi_labels >= 0, "semi_labels", ">= 0 (0 = supervised)")
        need(self.semi_mu >= 1, "semi_mu", ">= 1 (the unlabelled batch is semi_mu x batch_size)")
        need(0 <= self.uda_threshold <= 1, "uda_threshold", "in [0, 1]")
        need(self.uda_temperature > 0, "uda_temperature", "> 0")
        need(self.uda_weight >= 0, "uda_weight", ">= 0")
        if self.semi_labels and UDA_AUGMENTS[self.uda_augment].saliency and "early" in self.saliency and not self.early_head:
            raise ConfigError(
                f"saliency={self.saliency!r} takes uda_augment={self.uda_augment}'s saliency through the early head: set early_head=true"
            )
        if self.nesterov and self.momentum == 0:
            raise ConfigError("nesterov needs momentum > 0")
        if self.method in SALIENCY_METHODS and "early" in self.saliency and not self.early_head:
            raise ConfigError(f"saliency={self.saliency!r} takes the saliency through the early head: set early_head=true")
        object.__setattr__(self, "_validated", self._values())
        return self

    def _values(self) -> tuple:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def validated(self) -> TrainConfig:
        """``self``, validated: :meth:`validate` runs again only when a field changed since the
        last validation (a config is validated once when it is made; a caller that changes a
        field afterwards gets it checked here)."""
        if getattr(self, "_validated", None) != self._values():
            self.validate()
        return self

    # -- conversion -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (what config.yaml and the checkpoint hold)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with some fields changed."""
        return config_from_dict({**self.to_dict(), **changes})


def _base_type(tp: Any) -> type:
    if isinstance(tp, str):  # postponed annotations
        tp = {"str": str, "int": int, "float": float, "bool": bool}[tp]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def field_types() -> dict[str, type]:
    """Field name -> its scalar type (str, int, float or bool)."""
    return {f.name: _base_type(f.type) for f in dataclasses.fields(TrainConfig)}


def field_help() -> dict[str, tuple[str, tuple | None]]:
    """Field name -> (help text, allowed choices or None)."""
    return {f.name: (f.metadata["help"], f.metadata.get("choices")) for f in dataclasses.fields(TrainConfig)}


#: Names other trainers use for a field (the spelling a user is likely to try).
_ALIASES = {
    "learning_rate": "lr",
    "base_lr": "lr",
    "wd": "weight_decay",
    "bs": "batch_size",
    "batchsize": "batch_size",
    "num_epochs": "epochs",
    "n_epochs": "epochs",
    "max_epochs": "epochs",
    "arch": "model",
    "network": "model",
    "warmup": "warmup_epochs",
    "lr_min": "min_lr",
    "workers": "threads",
    "output_dir": "out_dir",
}


def suggest_field(key: str, known: list[str]) -> str | None:
    """The field a mistyped ``key`` most likely means, or None: a known alias
    (``learning_rate`` -> ``lr``), the key's initials (``l_r``), the key without its
    separators (``batchsize``), else the closest spelling (difflib, cutoff 0.75)."""
    import difflib

    norm = key.strip().lower().replace("-", "_")
    squash = {k.replace("_", ""): k for k in known}
    initials = "".join(t[0] for t in norm.split("_") if t)
    for cand in (norm, _ALIASES.get(norm), squash.get(norm.replace("_", "")), initials if "_" in norm else None):
        if cand in known:
            return cand
    close = difflib.get_close_matches(norm, known, n=1, cutoff=0.75)
    return close[0] if close else None


def config_from_dict(values: Mapping[str, Any], where: str = "config") -> TrainConfig:
    """Build a validated config; unknown keys are an error that lists the close matches."""
    known = field_types()
    unknown = [k for k in values if k not in known]
    if unknown:
        hints = []
        for k in unknown:
            close = suggest_field(k, list(known))
            hints.append(f"{k!r}" + (f" (did you mean {close!r}?)" if close else ""))
        raise ConfigError(f"unknown option(s) in {where}: {', '.join(hints)}")
    return TrainConfig(**dict(values))


def parse_value(name: str, text: str) -> Any:
    """Parse a command-line string into the type of field ``name``."""
    tp = field_types().get(name)
    if tp is None:
        raise ConfigError(f"unknown option {name!r}")
    try:
        if tp is bool:
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
    except ValueError:
        raise ConfigError(f"{name} expects a {tp.__name__}, got {text!r}") from None
    return text


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write the config as YAML (atomically: a temporary file, then a rename)."""
    import os

    import yaml

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    os.replace(tmp, path)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The ``option: value`` mapping of a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file,
    not yet validated (its keys are checked when a config is made of it)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # parse errors from either library
        raise ConfigError(f"cannot parse config file {str(path)!r}: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of option: value, got {type(data).__name__}")
    known = field_types()
    unknown = [k for k in data if k not in known]
    if unknown:
        config_from_dict(data, where=str(path))  # raises, naming the unknown keys and their close matches
    return data


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) config file; every key must be a known field."""
    return config_from_dict(read_config_file(path), where=str(path))


def field_defaults() -> dict[str, Any]:
    """Field name -> its default (without making, or validating, a config)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(TrainConfig):
        out[f.name] = (
            f.default_factory() if f.default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING else f.default
        )
    return out


def early_head_kwargs(config: TrainConfig) -> dict:
    """Model keyword arguments for the early head's placement (none when it is the default)."""
    return {"early_block": config.early_block} if config.early_head and config.early_block else {}
