"""Saliency through the wrappers training uses: an AMP batch, and a DDP-wrapped model."""

from __future__ import annotations

import torch
from isolated import run_python
from torch import nn

import keepmix


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)
    )


def test_half_precision_batch_with_a_float32_model():
    model = _model()
    x = torch.randn(3, 3, 8, 8)
    y = torch.tensor([0, 1, 2])
    want = keepmix.Saliency(model)(x.bfloat16().float(), y)
    got = keepmix.Saliency(model)(x.bfloat16(), y)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want)
    half = keepmix.Saliency(model, downscale=2)(x.half(), y)
    assert half.shape == (3, 8, 8) and torch.isfinite(half).all()
    # And through an op: KeepCutout on an fp16 batch with the model's saliency.
    out = keepmix.KeepCutout(4, saliency_fn=keepmix.Saliency(model))(x.half(), y, generator=torch.Generator().manual_seed(0))
    assert out[0].dtype == torch.float16


_DDP_CHECK = """
import datetime, gc, socket
import torch, torch.distributed as dist
from torch import nn
import keepmix

with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                        timeout=datetime.timedelta(seconds=60))
try:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 5))
    ddp = nn.parallel.DistributedDataParallel(model)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    sal = keepmix.Saliency(ddp)
    assert sal.model is model and sal.logits_fn is model
    torch.testing.assert_close(sal(x, y), keepmix.Saliency(model)(x, y))
    # The saliency pass leaves DDP ready for the training step that follows.
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    for _ in range(2):
        keepmix.KeepCutout(4, saliency_fn=sal)(x, y)
        loss = nn.functional.cross_entropy(ddp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(p.grad is not None for p in model.parameters())
finally:
    # Tear down in order: DDP (its Reducer holds the group) first, then the group.
    ddp = sal = opt = loss = None
    gc.collect()  # DDP's hooks form cycles: collect them before the group goes
    dist.destroy_process_group()
print("ok")
"""


def test_ddp_wrapped_model():
    """In a fresh process (a process group is process-wide state; the suite's other tests must
    not see it, nor it theirs), on loopback TCP with a timeout."""
    res = run_python(_DDP_CHECK, timeout=180)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stdout + res.stderr


def test_integer_soft_labels_are_refused():
    model = _model()
    import pytest

    with pytest.raises((TypeError, ValueError), match=r"labels of shape \(2, 1\) hold integers"):
        keepmix.Saliency(model)(torch.randn(2, 3, 8, 8), torch.tensor([[1], [2]]))
