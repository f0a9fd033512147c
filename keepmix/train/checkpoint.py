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

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "check_model_state", "load_trained_model", "to_cpu"]

#: Bumped when the checkpoint layout changes incompatibly.
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, unreadable, from another model or finished."""


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
    """Atomically write ``state`` to ``path`` (temporary file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format_version": FORMAT_VERSION, **to_cpu(state)}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Never leave a half-written temporary file behind (also on KeyboardInterrupt).
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` onto the CPU; clear errors when it cannot."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {e}") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} is not a keepmix checkpoint of format {FORMAT_VERSION} "
            f"(found format {state.get('format_version') if isinstance(state, dict) else None})"
        )
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
    from keepmix.train.config import TrainConfig, early_head_kwargs

    state = load_checkpoint(run)
    config = TrainConfig(**state["config"])
    model = build_model(config.model, num_classes=num_classes, early_head=config.early_head, **early_head_kwargs(config))
    check_model_state(model, state["model"])
    model.load_state_dict(state["model"])
    return model.eval(), config
