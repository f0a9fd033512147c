"""The parts a training run is assembled from, one set-up function each.

:class:`keepmix.train.loop.Trainer` calls them in this order (``benchmarks/`` reuse them)::

    resume_state      the checkpoint to resume, the config to run (config.yaml's edits checked)
    setup_data        the dataset (and the semi-supervised split), the loader, steps per epoch
    setup_model       the model on its device, mixed precision, memory format
    setup_method      the method from its registry entry, checked on the data's image size
    setup_forward     the training forward (DDP, torch.compile)
    setup_step        the step strategy: supervised, or UDA
    setup_optim       optimiser, schedule, loss scaler
    setup_logging     TensorBoard (metrics.jsonl is the run directory's)

Each returns what it made; none reads a trainer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from keepmix.train.checkpoint import CheckpointError
from keepmix.train.config import ConfigError, TrainConfig, config_from_dict, early_head_kwargs

if TYPE_CHECKING:
    from keepmix.train.data import TrainData
    from keepmix.train.distributed import DistInfo
    from keepmix.train.methods import Method
    from keepmix.train.run_dir import RunDir
    from keepmix.train.steps import StepContext, StepStrategy

__all__ = [
    "ModelSetup",
    "check_model_config",
    "resume_state",
    "setup_data",
    "setup_model",
    "setup_method",
    "setup_forward",
    "setup_step",
    "setup_optim",
    "setup_logging",
    "SAFE_TO_EDIT",
    "FinishedRunError",
]

#: Fields of a run's config.yaml that an edit before ``--resume`` may change: they decide what
#: is printed, drawn or how often things are written, never what is trained.
SAFE_TO_EDIT = ("progress", "log_every", "pictures", "eval_every", "checkpoint_every", "threads")


class FinishedRunError(CheckpointError):
    """``--resume`` of a run that already finished (without more ``epochs``)."""


def check_model_config(config: TrainConfig) -> None:
    """Build the model on the meta device (no memory, no time) so that a bad ``model`` or
    early-head option fails before the data are loaded."""
    from keepmix.models import build_model

    if config.early_block and not config.early_head:
        raise ConfigError(
            f"early_block={config.early_block} places the early head, but early_head is off: add --early-head (or leave early_block at 0)"
        )
    try:
        with torch.device("meta"):
            build_model(config.model, num_classes=10, early_head=config.early_head, **early_head_kwargs(config))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model={config.model!r}: {e}") from None


def _edited_config(rd: RunDir, config: TrainConfig) -> TrainConfig:
    """The checkpoint's ``config`` with the edits of the run's config.yaml applied where safe
    (:data:`SAFE_TO_EDIT`); any other edit is refused, naming each changed field."""
    from keepmix.train.config import load_config

    if not rd.config.is_file():
        return config
    try:
        on_disk = load_config(rd.config).to_dict()
    except ConfigError as e:
        raise CheckpointError(f"{str(rd.config)!r} was edited and no longer reads as a config: {e}") from None
    saved = config.to_dict()
    changed = {k: (saved[k], v) for k, v in on_disk.items() if saved.get(k) != v}
    unsafe = [k for k in changed if k not in SAFE_TO_EDIT]
    if unsafe:
        what = "; ".join(f"{k}: {changed[k][0]!r} in the checkpoint, {changed[k][1]!r} in config.yaml" for k in unsafe)
        hint = " (to train longer, give --epochs N with --resume)" if "epochs" in unsafe else ""
        raise CheckpointError(
            f"{str(rd.config)!r} was edited since the checkpoint was written ({what}): a resumed run keeps the config it "
            f"started with{hint}; undo the edit, or start a new run with the new config. Only {', '.join(SAFE_TO_EDIT)} may be edited"
        )
    return config.replace(**{k: v for k, (_, v) in changed.items()}) if changed else config


def resume_state(resume: str | Path, epochs: int | None) -> tuple[dict[str, Any], TrainConfig, RunDir, dict | None]:
    """Read the checkpoint to resume; check that it belongs to this run directory and can go on.

    Returns the state, the config to run (config.yaml's safe edits applied, ``epochs``
    changed when extending) and the schedule change this makes (None when the plan stays).
    """
    from keepmix.train.checkpoint import REQUIRED_KEYS, RESUME_KEYS, load_checkpoint
    from keepmix.train.run_dir import RunDir

    state = load_checkpoint(resume, require=REQUIRED_KEYS + RESUME_KEYS)
    rd = RunDir.of(resume)
    ck_id, dir_id = state.get("run_id"), rd.read_run_id()
    if ck_id is not None and dir_id is not None and ck_id != dir_id:
        raise CheckpointError(
            f"the checkpoint in {str(rd)!r} belongs to run {ck_id}, but this folder is run {dir_id}: it was copied "
            "from another run. Resume that run in its own folder, or copy the whole run folder, not only checkpoint.pt"
        )
    if ck_id is not None and dir_id is None and (rd.metrics.is_file() or rd.config.is_file()):
        raise CheckpointError(
            f"{str(rd)!r} holds the records of another run (metrics.jsonl / config.yaml without a run_id) next to a "
            f"checkpoint of run {ck_id}: resuming would splice the two. Resume run {ck_id} in its own folder"
        )
    try:
        config = config_from_dict(state["config"], where=f"checkpoint {resume}")
    except ConfigError as e:
        raise CheckpointError(f"the checkpoint's config cannot run here: {e}") from None
    config = _edited_config(rd, config)
    done = int(state["epoch"])
    change = None
    if epochs is not None and epochs != config.epochs:
        if epochs < done + (1 if state.get("step_in_epoch") else 0):
            raise ConfigError(f"epochs={epochs}: the run in {str(rd)!r} has already trained {done} epochs; give more")
        change = {"at_step": int(state["global_step"]), "at_epoch": done, "epochs_before": config.epochs, "epochs_after": epochs}
        config = config.replace(epochs=epochs)
    elif state.get("finished"):
        raise FinishedRunError(
            f"the run in {str(rd)!r} already finished all {config.epochs} epochs; to train it longer give a larger "
            f"--epochs with --resume (the schedule is re-planned), or start a new run"
        )
    return state, config, rd, change


def setup_data(config: TrainConfig, dist: DistInfo, device: torch.device, data: TrainData | None = None):
    """``(data, unlabelled or None, loader, steps per epoch)``: ``data`` (or ``config.dataset``
    loaded), for a semi-supervised run the labelled subset (the loader trains on it) and the
    unlabelled images."""
    from keepmix.train.data import load_data, steps_per_epoch, train_loader

    data = data if data is not None else load_data(config, dist)
    unlabelled = None
    if config.semi_labels:
        from keepmix.train.uda import split_semi_data

        data, unlabelled = split_semi_data(data, config)
    loader = train_loader(data, config, dist, device)
    return data, unlabelled, loader, steps_per_epoch(loader, config)


@dataclass
class ModelSetup:
    """The model on its device and how it runs: mixed precision (``use_amp``, ``amp_dtype``,
    ``amp_note`` to log) and memory format."""

    model: nn.Module
    use_amp: bool
    amp_dtype: torch.dtype
    amp_note: str | None
    channels_last: bool
    memory_format: torch.memory_format

    def autocast(self) -> contextlib.AbstractContextManager:
        """The mixed-precision context of this run (a no-op when AMP is off)."""
        if not self.use_amp:
            return contextlib.nullcontext()
        return torch.autocast(next(self.model.parameters()).device.type, dtype=self.amp_dtype)


def setup_model(config: TrainConfig, num_classes: int, device: torch.device) -> ModelSetup:
    """The model of ``config.model`` (seeded by ``config.seed``: the same weights on every rank)."""
    from keepmix.models import build_model

    torch.manual_seed(config.seed)
    model = build_model(config.model, num_classes=num_classes, early_head=config.early_head, **early_head_kwargs(config))
    use_amp = config.amp == "on" or (config.amp == "auto" and device.type == "cuda")
    # float16 autocast on the CPU is many times slower than float32 and needs loss scaling;
    # bfloat16 is the CPU's mixed-precision type.
    on_cpu = device.type == "cpu"
    amp_dtype = torch.bfloat16 if config.amp_dtype == "bfloat16" or on_cpu else torch.float16
    slow = use_amp and on_cpu and config.amp_dtype == "float16"
    note = "amp on the CPU runs in bfloat16 (float16 autocast is slow on the CPU)" if slow else None
    channels_last = config.channels_last == "on" or (config.channels_last == "auto" and device.type == "cuda")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    # Module.to takes memory_format (it parses its arguments as Tensor.to does); its stubs' overloads omit it.
    model = model.to(device, memory_format=memory_format)  # type: ignore[call-overload]
    return ModelSetup(model, use_amp, amp_dtype, note, channels_last, memory_format)


def setup_method(
    config: TrainConfig, model: nn.Module, data: TrainData, autocast: Callable[[], contextlib.AbstractContextManager], device: torch.device
) -> Method:
    """The method of ``config.method`` from its registry entry, checked once on a dummy batch
    of the data's image size: an option the images cannot take is a one-line ConfigError now."""
    from keepmix.train.registry import build_method, check_method

    num_classes = len(data.classes)
    method = build_method(config, model, num_classes, data.mean, data.std, autocast)
    method.loop_calls_loss = True  # a method's own loss (AugMix's JSD) is used as such
    check_method(method.op, config, tuple(data.train.images.shape[1:]), num_classes, device)
    return method


