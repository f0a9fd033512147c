"""The capture-safe engine: every op runs with no host read and compiles as one graph.

* Under ``keepmix.engine.strategy("capture")`` the whole call, ``sample_params`` included,
  runs on fake tensors (``FakeTensorMode``): any host read or data-dependent shape raises.
* The capture-safe path gives bitwise the CPU fast path's results for the same seed.
* ``torch.compile(op.transform, fullgraph=True, dynamic=False)`` succeeds and matches eager
  (bitwise on uint8, to float tolerance otherwise).
* ``sample_params`` issues a fixed number of ops, independent of B and of the op kinds.
"""

from __future__ import annotations

import pytest
import torch
from contract import K, check_op, make_batch, prime
from test_contract import FACTORIES, VARIANTS
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

import keepmix
from keepmix import engine

ALL = {**FACTORIES, **VARIANTS}


def _labels_for(op, y):
    return y if op.mixes_labels else None


@pytest.mark.parametrize("name", sorted(ALL))
def test_whole_call_runs_on_fake_tensors(name):
    op = ALL[name]()
    x, y, s = make_batch()
    prime(op, x, y)
    with engine.strategy("capture"), FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fx, fy, fs = mode.from_tensor(x), mode.from_tensor(y), mode.from_tensor(s)
        if isinstance(op, keepmix.RecursiveMix):
            op.update(fx, fy, mode.from_tensor(torch.randn(x.shape[0], op.num_classes)))
        out, targets = op(fx, fy, saliency=fs, generator=torch.Generator().manual_seed(0))
        assert out.shape == x.shape


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("name", sorted(ALL))
def test_capture_path_equals_the_fast_path(name, dtype):
    op = ALL[name]()
    x, y, s = make_batch(b=8, h=16, w=20, dtype=dtype)
    outs = []
    for strategy in ("fast", "capture"):
        prime(op, x, y)
        with engine.strategy(strategy):
            outs.append(op(x, y, saliency=s, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(outs[0][0], outs[1][0])
    assert torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_contract_holds_on_the_capture_path(name):
    with engine.strategy("capture"):
        check_op(FACTORIES[name])


# AugMix's uint8 output is a float blend of its chains, rounded once: inductor fuses the
# weighted sum in another order, so a rounding can land one grey level away.
FLOAT_BLENDS = {"AugMix"}


# Compiling with inductor (C++ codegen) takes seconds per graph on 2 cores: every op is
# compiled once at one size; the aot_eager backend (the same capture, no codegen) covers the
# variants.
@pytest.mark.parametrize("backend, name", [("inductor", n) for n in sorted(FACTORIES)] + [("aot_eager", n) for n in sorted(VARIANTS)])
def test_compiled_apply_matches_eager(backend, name):
    op = ALL[name]()
    x, y, s = make_batch(b=4, h=16, w=16, dtype=torch.uint8 if op.raw_pixels else torch.float32)
    prime(op, x, y)
    labels = _labels_for(op, y)
    params = op.sample_params(x, labels, saliency=s, generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    compiled = torch.compile(op.transform, fullgraph=True, dynamic=False, backend=backend)
    got, want = compiled(x, labels, params), op.transform(x, labels, params)
    got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
    for g, w in zip(got, want, strict=True):
        if g.is_floating_point():
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
        elif name in FLOAT_BLENDS:
            assert (g.int() - w.int()).abs().max() <= 1
        else:
            assert torch.equal(g, w)


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


# The number of aten ops one sample_params call issues on the capture-safe path (measured
# counts rounded up to the next 10; benchmarks/results/engine.md lists the measured ones).
SAMPLE_BOUNDS = {
    "Cutout": 30,
    "RandomErasing": 80,
    "Mixup": 90,
    "CutMix": 50,
    "MixupCutMix": 140,
    "AutoAugment": 80,
    "RandAugment": 80,
    "TrivialAugmentWide": 80,
    "KeepPaste": 220,
    "KeepCutout": 180,
    "KeepRandomErasing": 280,
    "KeepCutMix": 250,
    "KeepAutoAugment": 220,
    "KeepRandAugment": 260,
    "RecursiveMix": 60,
    "KeepRecursiveMix": 250,
    "GridMask": 30,
    "AugMix": 110,
    "AttentiveCutMix": 33,  # 3 of them check the teacher map is finite (issue 22)
    "ResizeMix": 50,
    "SaliencyMix": 60,
    "FMix": 60,
}


def _sample_ops(op, b: int, strategy: str) -> int:
    x, y, s = make_batch(b=b)
    prime(op, x, y)
    # The steady state: the first call at a size builds the constants the kernels keep
    # (keepmix.functional.constants), which later calls reuse.
    with engine.strategy(strategy):
        op.sample_params(x, y, saliency=s, generator=torch.Generator().manual_seed(0))
    prime(op, x, y)
    with engine.strategy(strategy), _CountOps() as counter:
        op.sample_params(x, y, saliency=s, generator=torch.Generator().manual_seed(0))
    return counter.count


def test_every_op_has_a_stated_bound():
    assert set(SAMPLE_BOUNDS) == set(FACTORIES)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_sampling_cost_is_independent_of_the_batch(name):
    counts = {b: _sample_ops(FACTORIES[name](), b, "capture") for b in (2, 16, 128)}
    assert len(set(counts.values())) == 1, counts
    assert counts[2] <= SAMPLE_BOUNDS[name]


def test_sampling_cost_is_independent_of_the_op_kinds():
    few = _sample_ops(keepmix.RandAugment(ops=["Identity", "Invert"]), 8, "capture")
    many = _sample_ops(keepmix.RandAugment(), 8, "capture")
    assert few == many
    assert _sample_ops(keepmix.AutoAugment("svhn"), 8, "capture") == _sample_ops(keepmix.AutoAugment("imagenet"), 8, "capture")


def test_value_checks_on_the_capture_path():
    x, s = torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8)
    op = keepmix.CutMix(num_classes=K)
    with engine.strategy("capture"):
        # A device-side assertion: on the CPU it raises at once, with the message.
        with pytest.raises(RuntimeError, match=r"labels must lie in \[0, 5\)"):
            op(x, torch.tensor([0, K]))
        with pytest.raises(RuntimeError, match="NaN or infinite"):
            keepmix.KeepCutout(4)(x, saliency=torch.full((2, 8, 8), float("nan")))
    engine.set_checks("eager")
    try:
        with engine.strategy("capture"), pytest.raises(ValueError, match="found 5"):
            op(x, torch.tensor([0, K]))
    finally:
        engine.set_checks("auto")
    with pytest.raises(ValueError, match="strategy must be one of"):
        engine.set_strategy("gpu")
    with pytest.raises(ValueError, match="checks must be"):
        engine.set_checks("never")
    assert engine.get_strategy() == "auto"
    assert keepmix.KeepCutout(4)(x, saliency=s).shape == x.shape


def test_auto_strategy_picks_capture_off_the_cpu():
    assert not engine.capture_safe(torch.device("cpu"))
    assert engine.capture_safe(torch.device("cuda"))
    assert engine.capture_safe(torch.device("meta"))
    with engine.strategy("fast"):
        assert not engine.capture_safe(torch.device("cuda"))


def test_saliency_with_a_compiled_model_does_not_recompile():
    """The saliency pass toggles eval mode and requires_grad; after the first step (one graph
    per mode) neither it nor the training step compiles again."""
    from torch import nn
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    model = torch.compile(net, backend="aot_eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    op = keepmix.KeepCutout(4, saliency_fn=keepmix.Saliency(model, downscale=2))
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    frames = []
    for _ in range(5):
        xa, ya = op(x, y, generator=torch.Generator().manual_seed(0))
        loss = nn.functional.cross_entropy(model(xa), ya)
        opt.zero_grad()
        loss.backward()
        opt.step()
        frames.append(counters["frames"]["ok"])
    assert frames[0] >= 1 and frames[1:] == [frames[0]] * 4, frames
    assert net.training and all(p.requires_grad for p in net.parameters())
