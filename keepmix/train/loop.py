"""The training run: set-up, the epoch/step loop, evaluation, metrics, checkpoints, signals.

One step, on the batch's device::

    uint8 batch -> crop + flip -> method.prepare (policy on uint8, normalise, region/mixing op,
    saliency for Keep* variants) -> model (+ early head, + RecursiveMix consistency)
    -> soft-target cross-entropy (label smoothing) -> SGD step -> per-step lr schedule

Everything random in a step draws from one ``torch.Generator`` per rank (the augmentation
stream), seeded from the run seed and the rank, and saved in every checkpoint together with
the loader position, the global RNG, the optimiser, scheduler, scaler and the method's state
(RecursiveMix history): a resumed run continues exactly where the interrupted one stopped,
so its final weights equal an uninterrupted run's (bitwise on the CPU).

Host syncs happen only every ``log_every`` steps (progress bar, NaN check) and at epoch end.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from keepmix.targets import SoftTargetCrossEntropy
from keepmix.train.checkpoint import CheckpointError, check_model_state, load_checkpoint, save_checkpoint
from keepmix.train.config import TrainConfig, config_from_dict, save_config, early_head_kwargs
from keepmix.train.data import TrainData, load_data, steps_per_epoch, train_loader
from keepmix.train.distributed import DistInfo, all_reduce_sum, any_rank, gather_objects, init_distributed
from keepmix.train.methods import Method, StepBatch, build_method
from keepmix.train.optim import build_optimizer, build_scheduler

__all__ = ["Trainer", "train", "NonFiniteLossError", "RunInterrupted", "FinishedRunError", "TrainForward"]

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
FINAL_NAME = "final.json"
CONFIG_NAME = "config.yaml"


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite: the run stops without writing a checkpoint."""


class FinishedRunError(CheckpointError):
    """``--resume`` of a run that already finished."""


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
        m = self.model
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


