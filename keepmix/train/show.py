"""Pictures of what the methods do (``keepmix show`` and the grid at the end of a run).

The ops are built exactly as the trainer builds them (by their entries in
:mod:`keepmix.train.registry`) and drawn with :func:`keepmix.viz.save_method_grid`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from keepmix.base import Op
from keepmix.train.config import ConfigError, TrainConfig, early_head_kwargs
from keepmix.train.registry import build_method

__all__ = ["DEFAULT_SHOW_METHODS", "BASELINE_SHOW_METHODS", "method_ops", "grid_ops", "show", "save_run_grid"]

DEFAULT_SHOW_METHODS = ("cutout", "keepcutout", "cutmix", "keepcutmix", "autoaugment", "keepautoaugment", "recursivemix")
#: The methods KeepAugment's Table 5 and the mixing libraries compare against, one column each
#: (``keepmix show --methods gridmask augmix attentive_cutmix resizemix keepresizemix saliencymix
#: saliencymix_gradient fmix``). GridMask and FMix change pixel masks, not boxes, and Attentive
#: CutMix pastes grid cells: their columns draw no boxes.
BASELINE_SHOW_METHODS = (
    "gridmask",
    "augmix",
    "attentive_cutmix",
    "resizemix",
    "keepresizemix",
    "saliencymix",
    "saliencymix_gradient",
    "fmix",
)


def method_ops(
    config: TrainConfig, methods: Sequence[str], model: nn.Module, num_classes: int, mean: Sequence[float], std: Sequence[float]
) -> dict[str, Op]:
    """Method name -> the op the trainer would run for it (:attr:`Method.op`), with
    ``config``'s settings, as its registry entry pictures it (``MethodEntry.picture``: CutMix,
    KeepCutMix, SaliencyMix and GridMask mix / mask every image, SaliencyMix keeps its
    spectral map); ``none`` (no op) is left out. Attentive CutMix's teacher is
    ``config.teacher_run`` when set, else ``model`` itself. ``augmix_jsd`` shows its AugMix op
    (one of the two views it trains on)."""
    from keepmix.train.registry import get_entry

    ops: dict[str, Op] = {}
    for name in methods:
        entry = get_entry(name)
        fields = dict(config.to_dict(), method=name)
        if "early" in config.saliency and not config.early_head:
            fields["saliency"] = "full"
        teacher = model if "teacher_run" in entry.options and not config.teacher_run else None
        op = build_method(TrainConfig(**fields), model, num_classes, mean, std, teacher=teacher).op
        if op is None:
            continue
        ops[name] = entry.picture(op) if entry.picture is not None else op
    return ops


def grid_ops(ops: Mapping[str, Op]) -> dict[str, Op]:
    """The columns of a method grid: ``ops``, except that a plain policy shown next to its
    Keep counterpart (the registry's ``counterpart``: ``autoaugment`` and ``keepautoaugment``,
    ``randaugment`` and ``keeprandaugment``) is drawn as :class:`keepmix.viz.InnerTransform`
    of the Keep op.

    Every column of :func:`keepmix.viz.save_method_grid` starts from the same generator
    state, but a KeepPaste draws its kept boxes before its policy's params, so the plain
    policy would draw other sub-policies. The InnerTransform column applies the plain policy
    with exactly the params the Keep column's policy drew: the two columns show the same
    policy draw and differ only inside the kept box.
    """
    from keepmix.keep import KeepPaste
    from keepmix.train.registry import METHOD_REGISTRY
    from keepmix.viz import InnerTransform

    out = dict(ops)
    for name, op in ops.items():
        entry = METHOD_REGISTRY.get(name)
        keep = ops.get(entry.counterpart) if entry is not None and entry.counterpart else None
        if isinstance(keep, KeepPaste) and type(keep.inner) is type(op):
            out[name] = InnerTransform(keep)
    return out


def show(
    methods: Sequence[str] | None = None,
    run: str | Path | None = None,
    dataset: str = "cifar10",
    data_dir: str = "",
    model: str = "small",
    num_images: int = 8,
    seed: int = 0,
    out: str | Path = "keepmix-show.png",
    device: str = "cpu",
) -> Path:
    """Write the method grid of ``num_images`` test images to ``out`` and return its path.

    With ``run`` the model (for the saliency), dataset and method options come from that run's
    checkpoint; otherwise a freshly initialised ``model`` gives the saliency.
    """
    from keepmix.models import build_model
    from keepmix.train.checkpoint import load_checkpoint, load_trained_model
    from keepmix.train.data import load_data
    from keepmix.viz import save_method_grid

    if num_images < 1:
        raise ConfigError(f"num_images must be >= 1, got {num_images}")
    _check_device(device)
    state = None
    if run is not None:
        state = load_checkpoint(run)
        config = TrainConfig(**state["config"])
    else:
        config = TrainConfig(dataset=dataset, data_dir=data_dir, model=model, seed=seed)
    config = config.replace(train_subset=0, test_subset=0)
    data = load_data(config)
    if run is not None:
        net, _ = load_trained_model(run, len(data.classes))
    else:
        net = build_model(config.model, num_classes=len(data.classes), early_head=config.early_head, **early_head_kwargs(config))
    net = net.to(device).eval()
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(data.test.labels), generator=g)[:num_images]
    images, labels = data.test.images[pick].to(device), data.test.labels[pick].to(device)
    ops = grid_ops(method_ops(config, list(methods or DEFAULT_SHOW_METHODS), net, len(data.classes), data.mean, data.std))
    grid = save_method_grid(
        images,
        labels,
        ops,
        out,
        model=net,
        mean=data.mean,
        std=data.std,
        max_images=num_images,
        generator=torch.Generator(device=images.device).manual_seed(seed),
        class_names=data.classes,
        untrained=state is None,
    )
    return Path(grid.path)


def _check_device(device: str) -> None:
    """A one-line ConfigError for a device this machine does not have (``--device cuda`` without a GPU)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {device!r} is not a device: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA GPU is available here (torch.cuda.is_available() is False); use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: there are only {torch.cuda.device_count()} GPUs (cuda:0 ..)")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device}: keepmix show runs on cpu or cuda")


