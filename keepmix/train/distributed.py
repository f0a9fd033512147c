"""Distributed data parallel under ``torchrun``: set-up, reductions, per-rank state.

``torchrun --nproc_per_node N -m keepmix train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT; :func:`init_distributed` reads them and starts the process group
(nccl on GPUs, gloo on CPU). Without them everything here is a no-op for a single process.

Control traffic (the stop flag after a signal, gathering per-rank RNG states for a
checkpoint) goes through a separate gloo group on the CPU, so it never forces a GPU sync.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "shutdown_distributed", "all_reduce_sum", "any_rank", "gather_objects", "broadcast_object"]


@dataclass
class DistInfo:
    """Where this process stands: its rank, the world size, its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    control_group: Any = None  # gloo group for CPU-side control traffic

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _resolve_device(device: str, local_rank: int, distributed: bool) -> torch.device:
    """The torch device for ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``); a
    :class:`~keepmix.train.config.ConfigError` naming ``device`` when it cannot be used."""
    from keepmix.train.config import ConfigError

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device={device!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={device!r}: keepmix trains on cpu or cuda (auto picks cuda when there is a GPU)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} asks for CUDA but torch sees no GPU; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device={device!r}: there are only {torch.cuda.device_count()} GPUs (cuda:0 ..)")
        if distributed or dev.index is None:
            # One GPU per process under torchrun: LOCAL_RANK picks it.
            dev = torch.device("cuda", local_rank if distributed else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    return dev


def init_distributed(device: str = "auto") -> DistInfo:
    """Start the process group if launched by torchrun (WORLD_SIZE > 1) and pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    distributed = world > 1
    dev = _resolve_device(device, local_rank, distributed)
    info = DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)
    if distributed:
        if not dist.is_initialized():
            backend = "nccl" if dev.type == "cuda" else "gloo"
            kwargs: dict[str, Any] = {"device_id": dev} if dev.type == "cuda" else {}
            dist.init_process_group(backend=backend, **kwargs)
        info.control_group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
    return info


def shutdown_distributed(info: DistInfo | None = None) -> None:
    """Destroy the process group (the one this module started; with None, whichever is up).

    Drop every DDP object first: DDP's hooks form reference cycles, and a Reducer collected
    after its group is gone can deadlock (its ``~ProcessGroupGloo`` joins a gloo thread that
    waits for the GIL the collecting thread holds). ``gc.collect()`` frees them while the group
    still stands.
    """
    if (info is None or info.enabled) and dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over ranks (in place on a copy); identity for one process."""
    out = tensor.clone()
    if info.enabled:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank if ``flag`` is True on any rank (a CPU all-reduce on the control group)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=info.control_group)
    return bool(t.item())


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` (tensors moved to the CPU), in rank order, on every rank."""
    from keepmix.train.checkpoint import to_cpu

    obj = to_cpu(obj)
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj, group=info.control_group)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself for one process)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=info.control_group)
    return box[0]
