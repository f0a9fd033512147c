"""Checkpoints: written atomically, read back with ``weights_only=True``.

A checkpoint is a plain nested dict of tensors, numbers, strings, lists and dicts only, so
``torch.load(..., weights_only=True)`` (no arbitrary unpickling) can read it. It is written
to a temporary file in the same directory, flushed to disk, then renamed over the old one:
a crash or a signal at any moment leaves either the previous checkpoint or the new one,
never a truncated file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckpointError",
    "CheckpointWriteError",
    "save_checkpoint",
    "load_checkpoint",
    "check_model_state",
    "load_trained_model",
    "to_cpu",
    "REQUIRED_KEYS",
    "RESUME_KEYS",
]

#: Bumped when the checkpoint layout changes incompatibly.
FORMAT_VERSION = 1


#: What every keepmix checkpoint holds (checked on load, so a damaged one is named as such).
REQUIRED_KEYS = ("config", "model")
#: What a checkpoint to resume holds besides.
RESUME_KEYS = ("optimizer", "scheduler", "scaler", "epoch", "step_in_epoch", "global_step", "world_size", "ranks", "elapsed_s")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, unreadable, from another model or run, or finished."""


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint failed (a full disk, no permission); the previous checkpoint is unchanged."""


def to_cpu(obj: Any) -> Any:
    """A copy of a nested structure with every tensor moved to the CPU (and detached)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Atomically write ``state`` to ``path`` (temporary file + fsync + rename).

    The checkpoint is serialised in memory first and then written with plain ``write``
    calls, so that a full disk surfaces as ``ENOSPC`` (``torch.save`` writing to the file
    itself would hide it in a RuntimeError of its zip writer). An ``OSError`` (a full disk, a
    read-only folder) becomes a :class:`CheckpointWriteError` naming the file, the reason
    and, for a full disk, the folder and the space needed; the previous checkpoint at
    ``path`` is then unchanged and no temporary file is left behind (also on KeyboardInterrupt).
    """
    import io

    path = Path(path)
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **to_cpu(state)}, buffer)
    data = buffer.getbuffer()
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise CheckpointWriteError(_write_failure(e, path, len(data))) from None
        raise
    return path


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _write_failure(e: OSError, path: Path, size: int) -> str:
    import errno
    import shutil

    kept = "the previous checkpoint is unchanged" if path.is_file() else "no checkpoint was written"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = f", {_mib(shutil.disk_usage(path.parent).free)} free"
        except OSError:
            free = ""
        return (
            f"cannot write checkpoint {str(path)!r}: the disk is full ({e.strerror}): the folder {str(path.parent)!r} needs "
            f"{_mib(size)} for it{free}; free some space and resume the run; {kept}"
        )
    return f"cannot write checkpoint {str(path)!r}: {e.strerror or e}; {kept}"


def load_checkpoint(path: str | Path, require: tuple[str, ...] = REQUIRED_KEYS) -> dict[str, Any]:
    """Read a checkpoint (a file, or the one of a run directory) with ``weights_only=True``
    onto the CPU. Every way it can fail is a :class:`CheckpointError` that says why: no such
    file, a folder that is not a run directory, an empty file, a file torch cannot read
    (truncated, garbage, not written by ``torch.save``), or a dict that is not a keepmix
    checkpoint (one without every key of ``require``)."""
    from keepmix.train.run_dir import RunDir

    path = Path(path)
    if path.is_dir():
        rd = RunDir(path)
        if not rd.checkpoint.is_file():
            what = (
                "a run directory without a checkpoint (it never finished an epoch?)"
                if rd.is_run()
                else "not a keepmix run directory (no checkpoint.pt, no config.yaml)"
            )
            raise CheckpointError(f"{str(path)!r} is {what}")
        path = rd.checkpoint
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes): not written by keepmix, whose writes are atomic")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = f"{type(e).__name__}: {e}".split("\n")[0]
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r}: not a complete file written by torch.save "
            f"(truncated, or another kind of file): {reason}"
        ) from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{str(path)!r} holds a {type(state).__name__}, not a keepmix checkpoint (no format_version)")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} is a keepmix checkpoint of format {state['format_version']!r}; this keepmix reads format {FORMAT_VERSION}"
        )
    missing = [k for k in require if k not in state]
    if missing:
        raise CheckpointError(f"{str(path)!r} is not a complete keepmix checkpoint: it lacks {', '.join(missing)}")
    if not isinstance(state["config"], dict):
        raise CheckpointError(f"{str(path)!r}: its config is a {type(state['config']).__name__}, not a mapping")
    return state


def check_model_state(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` unless ``state_dict`` has exactly the model's keys and shapes."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    extra = sorted(set(state_dict) - set(own))
    shapes = [k for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {extra[0]!r})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} of another shape (e.g. {k!r}: {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)})")
        raise CheckpointError(f"the {source} holds weights of another model: " + "; ".join(parts))


def load_trained_model(run: str | Path, num_classes: int) -> tuple[torch.nn.Module, Any]:
    """The model of a run directory (or checkpoint file) with its trained weights, in eval mode
    on the CPU, and the run's :class:`~keepmix.train.config.TrainConfig`.

    The architecture (model name, early head and where it sits) comes from the checkpoint's
    config; ``num_classes`` is the dataset's (checked against the saved weights).
    """
    from keepmix.models import build_model
    from keepmix.train.config import ConfigError, config_from_dict, early_head_kwargs

    state = load_checkpoint(run)
    try:
        config = config_from_dict(state["config"], where=f"checkpoint {run}")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    model = build_model(config.model, num_classes=num_classes, early_head=config.early_head, **early_head_kwargs(config))
    check_model_state(model, state["model"])
    model.load_state_dict(state["model"])
    return model.eval(), config
