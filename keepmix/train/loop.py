"""The training run: set-up, the step loop, evaluation, metrics, checkpoints, signals.

One step, on the batch's device::

    uint8 batch -> crop + flip -> method.prepare (policy on uint8, normalise, region/mixing op,
    saliency for Keep* variants) -> model (+ early head, + RecursiveMix consistency)
    -> soft-target cross-entropy (label smoothing) -> SGD step -> per-step lr schedule

A semi-supervised run (``semi_labels > 0``) trains the loader on the labelled subset, and its
forward and loss come from :class:`keepmix.train.uda.UDAStep` (a labelled batch plus an
unlabelled one, the UDA loss), the supervised step's from :class:`keepmix.train.steps.SupervisedStep`;
the backward, the update and the bookkeeping stay here. The run is assembled from the set-up
functions of :mod:`keepmix.train.setup`.

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
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from keepmix.targets import SoftTargetCrossEntropy
from keepmix.train.checkpoint import CheckpointError, check_model_state, save_checkpoint
from keepmix.train.config import ConfigError, TrainConfig, save_config
from keepmix.train.distributed import DistInfo, all_reduce_sum, any_rank, broadcast_object, gather_objects, init_distributed
from keepmix.train.run_dir import RunDir, RunLock, is_main_process, new_run_id
from keepmix.train.setup import (
    FinishedRunError,
    check_model_config,
    resume_state,
    setup_data,
    setup_forward,
    setup_logging,
    setup_method,
    setup_model,
    setup_optim,
    setup_step,
)
from keepmix.train.steps import StepContext, StepStrategy, SupervisedStep, TrainForward

if TYPE_CHECKING:
    from keepmix.train.data import TrainData
    from keepmix.train.methods import Method

__all__ = ["Trainer", "train", "NonFiniteLossError", "RunInterrupted", "FinishedRunError", "TrainForward"]

# The file names, for callers that imported them from here (RunDir is the one place that spells them).
CHECKPOINT_NAME = RunDir.CHECKPOINT
METRICS_NAME = RunDir.METRICS
FINAL_NAME = RunDir.FINAL
CONFIG_NAME = RunDir.CONFIG


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite: the run stops without writing a checkpoint."""


class RunInterrupted(Exception):
    """SIGINT/SIGTERM (or :meth:`Trainer.request_stop`): a checkpoint was written, resume from it."""

    def __init__(self, signum: int | None, checkpoint: Path | None) -> None:
        self.signum = signum
        self.checkpoint = checkpoint
        name = signal.Signals(signum).name if signum else "stop request"
        super().__init__(f"interrupted by {name}; checkpoint at {checkpoint}")