def setup_forward(model: nn.Module, config: TrainConfig, dist: DistInfo, device: torch.device) -> nn.Module:
    """The training forward (:class:`keepmix.train.loop.TrainForward`), under DDP and torch.compile when asked."""
    from keepmix.train.steps import TrainForward

    forward: nn.Module = TrainForward(model, early=config.early_head and config.early_loss_weight > 0)
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        forward = DDP(forward, device_ids=[device] if device.type == "cuda" else None)
    if config.compile:
        forward = cast(nn.Module, torch.compile(forward))  # a Module compiles to an OptimizedModule (an nn.Module)
    return forward


def setup_step(ctx: StepContext, unlabelled: Tensor | None, model: nn.Module, image_shape: tuple[int, ...]) -> StepStrategy:
    """The step strategy: :class:`~keepmix.train.steps.SupervisedStep`, or UDA's when there are
    unlabelled images (its A checked on the data's image size, as the method is)."""
    from keepmix.train.steps import SupervisedStep

    if unlabelled is None:
        return SupervisedStep()
    from keepmix.train.registry import check_method
    from keepmix.train.uda import UDAStep

    step = UDAStep(ctx, unlabelled, model)
    check_method(step.op, ctx.config, image_shape, ctx.num_classes, ctx.device, what="uda_augment")
    return step


def setup_optim(model: nn.Module, config: TrainConfig, steps_per_epoch: int, device: torch.device, scaled: bool):
    """``(optimizer, scheduler, scaler)``; ``scaled``: float16 mixed precision (loss scaling on)."""
    from keepmix.train.optim import build_optimizer, build_scheduler

    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=scaled)
    return optimizer, scheduler, scaler


def setup_logging(files: RunDir, tensorboard: bool | None, resumed: bool, global_step: int, is_main: bool):
    """The TensorBoard writer or None. ``tensorboard`` None: as the run was (a resumed run that
    wrote event files goes on writing them)."""
    if tensorboard is None:
        tensorboard = resumed and files.tensorboard.is_dir()
    if not (tensorboard and is_main):
        return None
    from keepmix.train.tensorboard import TensorBoardLog

    # Events past the checkpoint (written before an interruption) are dropped, as
    # metrics.jsonl's records past it are: the resumed run writes those steps again.
    return TensorBoardLog(files.tensorboard, purge_step=global_step + 1 if resumed else None)