class Trainer:
    """One training run (see :func:`train`)."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        resume: str | Path | None = None,
        data: TrainData | None = None,
        run_dir: str | Path | None = None,
        on_step: Callable[["Trainer", int], None] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.resume_state: dict[str, Any] | None = None
        if resume is not None:
            resume = Path(resume)
            self.resume_state = load_checkpoint(resume)
            if self.resume_state.get("finished"):
                raise FinishedRunError(
                    f"the run in {str(resume)!r} already finished all {self.resume_state['config']['epochs']} epochs; "
                    "start a new run instead of resuming it"
                )
            config = config_from_dict(self.resume_state["config"], where=f"checkpoint {resume}")
            run_dir = resume if resume.is_dir() else resume.parent
        self.config = config.validate()
        self.on_step = on_step
        self._log = log
        self._stop_signal: int | None = None
        self._stop_requested = False
        self.dist: DistInfo = init_distributed(config.device)
        self.device = self.dist.device
        if config.threads:
            torch.set_num_threads(config.threads)

        # Data first: a bad path fails before anything is written.
        self.data = data if data is not None else load_data(config, self.dist)
        self.num_classes = len(self.data.classes)
        self.loader = train_loader(self.data, config, self.dist, self.device)
        self.steps_per_epoch = steps_per_epoch(self.loader, config)

        # Same seed on every rank: identical initial weights (DDP also broadcasts them).
        torch.manual_seed(config.seed)
        from keepmix.models import build_model

        model = build_model(config.model, num_classes=self.num_classes, early_head=config.early_head, **early_head_kwargs(config))
        self.use_amp = config.amp == "on" or (config.amp == "auto" and self.device.type == "cuda")
        self.amp_dtype = torch.bfloat16 if config.amp_dtype == "bfloat16" else torch.float16
        self.channels_last = config.channels_last == "on" or (config.channels_last == "auto" and self.device.type == "cuda")
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        if self.resume_state is not None:
            check_model_state(self.model, self.resume_state["model"])

        self.method: Method = build_method(config, self.model, self.num_classes, self.data.mean, self.data.std, self.autocast)
        forward: nn.Module = TrainForward(self.model, early=config.early_head and config.early_loss_weight > 0)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            forward = DDP(forward, device_ids=[self.device] if self.device.type == "cuda" else None)
        if config.compile:
            forward = torch.compile(forward)
        self.forward = forward
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
        self.elapsed_before = 0.0
        if self.resume_state is not None:
            self._load_state(self.resume_state)
        self.run_dir = Path(run_dir) if run_dir is not None else self._new_run_dir()

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

    def _new_run_dir(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(self.config.out_dir) / f"{self.config.name}-{stamp}"
        path, i = base, 1
        while path.exists():  # two runs started within one second
            path, i = base.with_name(f"{base.name}-{i}"), i + 1
        return path

    # ------------------------------------------------------------------ state
    def _rank_state(self) -> dict[str, Any]:
        state = {
            "aug_rng": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "method": self.method.state_dict(),
            "accum": self.accum,
            "epoch_time": self.epoch_time,
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def state_dict(self, finished: bool = False) -> dict[str, Any]:
        """Everything a resume needs (collective under DDP: every rank must call it)."""
        ranks = gather_objects(self._rank_state(), self.dist)
        return {
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.pos.epoch,
            "step_in_epoch": self.pos.step_in_epoch,
            "global_step": self.pos.global_step,
            "best_test_acc": self.best_test_acc,
            "elapsed_s": self.elapsed_before + (time.perf_counter() - self._t_start if hasattr(self, "_t_start") else 0.0),
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
        self.elapsed_before = float(state["elapsed_s"])
        mine = state["ranks"][self.dist.rank]
        self.generator.set_state(mine["aug_rng"])
        torch.set_rng_state(mine["torch_rng"])
        if self.device.type == "cuda" and "cuda_rng" in mine:
            torch.cuda.set_rng_state(mine["cuda_rng"], self.device)
        self.method.load_state_dict(mine["method"])
        self.accum = mine["accum"].to(self.device)
        self.epoch_time = float(mine["epoch_time"])

    def save(self, finished: bool = False) -> Path:
        state = self.state_dict(finished=finished)
        path = self.run_dir / CHECKPOINT_NAME
        if self.dist.is_main:
            save_checkpoint(state, path)
        return path

    # ------------------------------------------------------------------ signals
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_signal is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self._stop_signal = signum
        self.log(f"\n{signal.Signals(signum).name} received: finishing this step and writing a checkpoint "
                 "(send it again to stop at once)")

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

    def _should_stop(self) -> bool:
        return any_rank(self._stop_signal is not None or self._stop_requested, self.dist)

    # ------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        """Train to the end; returns the final record (also written to final.json)."""
        cfg = self.config
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / CONFIG_NAME)
            self._trim_metrics()
        self._t_start = time.perf_counter()
        if self.pos.epoch == 0 and self.pos.step_in_epoch == 0:
            self.log(f"run directory: {self.run_dir}")
        else:
            self.log(f"resuming {self.run_dir} at epoch {self.pos.epoch + 1}, step {self.pos.step_in_epoch}")
        with self._signals():
            while self.pos.epoch < cfg.epochs:
                self._train_epoch()
                self._end_epoch()
        return self._finish()

    def _trim_metrics(self) -> None:
        """On resume, drop metric lines of epochs the checkpoint does not include."""
        path = self.run_dir / METRICS_NAME
        if not path.exists():
            return
        keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("epoch", 0) <= self.pos.epoch]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(ln + "\n" for ln in keep))
        tmp.replace(path)

    def _train_epoch(self) -> None:
        cfg = self.config
        self.model.train()
        epoch = self.pos.epoch
        bar = None
        if self.dist.is_main and cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.steps_per_epoch, initial=self.pos.step_in_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       unit="step", dynamic_ncols=True, leave=True, file=sys.stderr)
        if self.pos.step_in_epoch == 0:
            self.method.on_epoch_start()
        t0 = time.perf_counter()
        try:
            for index in range(self.pos.step_in_epoch, self.steps_per_epoch):
                images, labels = self.loader.batch(epoch, index)  # cropped + flipped uint8
                self._step(images, labels)
                self.pos.step_in_epoch += 1
                self.pos.global_step += 1
                if self.on_step is not None:
                    self.on_step(self, self.pos.global_step)
                last = self.pos.step_in_epoch == self.steps_per_epoch
                if self.pos.step_in_epoch % cfg.log_every == 0 or last:
                    loss_sum, correct, n = self._reduced_accum()
                    self._check_finite(loss_sum)
                    now = time.perf_counter()
                    if bar is not None:
                        bar.update(self.pos.step_in_epoch - bar.n)
                        rate = n / max(1e-9, self.epoch_time + now - t0)
                        bar.set_postfix(loss=f"{loss_sum / max(n, 1):.4f}", acc=f"{100 * correct / max(n, 1):.2f}",
                                        img_s=f"{rate:.0f}", lr=f"{self.scheduler.get_last_lr()[0]:.4g}")
                if not last and self._should_stop():
                    self.epoch_time += time.perf_counter() - t0
                    raise RunInterrupted(self._stop_signal, self._save_interrupted())
        finally:
            if bar is not None:
                bar.close()
        self.epoch_time += time.perf_counter() - t0

    def _save_interrupted(self) -> Path:
        path = self.save()
        self.log(f"checkpoint written to {path}; continue with: keepmix train --resume {self.run_dir}")
        return path

    def _step(self, images: Tensor, labels: Tensor) -> None:
        cfg = self.config
        batch: StepBatch = self.method.prepare(images, labels, self.generator)
        inputs = batch.inputs.contiguous(memory_format=self.memory_format)
        with self.autocast():
            logits, early, extra = self.forward(inputs, batch.feature_loss)
            loss = self.criterion(logits, batch.targets)
            if early is not None:
                loss = loss + cfg.early_loss_weight * self.criterion(early, batch.targets)
            if extra is not None:
                loss = loss + extra
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
            self.accum += torch.stack([loss.detach().double() * n, (logits.argmax(1) == cls).sum().double(),
                                       torch.tensor(float(n), dtype=torch.float64, device=self.device)])

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
            sel = idx[start:start + bs]
            x = test.images[sel].to(self.device, non_blocking=True)
            y = test.labels[sel].to(self.device, non_blocking=True)
            x = self.method.normalize(x).contiguous(memory_format=self.memory_format)
            with self.autocast():
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, reduction="sum")
            sums += torch.stack([loss.double(), (logits.argmax(1) == y).sum().double(),
                                 torch.tensor(float(len(sel)), dtype=torch.float64, device=self.device)])
        model.train(was_training)
        loss_sum, correct, n = all_reduce_sum(sums, self.dist).tolist()
        return loss_sum / max(n, 1), 100.0 * correct / max(n, 1)

    def _end_epoch(self) -> None:
        cfg = self.config
        loss_sum, correct, n = self._reduced_accum()
        self._check_finite(loss_sum)
        epoch = self.pos.epoch + 1
        record: dict[str, Any] = {
            "epoch": epoch,
            "step": self.pos.global_step,
            "lr": self.scheduler.get_last_lr()[0],
            "train_loss": loss_sum / max(n, 1),
            "train_acc": 100.0 * correct / max(n, 1),
            "images_per_s": n / max(self.epoch_time, 1e-9),
            "epoch_time_s": self.epoch_time,
        }
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            t0 = time.perf_counter()
            record["test_loss"], record["test_acc"] = self.evaluate()
            record["eval_time_s"] = time.perf_counter() - t0
            self.best_test_acc = max(self.best_test_acc or 0.0, record["test_acc"])
        record["elapsed_s"] = self.elapsed_before + time.perf_counter() - self._t_start
        self.pos = _Position(epoch, 0, self.pos.global_step)
        self.accum.zero_()
        self.epoch_time = 0.0
        if self.dist.is_main:
            with open(self.run_dir / METRICS_NAME, "a") as f:
                f.write(json.dumps(record) + "\n")
            acc = f", test acc {record['test_acc']:.2f}%" if "test_acc" in record else ""
            self.log(f"epoch {epoch}/{cfg.epochs}: train loss {record['train_loss']:.4f}, "
                     f"train acc {record['train_acc']:.2f}%{acc}, {record['images_per_s']:.0f} img/s")
        stop = self._should_stop()
        if epoch < cfg.epochs and (epoch % cfg.checkpoint_every == 0 or stop):
            self.save()
        if stop and epoch < cfg.epochs:
            path = self.run_dir / CHECKPOINT_NAME
            self.log(f"checkpoint written to {path}; continue with: keepmix train --resume {self.run_dir}")
            raise RunInterrupted(self._stop_signal, path)

    def _finish(self) -> dict[str, Any]:
        cfg = self.config
        # The last epoch always evaluates, so its record holds the final test accuracy.
        records = [json.loads(ln) for ln in (self.run_dir / METRICS_NAME).read_text().splitlines() if ln.strip()] \
            if self.dist.is_main else []
        last = records[-1] if records else {}
        final = {
            "name": cfg.name,
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
            "wall_time_s": self.elapsed_before + time.perf_counter() - self._t_start,
            "torch_version": str(torch.__version__),
            "config": cfg.to_dict(),
        }
        self.save(finished=True)
        if self.dist.is_main:
            tmp = self.run_dir / (FINAL_NAME + ".tmp")
            tmp.write_text(json.dumps(final, indent=2) + "\n")
            tmp.replace(self.run_dir / FINAL_NAME)
            if cfg.pictures:
                final["pictures"] = self._pictures()
            self.log(f"final test accuracy {final['test_acc']:.2f}% after {cfg.epochs} epochs; results in {self.run_dir}")
        return final

    def _pictures(self) -> list[str]:
        """The accuracy curve and a method grid (best effort: a picture never fails a run)."""
        out = []
        try:
            from keepmix.viz import plot_runs

            out.append(str(plot_runs([self.run_dir], self.run_dir / "accuracy.png", labels=[self.config.name])))
        except Exception as e:  # pragma: no cover - plotting problems must not lose a finished run
            self.log(f"could not draw the accuracy curve: {e}")
        try:
            from keepmix.train.show import save_run_grid

            out.append(str(save_run_grid(self, self.run_dir / "methods.png")))
        except Exception as e:  # pragma: no cover
            self.log(f"could not draw the method grid: {e}")
        return out


def train(
    config: TrainConfig,
    *,
    resume: str | Path | None = None,
    data: TrainData | None = None,
    run_dir: str | Path | None = None,
    on_step: Callable[[Trainer, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train ``config`` (or resume the run directory / checkpoint ``resume``) to the end.

    ``data`` injects the dataset (a :class:`~keepmix.train.data.TrainData`) instead of loading
    ``config.dataset``; ``on_step(trainer, global_step)`` runs after every step (tests use it
    to request a stop). Returns the final record written to ``final.json``. Raises
    :class:`RunInterrupted` after SIGINT/SIGTERM (a checkpoint was written),
    :class:`NonFiniteLossError` on a NaN loss, :class:`FinishedRunError` when resuming a
    finished run.
    """
    return Trainer(config, resume=resume, data=data, run_dir=run_dir, on_step=on_step, log=log).run()