@dataclass
class _Position:
    """Where the run is: completed epochs, batches done in the current one, global step."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0


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
        self._lock: RunLock | None = None
        if resume is not None and is_main_process() and RunDir.of(resume).is_run():
            # The lock first, before any work: a second run in the directory is refused. (What
            # is not a run directory is left untouched: resume_state names the problem.)
            self._lock = RunLock.acquire(RunDir.of(resume))
        try:
            state, config, run_dir, schedule_change = self._plan(config, resume, epochs, run_dir)
            self._set_up(config, state, schedule_change, data, run_dir, tensorboard, resume is not None)
        except BaseException:
            self._release()
            raise
        self.on_step = on_step
        self._log = log

    @staticmethod
    def _plan(config: TrainConfig | None, resume: str | Path | None, epochs: int | None, run_dir: str | Path | None):
        """``(state or None, the validated config to run, run_dir, schedule change or None)``."""
        if resume is not None:
            state, config, rd, schedule_change = resume_state(resume, epochs)
            return state, config, rd.path, schedule_change
        if config is None:
            raise ConfigError("give a config, or resume= a run directory")
        if epochs is not None:
            config = config.replace(epochs=epochs)
        return None, config.validated(), run_dir, None

    def _set_up(self, config, state, schedule_change, data, run_dir, tensorboard, resumed) -> None:
        """Assemble the run from its parts (:mod:`keepmix.train.setup`), in this order."""
        self.config = config
        self._stop_signal: int | None = None
        self._stop_requested = False
        self._writing = False  # inside a checkpoint write: a second signal waits for it
        self._t_start: float | None = None
        self._saved_step: int | None = None  # the global step of the last checkpoint written
        check_model_config(config)
        self.dist: DistInfo = init_distributed(config.device)
        self.device = self.dist.device
        if config.threads:
            torch.set_num_threads(config.threads)
        # Data before anything is written: a bad path fails first.
        self.data, unlabelled, self.loader, self.steps_per_epoch = setup_data(config, self.dist, self.device, data)
        self.num_classes = len(self.data.classes)
        ms = setup_model(config, self.num_classes, self.device)
        self.model, self.use_amp, self.amp_dtype, self.amp_note = ms.model, ms.use_amp, ms.amp_dtype, ms.amp_note
        self.channels_last, self.memory_format = ms.channels_last, ms.memory_format
        if state is not None:
            check_model_state(self.model, state["model"])
        self.method: Method = setup_method(config, self.model, self.data, self.autocast, self.device)
        self.forward = setup_forward(self.model, config, self.dist, self.device)
        self.criterion = SoftTargetCrossEntropy(label_smoothing=config.label_smoothing)
        self.generator = torch.Generator(device=self.device)  # the augmentation stream: its own per rank
        self.generator.manual_seed(config.seed * 1_000_003 + 7919 * (self.dist.rank + 1))
        self.step_context = StepContext(
            config,
            self.method,
            self.forward,
            self.criterion,
            self.autocast,
            self.generator,
            self.memory_format,
            self.num_classes,
            config.epochs * self.steps_per_epoch,
            self.device,
            self.dist,
        )
        self.strategy: StepStrategy = setup_step(self.step_context, unlabelled, self.model, tuple(self.data.train.images.shape[1:]))
        scaled = self.use_amp and self.amp_dtype == torch.float16
        self.optimizer, self.scheduler, self.scaler = setup_optim(self.model, config, self.steps_per_epoch, self.device, scaled)
        self.pos = _Position()
        self.accum = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, correct, count
        self.epoch_time = 0.0
        self.best_test_acc: float | None = None
        self.last_record: dict[str, Any] = {}
        self.elapsed_before = 0.0
        self.schedule_changes: list[dict[str, Any]] = []
        self.run_id = new_run_id()
        if state is not None:
            self._load_state(state)
            self.run_id = str(state.get("run_id") or self.run_id)
        if schedule_change is not None:
            self._replan(schedule_change)
        # One run directory and id for every rank: rank 0's.
        rd = RunDir(Path(run_dir)) if run_dir is not None else RunDir.new(config.out_dir, config.name)
        self.run_dir, self.run_id = broadcast_object((rd.path, self.run_id), self.dist)
        self.files = RunDir(self.run_dir)
        self.tensorboard = setup_logging(self.files, tensorboard, resumed, self.pos.global_step, self.dist.is_main)

    def _replan(self, change: dict[str, Any]) -> None:
        self.schedule_changes.append(change)
        # The step about to run takes its lr from the new plan (LambdaLR sets it only on step()).
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs, strict=True):  # one base lr per group
            group["lr"] = base * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)

    @property
    def semi(self) -> StepStrategy | None:
        """The UDA step strategy of a semi-supervised run, None when supervised."""
        return None if isinstance(self.strategy, SupervisedStep) else self.strategy

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

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
        strategy_state = self.strategy.state_dict()
        if strategy_state is not None:
            state["semi"] = strategy_state
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
        if "semi" in mine or self.strategy.state_dict() is not None:
            self.strategy.load_state_dict(mine.get("semi"))
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
        """Train to the end; returns the final record (also written to final.json).

        The run directory's lock (:class:`~keepmix.train.run_dir.RunLock`) is held until the
        run ends, however it ends: a second process training in the same directory is refused."""
        try:
            if self._lock is None and self.dist.is_main:
                self._lock = RunLock.acquire(self.files)
            self._start_run_dir()
            self._announce()
            self._train_epochs()
            return self._finish()
        finally:
            self._release()

    def _announce(self) -> None:
        self._t_start = time.perf_counter()
        if self._lock is not None and self._lock.stale:
            self.log(f"took over the stale lock of process {self._lock.stale}, which is no longer running")
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

    def _train_epochs(self) -> None:
        """The step loop: one step, the end of an epoch when the step finished one, then the
        one place a stop request is honoured."""
        cfg = self.config
        bar = None
        try:
            with self._signals():
                while self.pos.epoch < cfg.epochs:
                    if self.pos.step_in_epoch == 0:
                        self.method.on_epoch_start()
                    bar = bar or self._progress_bar()
                    self._one_step()
                    epoch_done = self.pos.step_in_epoch == self.steps_per_epoch
                    if self.pos.step_in_epoch % cfg.log_every == 0 or epoch_done:
                        self._check_and_show(bar)
                    if epoch_done:
                        if bar is not None:
                            bar.close()
                            bar = None
                        self._end_epoch()
                    if self.pos.epoch < cfg.epochs and any_rank(self._stop_signal is not None or self._stop_requested, self.dist):
                        raise RunInterrupted(self._stop_signal, self._save_for_resume())
        finally:
            if bar is not None:
                bar.close()

    def _one_step(self) -> None:
        t0 = time.perf_counter()
        images, labels = self.loader.batch(self.pos.epoch, self.pos.step_in_epoch)  # cropped + flipped uint8
        self._step(images, labels)
        self.pos.step_in_epoch += 1
        self.pos.global_step += 1
        self.epoch_time += time.perf_counter() - t0
        if self.on_step is not None:
            self.on_step(self, self.pos.global_step)

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
        batch, logits, loss = self.strategy.forward_loss(self.step_context, images, labels, self.pos.global_step)
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
        record.update(self.strategy.epoch_record())
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
