"""The training run: set-up, the step loop, evaluation, metrics, checkpoints, signals.

One step, on the batch's device::

    uint8 batch -> crop + flip -> method.prepare (policy on uint8, normalise, region/mixing op,
    saliency for Keep* variants) -> model (+ early head, + RecursiveMix consistency)
    -> soft-target cross-entropy (label smoothing) -> SGD step -> per-step lr schedule

A semi-supervised run (``semi_labels > 0``) trains the loader on the labelled subset, and its
forward and loss come from :class:`keepmix.train.uda.SemiSupervised` (a labelled batch plus an
unlabelled one, the UDA loss); the backward, the update and the bookkeeping stay here.

The loop (:meth:`Trainer.run`) reads top to bottom: one step, the end of an epoch when the
step finished one, then the single place where a stop request (SIGINT, SIGTERM,
:meth:`Trainer.request_stop`) is honoured: a checkpoint, then :class:`RunInterrupted`.

Everything random in a step draws from one ``torch.Generator`` per rank (the augmentation
stream), seeded from the run seed and the rank, and saved in every checkpoint together with
the position (epoch, step), the global RNG, the optimiser, scheduler, scaler and the method's
state (RecursiveMix history). Batches are a pure function of (seed, epoch, index)
(:meth:`keepmix.data.DeviceLoader.batch`), so the position is the whole loader state: a
resumed run continues exactly where the interrupted one stopped, and its final weights equal
an uninterrupted run's (bitwise on the CPU).

Extending a finished run (``train(None, resume=RUN, epochs=N)``, ``keepmix train --resume RUN
--epochs N``): the cosine schedule is re-planned over the new total of N epochs and taken up
at the step the run had reached, so the learning rate jumps from the old schedule's end value
(``min_lr``) to the new schedule's value at that step, and decays from there to ``min_lr`` at
the new end. This is not the run that would have been planned for N epochs from the start
(its first epochs decayed faster); each extension is recorded in ``final.json``
(``schedule_changes``) and every metrics record carries the ``planned_epochs`` it ran under.

Host syncs happen only every ``log_every`` steps (progress bar, NaN check) and at epoch end.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from keepmix.targets import SoftTargetCrossEntropy
from keepmix.train.checkpoint import REQUIRED_KEYS, RESUME_KEYS, CheckpointError, check_model_state, load_checkpoint, save_checkpoint
from keepmix.train.config import ConfigError, TrainConfig, config_from_dict, early_head_kwargs, save_config
from keepmix.train.data import TrainData, load_data, steps_per_epoch, train_loader
from keepmix.train.distributed import DistInfo, all_reduce_sum, any_rank, broadcast_object, gather_objects, init_distributed
from keepmix.train.methods import Method, StepBatch, build_method
from keepmix.train.optim import build_optimizer, build_scheduler
from keepmix.train.run_dir import RunDir, new_run_id

if TYPE_CHECKING:
    from keepmix.models.base import KeepmixModel

__all__ = ["Trainer", "train", "NonFiniteLossError", "RunInterrupted", "FinishedRunError", "TrainForward"]

# The file names, for callers that imported them from here (RunDir is the one place that spells them).
CHECKPOINT_NAME = RunDir.CHECKPOINT
METRICS_NAME = RunDir.METRICS
FINAL_NAME = RunDir.FINAL
CONFIG_NAME = RunDir.CONFIG


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite: the run stops without writing a checkpoint."""


class FinishedRunError(CheckpointError):
    """``--resume`` of a run that already finished (without more ``epochs``)."""


class RunInterrupted(Exception):
    """SIGINT/SIGTERM (or :meth:`Trainer.request_stop`): a checkpoint was written, resume from it."""

    def __init__(self, signum: int | None, checkpoint: Path | None) -> None:
        self.signum = signum
        self.checkpoint = checkpoint
        name = signal.Signals(signum).name if signum else "stop request"
        super().__init__(f"interrupted by {name}; checkpoint at {checkpoint}")