def _one_per_class(labels: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` test indices taken round-robin over the classes (the first image of
    each class, then the second, ...), so the picture shows several classes, not the first
    ``n`` images of a set sorted by class."""
    labels = labels.cpu()
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    first = torch.searchsorted(sorted_labels, sorted_labels, right=False)
    rank = torch.arange(len(labels)) - first  # position within its class
    key = rank * (int(labels.max()) + 1) + sorted_labels
    return order[torch.argsort(key, stable=True)][: min(n, len(labels))]


def _run_saliency(cfg: TrainConfig, model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, str]:
    """The saliency map as the run computes it (its ``saliency`` mode: a lowres run's map is
    taken at 1 / ``saliency_downscale`` of the resolution and upsampled) and the caption saying
    so; the full-resolution map for a run whose method takes none (or the uniform control)."""
    from keepmix.saliency import Saliency
    from keepmix.train.methods import build_saliency
    from keepmix.train.registry import get_entry

    full = "saliency: max over channels of |d label logit / d input|"
    if not get_entry(cfg.method).saliency or cfg.saliency == "uniform":
        return Saliency(model)(x, labels).detach(), full + " at full resolution (the trained model's)"
    where = f"at 1/{cfg.saliency_downscale} resolution, upsampled" if "lowres" in cfg.saliency else "at full resolution"
    head = " of the early head" if "early" in cfg.saliency else ""
    return build_saliency(cfg, model)(x, labels).detach(), f"{full}{head} {where}, as this run ({cfg.saliency}) computes it"


def save_run_grid(trainer: Any, out: str | Path, num_images: int = 8) -> Path:
    """The end-of-run grid: the run's method (and its plain / Keep counterpart) on test images,
    with the trained model's saliency as the run computes it (see :func:`_run_saliency`)."""
    from keepmix.train.registry import get_entry
    from keepmix.viz import save_method_grid

    cfg = trainer.config
    entry = get_entry(cfg.method)
    pair = [entry.counterpart, cfg.method] if entry.saliency else [cfg.method, entry.counterpart]  # the plain one first
    methods = [x for x in dict.fromkeys(pair) if x and x != "none"] or ["cutout", "keepcutout"]
    model = trainer.model
    was_training = model.training
    model.eval()
    try:
        test = trainer.data.test
        pick = _one_per_class(test.labels, num_images)
        n = len(pick)
        images, labels = test.images[pick].to(trainer.device), test.labels[pick].to(trainer.device)
        ops = grid_ops(method_ops(cfg, methods, model, trainer.num_classes, trainer.data.mean, trainer.data.std))
        mean = torch.tensor(trainer.data.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(trainer.data.std, device=images.device).view(1, -1, 1, 1)
        saliency, note = _run_saliency(cfg, model, (images.float() / 255.0 - mean) / std, labels)
        grid = save_method_grid(
            images,
            labels,
            ops,
            out,
            saliency=saliency,
            saliency_note=note,
            mean=trainer.data.mean,
            std=trainer.data.std,
            max_images=n,
            generator=torch.Generator(device=trainer.device).manual_seed(cfg.seed),
            class_names=trainer.data.classes,
            title=f"{cfg.name}: test images after training",
        )
    finally:
        model.train(was_training)
    return Path(grid.path)