class TrainForward(nn.Module):
    """The training forward as one module, so DDP sees (and syncs) everything it runs.

    Returns ``(logits, early_logits or None, extra_loss or None)``. ``feature_loss`` (a
    function of the last feature map, e.g. RecursiveMix's consistency loss) is evaluated
    inside the forward, so its use of ``model.fc`` is part of the same DDP step.
    """

    def __init__(self, model: nn.Module, early: bool) -> None:
        super().__init__()
        self.model = model
        self.early = early

    def forward(self, x: Tensor, feature_loss: Callable[[Tensor], Tensor] | None = None):
        # nn.Module's stubs type an unknown attribute Tensor | Module: the model is one of build_model's (KeepmixModel)
        m = cast("KeepmixModel", self.model)
        early: Tensor | None
        if feature_loss is None:
            if self.early:
                logits, early = m.forward_with_early(x)
                return logits, early, None
            return m(x), None, None
        if self.early:
            feats, early = m.forward_features_with_early(x)  # one pass for both
        else:
            early, feats = None, m.forward_features(x)
        return m.classify(feats), early, feature_loss(feats)


@dataclass
class _Position:
    """Where the run is: completed epochs, batches done in the current one, global step."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0


def _check_model_config(config: TrainConfig) -> None:
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


def _resume_state(resume: str | Path, epochs: int | None) -> tuple[dict[str, Any], TrainConfig, RunDir, dict | None]:
    """Read the checkpoint to resume; check that it belongs to this run directory and can go on.

    Returns the state, the config to run (with ``epochs`` changed when extending) and the
    schedule change this makes (None when the plan stays).
    """
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


class Trainer:
    """One training run (see :func:`train`)."""

    def __init__(
        self,
        config: TrainConfig | None,
        *,
        resume: str | Path | None = None,
        epochs: int | None = None,
        data: TrainData | None = None,
        run_dir: str | Path | None = None,
        on_step: Callable[[Trainer, int], None] | None = None,
        log: Callable[[str], None] | None = None,
        tensorboard: bool | None = None,
    ) -> None:
        state: dict[str, Any] | None = None
        schedule_change = None
        if resume is not None:
            state, config, rd, schedule_change = _resume_state(resume, epochs)
            run_dir = rd.path
        elif config is None:
            raise ConfigError("give a config, or resume= a run directory")
        elif epochs is not None:
            config = config.replace(epochs=epochs)
        self.config = config = config.validate()
        self.on_step = on_step
        self._log = log
        self._stop_signal: int | None = None
        self._stop_requested = False
        self._writing = False  # inside a checkpoint write: a second signal waits for it
        self._t_start: float | None = None
        self._saved_step: int | None = None  # the global step of the last checkpoint written
        _check_model_config(config)
        self.dist: DistInfo = init_distributed(config.device)
        self.device = self.dist.device
        if config.threads:
            torch.set_num_threads(config.threads)

        # Data before anything is written: a bad path fails first.
        self.data = data if data is not None else load_data(config, self.dist)
        unlabelled = None
        if config.semi_labels:  # semi-supervised: the loader trains on the labelled subset only
            from keepmix.train.uda import split_semi_data

            self.data, unlabelled = split_semi_data(self.data, config)
        self.num_classes = len(self.data.classes)
        self.loader = train_loader(self.data, config, self.dist, self.device)
        self.steps_per_epoch = steps_per_epoch(self.loader, config)

        # Same seed on every rank: identical initial weights (DDP also broadcasts them).
        torch.manual_seed(config.seed)
        from keepmix.models import build_model

        model = build_model(config.model, num_classes=self.num_classes, early_head=config.early_head, **early_head_kwargs(config))
        self.use_amp = config.amp == "on" or (config.amp == "auto" and self.device.type == "cuda")
        # float16 autocast on the CPU is many times slower than float32 and needs loss
        # scaling; bfloat16 is the CPU's mixed-precision type.
        on_cpu = self.device.type == "cpu"
        self.amp_dtype = torch.bfloat16 if config.amp_dtype == "bfloat16" or on_cpu else torch.float16
        self.amp_note = (
            "amp on the CPU runs in bfloat16 (float16 autocast is slow on the CPU)"
            if self.use_amp and on_cpu and config.amp_dtype == "float16"
            else None
        )
        self.channels_last = config.channels_last == "on" or (config.channels_last == "auto" and self.device.type == "cuda")
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        # Module.to takes memory_format (it parses its arguments as Tensor.to does); its stubs' overloads omit it.
        self.model: nn.Module = model.to(self.device, memory_format=self.memory_format)  # type: ignore[call-overload]
        if state is not None:
            check_model_state(self.model, state["model"])

        self.method: Method = build_method(config, self.model, self.num_classes, self.data.mean, self.data.std, self.autocast)
        self.method.loop_calls_loss = True  # a method's own loss (AugMix's JSD) is used as such
        forward: nn.Module = TrainForward(self.model, early=config.early_head and config.early_loss_weight > 0)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            forward = DDP(forward, device_ids=[self.device] if self.device.type == "cuda" else None)
        if config.compile:
            forward = cast(nn.Module, torch.compile(forward))  # a Module compiles to an OptimizedModule (an nn.Module)
        self.forward = forward
        self.semi = None  # the semi-supervised (UDA) step of keepmix.train.uda, None when supervised
        if unlabelled is not None:
            from keepmix.train.uda import SemiSupervised

            self.semi = SemiSupervised(self, unlabelled)
        self.criterion = SoftTargetCrossEntropy(label_smoothing=config.label_smoothing)
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = build_scheduler(self.optimizer, config, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.use_amp and self.amp_dtype == torch.float16)
        # The augmentation stream: its own generator per rank, on the batch's device.
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(config.seed * 1_000_003 + 7919 * (self.dist.rank + 1))
        self.pos = _Position()
        self.accum = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, correct, count
        self.epoch_time = 0.0
        self.best_test_acc: float | None = None
        self.last_record: dict[str, Any] = {}
        self.elapsed_before = 0.0
        self.schedule_changes: list[dict[str, Any]] = []
        if state is not None:
            self._load_state(state)
            self.run_id = str(state.get("run_id") or new_run_id())
        else:
            self.run_id = new_run_id()
        if schedule_change is not None:
            self.schedule_changes.append(schedule_change)
            # The step about to run takes its lr from the new plan (LambdaLR sets it only on step()).
            for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs, strict=True):  # one base lr per group
                group["lr"] = base * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        # One run directory and id for every rank: rank 0's.
        rd = RunDir(Path(run_dir)) if run_dir is not None else RunDir.new(config.out_dir, config.name)
        self.run_dir, self.run_id = broadcast_object((rd.path, self.run_id), self.dist)
        self.files = RunDir(self.run_dir)
        self.tensorboard = None
        if tensorboard is None:  # as the run was: a resumed run that wrote event files goes on writing them
            tensorboard = resume is not None and self.files.tensorboard.is_dir()
        if tensorboard and self.dist.is_main:
            from keepmix.train.tensorboard import TensorBoardLog

            # Events past the checkpoint (written before an interruption) are dropped, as
            # metrics.jsonl's records past it are: the resumed run writes those steps again.
            purge = self.pos.global_step + 1 if resume is not None else None
            self.tensorboard = TensorBoardLog(self.files.tensorboard, purge_step=purge)

    # ------------------------------------------------------------------ helpers
    def autocast(self):
        """The mixed-precision context of this run (a no-op when AMP is off)."""
        if not self.use_amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def log(self, msg: str) -> None:
        if self.dist.is_main:
            (self._log or (lambda m: print(m, file=sys.stderr, flush=True)))(msg)

    def request_stop(self) -> None:
        """Stop after the current step, writing a checkpoint (what SIGINT/SIGTERM do)."""
        self._stop_requested = True

    def _elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self._t_start if self._t_start is not None else 0.0)

    # ------------------------------------------------------------------ state
    def _rank_state(self) -> dict[str, Any]:
        state = {
            "aug_rng": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "method": self.method.state_dict(),
            "accum": self.accum,
            "epoch_time": self.epoch_time,
        }
        if self.semi is not None:
            state["semi"] = self.semi.state_dict()
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def state_dict(self, finished: bool = False) -> dict[str, Any]:
        """Everything a resume needs (collective under DDP: every rank must call it)."""
        ranks = gather_objects(self._rank_state(), self.dist)
        return {
            "run_id": self.run_id,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.pos.epoch,
            "step_in_epoch": self.pos.step_in_epoch,
            "global_step": self.pos.global_step,
            "best_test_acc": self.best_test_acc,
            "last_record": self.last_record,
            "schedule_changes": self.schedule_changes,
            "elapsed_s": self._elapsed(),
            "world_size": self.dist.world_size,
            "finished": finished,
            "ranks": ranks,
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        if state["world_size"] != self.dist.world_size:
            raise CheckpointError(
                f"the checkpoint was written by {state['world_size']} processes but this run has {self.dist.world_size}; "
                "resume with the same number of processes (each keeps its own augmentation stream)"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.pos = _Position(state["epoch"], state["step_in_epoch"], state["global_step"])
        self.best_test_acc = state["best_test_acc"]
        self.last_record = dict(state.get("last_record") or {})
        self.schedule_changes = list(state.get("schedule_changes") or [])
        self.elapsed_before = float(state["elapsed_s"])
        mine = state["ranks"][self.dist.rank]
        self.generator.set_state(mine["aug_rng"])
        torch.set_rng_state(mine["torch_rng"])
        if self.device.type == "cuda" and "cuda_rng" in mine:
            torch.cuda.set_rng_state(mine["cuda_rng"], self.device)
        self.method.load_state_dict(mine["method"])
        if self.semi is not None:
            self.semi.load_state_dict(mine.get("semi"))
        self.accum = mine["accum"].to(self.device)
        self.epoch_time = float(mine["epoch_time"])

    def save(self, finished: bool = False) -> Path:
        """Write the checkpoint (rank 0; collective under DDP). Signals wait for the write."""
        state = self.state_dict(finished=finished)
        self._saved_step = self.pos.global_step
        if self.dist.is_main:
            self._writing = True
            try:
                save_checkpoint(state, self.files.checkpoint)
            finally:
                self._writing = False
        return self.files.checkpoint

    # ------------------------------------------------------------------ signals
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_signal is not None and not self._writing:  # a second signal: stop now
            raise KeyboardInterrupt
        if self._stop_signal is None:
            self._stop_signal = signum
            self.log(
                f"\n{signal.Signals(signum).name} received: finishing this step and writing a checkpoint (send it again to stop at once)"
            )
        else:
            self.log(f"\n{signal.Signals(signum).name} received again: stopping once the checkpoint is written")

    @contextlib.contextmanager
    def _signals(self):
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    # ------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        """Train to the end; returns the final record (also written to final.json)."""
        cfg = self.config
        self._start_run_dir()
        self._t_start = time.perf_counter()
        if self.pos.global_step == 0:
            self.log(f"run directory: {self.run_dir}")
        else:
            self.log(f"resuming {self.run_dir} at epoch {self.pos.epoch + 1}, step {self.pos.step_in_epoch}")
        for change in self.schedule_changes[-1:]:
            if change["at_step"] == self.pos.global_step:
                self.log(
                    f"extending the run from {change['epochs_before']} to {change['epochs_after']} epochs: the cosine "
                    f"schedule is re-planned over {change['epochs_after']} epochs from step {change['at_step']}"
                )
        if self.amp_note:
            self.log(self.amp_note)
        bar = None
        try:
            with self._signals():
                while self.pos.epoch < cfg.epochs:
                    if self.pos.step_in_epoch == 0:
                        self.method.on_epoch_start()
                    if bar is None:
                        bar = self._progress_bar()
                    t0 = time.perf_counter()
                    images, labels = self.loader.batch(self.pos.epoch, self.pos.step_in_epoch)  # cropped + flipped uint8
                    self._step(images, labels)
                    self.pos.step_in_epoch += 1
                    self.pos.global_step += 1
                    self.epoch_time += time.perf_counter() - t0
                    if self.on_step is not None:
                        self.on_step(self, self.pos.global_step)
                    epoch_done = self.pos.step_in_epoch == self.steps_per_epoch
                    if self.pos.step_in_epoch % cfg.log_every == 0 or epoch_done:
                        self._check_and_show(bar)
                    if epoch_done:
                        if bar is not None:
                            bar.close()
                            bar = None
                        self._end_epoch()
                    # The one place a stop request is honoured.
                    if self.pos.epoch < cfg.epochs and any_rank(self._stop_signal is not None or self._stop_requested, self.dist):
                        raise RunInterrupted(self._stop_signal, self._save_for_resume())
        finally:
            if bar is not None:
                bar.close()
        return self._finish()

    def _start_run_dir(self) -> None:
        if not self.dist.is_main:
            return
        self.files.path.mkdir(parents=True, exist_ok=True)
        self.files.write_run_id(self.run_id)
        save_config(self.config, self.files.config)
        self.files.trim_metrics(self.pos.epoch)  # a resume drops what its checkpoint does not include

    def _progress_bar(self):
        if not (self.dist.is_main and self.config.progress):
            return None
        from tqdm import tqdm

        return tqdm(
            total=self.steps_per_epoch,
            initial=self.pos.step_in_epoch,
            desc=f"epoch {self.pos.epoch + 1}/{self.config.epochs}",
            unit="step",
            dynamic_ncols=True,
            leave=True,
            file=sys.stderr,
        )

    def _check_and_show(self, bar: Any) -> None:
        loss_sum, correct, n = self._reduced_accum()
        self._check_finite(loss_sum)
        if bar is not None:
            bar.update(self.pos.step_in_epoch - bar.n)
            bar.set_postfix(
                loss=f"{loss_sum / max(n, 1):.4f}",
                acc=f"{100 * correct / max(n, 1):.2f}",
                img_s=f"{n / max(1e-9, self.epoch_time):.0f}",
                lr=f"{self.scheduler.get_last_lr()[0]:.4g}",
            )

    def _save_for_resume(self) -> Path:
        # The periodic checkpoint of an epoch that just ended is already this position.
        path = self.files.checkpoint if self._saved_step == self.pos.global_step else self.save()
        self.log(f"checkpoint written to {path}; continue with: keepmix train --resume {self.run_dir}")
        return path

    def _step(self, images: Tensor, labels: Tensor) -> None:
        if self.semi is not None:  # a labelled and an unlabelled batch, the UDA loss
            batch, logits, loss = self.semi.forward_loss(images, labels)
        else:
            batch, logits, loss = self._forward_loss(images, labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        logits = logits.detach()
        self.method.after_step(batch, logits)
        with torch.no_grad():
            t = batch.targets
            cls = t if t.ndim == 1 else t.argmax(dim=1)  # under mixing: the dominant label
            n = cls.shape[0]
            self.accum += torch.stack(
                [
                    loss.detach().double() * n,
                    (logits.argmax(1) == cls).sum().double(),
                    torch.tensor(float(n), dtype=torch.float64, device=self.device),
                ]
            )

    def _forward_loss(self, images: Tensor, labels: Tensor) -> tuple[StepBatch, Tensor, Tensor]:
        """The supervised step's forward: ``(batch, logits, loss)``."""
        cfg = self.config
        batch: StepBatch = self.method.prepare(images, labels, self.generator)
        inputs = batch.inputs.contiguous(memory_format=self.memory_format)
        with self.autocast():
            logits, early, extra = self.forward(inputs, batch.feature_loss)
            loss = self.criterion(logits, batch.targets) if batch.loss is None else batch.loss(logits, batch.targets)
            if early is not None:
                loss = loss + cfg.early_loss_weight * self.criterion(early, batch.targets)
            if extra is not None:
                loss = loss + extra
        return batch, logits, loss

    def _reduced_accum(self) -> tuple[float, float, float]:
        loss_sum, correct, n = all_reduce_sum(self.accum, self.dist).tolist()
        return loss_sum, correct, n

    def _check_finite(self, loss_sum: float) -> None:
        if not math.isfinite(loss_sum):
            raise NonFiniteLossError(
                f"the training loss became {loss_sum} in epoch {self.pos.epoch + 1} by step {self.pos.step_in_epoch} "
                f"(lr {self.scheduler.get_last_lr()[0]:.4g}); the run stopped without writing a checkpoint. "
                "Lower lr, add warm-up (warmup_epochs) or turn off amp."
            )

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """(test loss, test accuracy in %) over this rank's shard, reduced over ranks."""
        model = self.model
        was_training = model.training
        model.eval()
        test = self.data.test
        idx = torch.arange(self.dist.rank, len(test), self.dist.world_size)
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        bs = max(self.config.batch_size, 256)
        for start in range(0, len(idx), bs):
            sel = idx[start : start + bs]
            x = test.images[sel].to(self.device, non_blocking=True)
            y = test.labels[sel].to(self.device, non_blocking=True)
            x = self.method.normalize(x).contiguous(memory_format=self.memory_format)
            with self.autocast():
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, reduction="sum")
            sums += torch.stack(
                [
                    loss.double(),
                    (logits.argmax(1) == y).sum().double(),
                    torch.tensor(float(len(sel)), dtype=torch.float64, device=self.device),
                ]
            )
        model.train(was_training)
        loss_sum, correct, n = all_reduce_sum(sums, self.dist).tolist()
        return loss_sum / max(n, 1), 100.0 * correct / max(n, 1)

    def _end_epoch(self) -> None:
        """The epoch's record (reduced over ranks: the same on every rank), its evaluation,
        metrics.jsonl, TensorBoard, and the periodic checkpoint."""
        cfg = self.config
        loss_sum, correct, n = self._reduced_accum()
        epoch = self.pos.epoch + 1
        record: dict[str, Any] = {
            "epoch": epoch,
            "step": self.pos.global_step,
            "lr": self.scheduler.get_last_lr()[0],
            "train_loss": loss_sum / max(n, 1),
            "train_acc": 100.0 * correct / max(n, 1),
            "images_per_s": n / max(self.epoch_time, 1e-9),
            "epoch_time_s": self.epoch_time,
            "planned_epochs": cfg.epochs,
        }
        if self.semi is not None:
            record.update(self.semi.epoch_record())
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            t0 = time.perf_counter()
            record["test_loss"], record["test_acc"] = self.evaluate()
            record["eval_time_s"] = time.perf_counter() - t0
            self.best_test_acc = max(self.best_test_acc or 0.0, record["test_acc"])
        record["elapsed_s"] = self._elapsed()
        self.last_record = record
        self.pos = _Position(epoch, 0, self.pos.global_step)
        self.accum.zero_()
        self.epoch_time = 0.0
        if self.dist.is_main:
            self.files.append_metrics(record)
            if self.tensorboard is not None:
                self.tensorboard.epoch(record)
            acc = f", test acc {record['test_acc']:.2f}%" if "test_acc" in record else ""
            self.log(
                f"epoch {epoch}/{cfg.epochs}: train loss {record['train_loss']:.4f}, "
                f"train acc {record['train_acc']:.2f}%{acc}, {record['images_per_s']:.0f} img/s"
            )
        if epoch < cfg.epochs and epoch % cfg.checkpoint_every == 0:
            self.save()

    def _finish(self) -> dict[str, Any]:
        """The final record (the same on every rank), the finished checkpoint, final.json, pictures."""
        cfg = self.config
        last = self.last_record  # the last epoch always evaluates
        final = {
            "name": cfg.name,
            "run_id": self.run_id,
            "run_dir": str(self.run_dir),
            "test_acc": last.get("test_acc"),
            "test_loss": last.get("test_loss"),
            "best_test_acc": self.best_test_acc,
            "train_acc": last.get("train_acc"),
            "epochs": cfg.epochs,
            "steps": self.pos.global_step,
            "seed": cfg.seed,
            "world_size": self.dist.world_size,
            "device": str(self.device),
            "amp": self.use_amp,
            "amp_dtype": str(self.amp_dtype).replace("torch.", "") if self.use_amp else None,
            "schedule_changes": self.schedule_changes,
            "lr_schedule": (
                f"cosine over {cfg.epochs} epochs"
                if not self.schedule_changes
                else "cosine, re-planned when the run was extended: at each change's step the lr takes the value of a "
                "cosine over the new total and decays from there to min_lr"
            ),
            "wall_time_s": self._elapsed(),
            "torch_version": str(torch.__version__),
            "config": cfg.to_dict(),
        }
        self.save(finished=True)
        if self.dist.is_main:
            self.files.write_final(final)
            if cfg.pictures or self.tensorboard is not None:
                final["pictures"] = self._pictures()
            if self.tensorboard is not None:
                self.tensorboard.close()
            self.log(f"final test accuracy {final['test_acc']:.2f}% after {cfg.epochs} epochs; results in {self.run_dir}")
        return final

    def _pictures(self) -> list[str]:
        """The accuracy curve and a method grid (best effort: a picture never fails a run)."""
        out = []
        if self.config.pictures:
            try:
                from keepmix.viz import plot_runs

                out.append(str(plot_runs([self.run_dir], self.files.accuracy_png, labels=[self.config.name])))
            except Exception as e:  # pragma: no cover - plotting problems must not lose a finished run
                self.log(f"could not draw the accuracy curve: {e}")
        try:
            from keepmix.train.show import save_run_grid

            grid = save_run_grid(self, self.files.methods_png)
            out.append(str(grid))
            if self.tensorboard is not None:
                self.tensorboard.image("methods", grid, self.pos.global_step)
        except Exception as e:  # pragma: no cover
            self.log(f"could not draw the method grid: {e}")
        return out


def train(
    config: TrainConfig | None,
    *,
    resume: str | Path | None = None,
    epochs: int | None = None,
    data: TrainData | None = None,
    run_dir: str | Path | None = None,
    on_step: Callable[[Trainer, int], None] | None = None,
    log: Callable[[str], None] | None = None,
    tensorboard: bool | None = None,
) -> dict[str, Any]:
    """Train ``config`` (or resume the run directory / checkpoint ``resume``) to the end.

    ``epochs`` with ``resume`` extends a run (see the module docstring for the schedule).
    ``data`` injects the dataset (a :class:`~keepmix.train.data.TrainData`) instead of loading
    ``config.dataset``; ``on_step(trainer, global_step)`` runs after every step (tests use it
    to request a stop); ``tensorboard`` also writes event files into ``<run>/tensorboard``
    (None, the default: off for a new run; for a resumed run, on when its directory has them).
    Returns the final record written to ``final.json``. Raises :class:`RunInterrupted` after
    SIGINT/SIGTERM (a checkpoint was written), :class:`NonFiniteLossError` on a NaN loss,
    :class:`FinishedRunError` when resuming a finished run without more epochs.
    """
    return Trainer(
        config, resume=resume, epochs=epochs, data=data, run_dir=run_dir, on_step=on_step, log=log, tensorboard=tensorboard
    ).run()
