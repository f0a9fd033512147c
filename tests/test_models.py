"""Tests for keepmix.models: sizes, the feature / classify / early-head interface, FeatureHook."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from keepmix.models import (
    MODELS,
    CifarResNet,
    FeatureHook,
    KeepmixModel,
    SmallConvNet,
    WideResNet,
    build_model,
    count_parameters,
    list_models,
)
from keepmix.models.hooks import tokens_to_map

torch.set_num_threads(1)

# Cheap models get the full set of forward tests; the big ones are built for their size and
# run on a batch of 2 only.
FAST = ["resnet18", "preact_resnet18", "resnet20", "small"]
BIG = ["resnet110", "wrn28_10"]

# Exact counts of this implementation for 10 classes.
EXACT_PARAMS = {
    "resnet18": 11_173_962,
    "preact_resnet18": 11_172_170,
    "resnet20": 269_722,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "wrn28_10": 36_479_194,
    "wrn28_2": 1_467_610,
    "small": 660_842,
    "airbench94": 1_972_792,
    "airbench95": 4_606_520,
    "airbench96": 12_721_208,
}

# Published sizes and the precision they are given to: (value, half a unit of the last
# published digit). The CIFAR ResNets are given to 2 significant digits in He et al. (0.27M,
# 0.85M, 1.7M), so "within 1%" is only meaningful to that precision: 1.7M covers 1.65-1.75M.
PUBLISHED = {
    "resnet18": (11.17e6, 0.01),  # relative tolerance
    "preact_resnet18": (11.17e6, 0.01),
    "wrn28_10": (36.5e6, 0.01),
    "resnet20": (0.27e6, 0.005e6 / 0.27e6),
    "resnet56": (0.85e6, 0.005e6 / 0.85e6),
    "resnet110": (1.7e6, 0.05e6 / 1.7e6),
}

_CACHE: dict[tuple, KeepmixModel] = {}


def model(name: str, early_head: bool = False, **kwargs) -> KeepmixModel:
    """Build once per (name, early_head, kwargs), seeded, in eval mode (BN uses running stats)."""
    key = (name, early_head, tuple(sorted(kwargs.items())))
    if key not in _CACHE:
        torch.manual_seed(0)
        _CACHE[key] = build_model(name, early_head=early_head, **kwargs).eval()
    return _CACHE[key]


def images(b: int = 2, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, h, w, generator=g)


# --------------------------------------------------------------------------- sizes
@pytest.mark.parametrize("name", sorted(EXACT_PARAMS))
def test_parameter_count_exact(name):
    assert count_parameters(model(name)) == EXACT_PARAMS[name]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_paper(name):
    published, rel = PUBLISHED[name]
    n = count_parameters(model(name))
    assert abs(n - published) <= rel * published, (name, n, published)


def test_registry_covers_exact_counts():
    assert set(EXACT_PARAMS) == set(MODELS) == set(list_models())
    assert list_models() == sorted(list_models())


def test_small_net_is_small():
    n = count_parameters(model("small"))
    assert 100_000 <= n <= 1_000_000


def test_option_b_shortcut_adds_projections():
    a = CifarResNet(20, shortcut="A")
    b = CifarResNet(20, shortcut="B")
    # Two downsampling blocks: 1x1 conv 16->32 and 32->64, each with a BN (weight + bias).
    assert count_parameters(b) - count_parameters(a) == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


def test_num_classes_changes_only_the_classifiers():
    base = count_parameters(model("resnet20"))
    assert count_parameters(build_model("resnet20", num_classes=100)) == base + 90 * (64 + 1)
    early = build_model("resnet20", num_classes=100, early_head=True)
    assert count_parameters(early) == base + 90 * 65 + 100 * (16 + 1)


# ----------------------------------------------------------------- interface
@pytest.mark.parametrize("name", FAST + BIG)
@pytest.mark.parametrize("hw", [(32, 32), (32, 48)])
def test_output_and_feature_shapes(name, hw):
    m = model(name)
    h, w = hw
    x = images(2, h, w)
    with torch.no_grad():
        f = m.forward_features(x)
        logits = m(x)
    s = m.feature_stride
    assert f.shape == (2, m.feature_channels, h // s, w // s)
    assert logits.shape == (2, m.num_classes) == (2, 10)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


@pytest.mark.parametrize(
    "name,channels,stride",
    [("resnet18", 512, 8), ("preact_resnet18", 512, 8), ("resnet20", 64, 4), ("small", 192, 8), ("resnet110", 64, 4), ("wrn28_10", 640, 4)],
)
def test_declared_attributes(name, channels, stride):
    m = model(name)
    assert (m.feature_channels, m.feature_stride, m.num_classes) == (channels, stride, 10)
    assert isinstance(m.fc, nn.Linear) and m.fc.in_features == channels and m.fc.out_features == 10
    assert m.has_early_head is False


@pytest.mark.parametrize("name", FAST)
def test_forward_equals_classify_of_features(name):
    m = model(name)
    x = images(3, 32, 40, seed=1)
    with torch.no_grad():
        direct = m(x)
        f = m.forward_features(x)
        via = m.classify(f)
        manual = m.fc(f.mean(dim=(2, 3)))  # the documented definition: GAP + fc
    torch.testing.assert_close(direct, via, rtol=0, atol=0)
    torch.testing.assert_close(direct, manual, rtol=1e-6, atol=1e-6)


def test_classify_accepts_roi_sized_features():
    m = model("resnet20")
    f = torch.randn(5, m.feature_channels, 1, 1)  # what RoIAlign with output 1x1 returns
    torch.testing.assert_close(m.classify(f), m.fc(f.flatten(1)))
    with pytest.raises(ValueError, match="features must have shape"):
        m.classify(torch.randn(5, 3, 1, 1))


@settings(max_examples=12, deadline=None)
@given(h=st.integers(5, 41), w=st.integers(5, 41), name=st.sampled_from(["resnet20", "small"]))
def test_feature_side_is_ceil_of_side_over_stride(h, w, name):
    m = model(name)
    with torch.no_grad():
        f = m.forward_features(torch.randn(1, 3, h, w))
    s = m.feature_stride
    assert f.shape[2:] == (math.ceil(h / s), math.ceil(w / s))


@pytest.mark.parametrize("name", FAST)
def test_input_is_not_modified(name):
    m = model(name, early_head=True)
    x = images(2)
    before = x.clone()
    m(x)
    m.forward_with_early(x)
    m.early_logits(x)
    torch.testing.assert_close(x, before, rtol=0, atol=0)


def test_bad_inputs_are_rejected():
    m = model("resnet20")
    with pytest.raises(TypeError, match="floating-point"):
        m(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        m(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        m(torch.zeros(3, 32, 32))
    with pytest.raises(TypeError, match="torch.Tensor"):
        m([[0.0]])


def test_in_channels_option():
    m = build_model("small", in_channels=1).eval()
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)


# ---------------------------------------------------------------- early head
@pytest.mark.parametrize("name", FAST)
def test_early_logits_match_forward_with_early(name):
    m = model(name, early_head=True)
    x = images(3, 32, 32, seed=2)
    with torch.no_grad():
        logits, early = m.forward_with_early(x)
        torch.testing.assert_close(early, m.early_logits(x), rtol=0, atol=0)
        torch.testing.assert_close(logits, m(x), rtol=0, atol=0)
        feats, early2 = m.forward_features_with_early(x)
        torch.testing.assert_close(feats, m.forward_features(x), rtol=0, atol=0)
        torch.testing.assert_close(early2, early, rtol=0, atol=0)
        both = m(x, with_early=True)  # the same through __call__ (for DDP / compile wrappers)
        torch.testing.assert_close(both[0], logits, rtol=0, atol=0)
        torch.testing.assert_close(both[1], early, rtol=0, atol=0)
    assert early.shape == logits.shape == (3, 10)
    assert m.has_early_head is True


@pytest.mark.parametrize("name", FAST + ["wrn28_10"])
def test_early_logits_run_only_the_first_stage(name):
    m = model(name, early_head=True)
    calls: list[str] = []
    hooks = [mod.register_forward_hook(lambda *_, n=n: calls.append(n)) for n, mod in m.named_children() if n != "stages"]
    hooks += [st_.register_forward_hook(lambda *_, i=i: calls.append(f"stage{i}")) for i, st_ in enumerate(m.stages, 1)]
    try:
        with torch.no_grad():
            m.early_logits(images(2))
        assert calls == ["stem", "stage1", "early_head"]
        calls.clear()
        with torch.no_grad():
            m.forward_with_early(images(2))
        n = len(m.stages)
        assert calls == ["stem", "stage1", "early_head"] + [f"stage{i}" for i in range(2, n + 1)] + ["norm", "fc"]
    finally:
        for h in hooks:
            h.remove()


def test_early_stage_option_moves_the_head():
    m = build_model("resnet18", early_head=True, early_stage=2).eval()
    assert m.early_head.fc.in_features == 128
    seen = []
    hook = m.stages[2].register_forward_hook(lambda *_: seen.append(1))
    with torch.no_grad():
        m.early_logits(images(1))
    hook.remove()
    assert seen == []
    # The head sees exactly stem -> stage1 -> stage2.
    with torch.no_grad():
        x = images(1)
        ref = m.early_head(m.stages[1](m.stages[0](m.stem(x))))
        torch.testing.assert_close(m.early_logits(x), ref, rtol=0, atol=0)


def test_early_grid_head_is_a_pooled_grid_plus_linear():
    m = build_model("resnet20", early_head=True, early_grid=2).eval()
    head = m.early_head
    assert head.fc.in_features == 16 * 4
    x = images(2)
    with torch.no_grad():
        feat = m.stages[0](m.stem(x))  # (2, 16, 32, 32)
        pooled = feat.reshape(2, 16, 2, 16, 2, 16).mean(dim=(3, 5)).flatten(1)
        torch.testing.assert_close(m.early_logits(x), head.fc(pooled), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet20", "preact_resnet18"])
def test_gradients_reach_early_head_and_only_the_layers_below_it(name):
    m = build_model(name, early_head=True).train()
    x = images(4, seed=3)
    y = torch.tensor([0, 1, 2, 3])
    logits, early = m.forward_with_early(x)
    (F.cross_entropy(logits, y) + 0.3 * F.cross_entropy(early, y)).backward()
    for p in m.parameters():
        assert p.grad is not None
    assert m.early_head.fc.weight.grad.abs().sum() > 0
    m.zero_grad(set_to_none=True)

    F.cross_entropy(m.early_logits(x), y).backward()
    assert m.early_head.fc.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.stem.parameters())
    assert all(p.grad is None for s in m.stages[1:] for p in s.parameters())
    assert m.fc.weight.grad is None


def test_input_gradient_through_early_head():
    # The saliency pass: d l_y / d x through the early head only.
    m = model("small", early_head=True)
    x = images(2).requires_grad_(True)
    logit = m.early_logits(x).gather(1, torch.tensor([[3], [7]])).sum()
    (grad,) = torch.autograd.grad(logit, x)
    assert grad.shape == x.shape and grad.abs().sum() > 0


def test_preact_early_head_normalises_its_input():
    m = model("preact_resnet18", early_head=True)
    assert isinstance(m.early_head.norm[0], nn.BatchNorm2d)
    assert isinstance(model("resnet18", early_head=True).early_head.norm, nn.Identity)


@pytest.mark.parametrize("name", FAST)
def test_early_logits_without_head_is_a_clear_error(name):
    m = model(name)
    with pytest.raises(RuntimeError, match="early_head=True"):
        m.early_logits(images(1))
    with pytest.raises(RuntimeError, match="early_head=True"):
        m.forward_with_early(images(1))
    with pytest.raises(RuntimeError, match="early_head=True"):
        m.forward_features_with_early(images(1))


# ------------------------------------------------------------------- errors
def test_build_model_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        build_model("resnet19")
    msg = str(info.value)
    assert "resnet19" in msg and all(n in msg for n in list_models())


def test_constructor_argument_errors():
    with pytest.raises(ValueError, match="num_classes"):
        build_model("resnet20", num_classes=0)
    with pytest.raises(ValueError, match="early_stage"):
        build_model("resnet20", early_head=True, early_stage=3)
    with pytest.raises(ValueError, match="early_grid"):
        build_model("resnet20", early_head=True, early_grid=0)
    with pytest.raises(ValueError, match="depth"):
        CifarResNet(depth=21)
    with pytest.raises(ValueError, match="depth"):
        WideResNet(depth=27, widen=1)
    with pytest.raises(ValueError, match="shortcut"):
        CifarResNet(20, shortcut="C")
    with pytest.raises(ValueError, match="dropout"):
        WideResNet(10, 1, dropout=1.0)
    with pytest.raises(ValueError, match="widths"):
        SmallConvNet(widths=(32,))
    with pytest.raises(ValueError, match="blocks"):
        build_model("resnet18", blocks=(2, 2, 2))
    with pytest.raises(TypeError, match="early_head must be a bool"):
        build_model("small", early_head="yes")
    with pytest.raises(TypeError, match="no_such_option"):
        build_model("small", no_such_option=1)


# ---------------------------------------------------------------- weight init
def test_weight_init_follows_the_papers():
    m = model("resnet18")
    conv = m.stages[3][1].conv2  # 512 -> 512, 3x3: fan_out = 512 * 9
    std = conv.weight.std().item()
    assert abs(std - math.sqrt(2.0 / (512 * 9))) < 0.02 * math.sqrt(2.0 / (512 * 9))
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            assert torch.equal(mod.weight, torch.ones_like(mod.weight))
            assert torch.equal(mod.bias, torch.zeros_like(mod.bias))
    assert torch.equal(m.fc.bias, torch.zeros_like(m.fc.bias))


def test_wrn_dropout_only_in_training():
    m = WideResNet(10, 2, dropout=0.3)  # WRN-10-2: same blocks as WRN-28-10, fast
    x = images(2)
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x), m(x), rtol=0, atol=0)
    m.train()
    torch.manual_seed(0)
    a = m(x)
    b = m(x)
    assert not torch.allclose(a, b)


# ------------------------------------------------------- memory format, autocast
@pytest.mark.parametrize("name", FAST)
def test_channels_last_matches_contiguous(name):
    m = model(name, early_head=True)
    x = images(2, 32, 36, seed=4)
    with torch.no_grad():
        ref_logits, ref_early = m.forward_with_early(x)
        m_cl = build_model(name, early_head=True).eval()
        m_cl.load_state_dict(m.state_dict())
        m_cl = m_cl.to(memory_format=torch.channels_last)
        logits, early = m_cl.forward_with_early(x.contiguous(memory_format=torch.channels_last))
        feats = m_cl.forward_features(x.contiguous(memory_format=torch.channels_last))
    assert feats.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(early, ref_early, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", FAST)
def test_bf16_autocast_forward_and_backward(name):
    m = build_model(name, early_head=True).train()
    x = images(2, seed=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, early = m.forward_with_early(x)
        loss = F.cross_entropy(logits.float(), torch.tensor([1, 2])) + 0.3 * F.cross_entropy(early.float(), torch.tensor([1, 2]))
    assert logits.dtype == early.dtype == torch.bfloat16
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
    m.eval()
    with torch.no_grad():
        ref = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = m(x).float()
    # bf16 keeps ~3 significant digits: the logits agree to a few percent of their scale.
    assert (low - ref).abs().max() <= 0.05 * ref.abs().max() + 0.05


# ----------------------------------------------------------------- FeatureHook
def test_feature_hook_captures_last_stage_and_norm():
    m = model("preact_resnet18")
    x = images(2, seed=6)
    with torch.no_grad():
        with FeatureHook(m, "stages.3") as raw, FeatureHook(m, "norm") as normed:
            logits = m(x)
        expected_raw = m.stages[3](m.stages[2](m.stages[1](m.stages[0](m.stem(x)))))
        torch.testing.assert_close(raw.features, expected_raw, rtol=0, atol=0)
        torch.testing.assert_close(normed.features, m.forward_features(x), rtol=0, atol=0)
        torch.testing.assert_close(m.classify(normed.features), logits, rtol=0, atol=0)
    assert not raw.attached and not normed.attached


class _PlainNet(nn.Module):
    """A model with no keepmix interface, named like a torchvision ResNet."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.layer4 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        f = self.layer4(torch.relu(self.conv1(x)))
        return self.fc(f.mean(dim=(2, 3)))


def test_feature_hook_on_a_plain_model_keeps_the_graph():
    torch.manual_seed(0)
    net = _PlainNet()
    hook = FeatureHook(net, "layer4")
    x = images(3, 16, 20)
    logits = net(x)
    f = hook.features
    assert f.shape == (3, 16, 8, 10) and f.requires_grad
    torch.testing.assert_close(net.fc(f.mean(dim=(2, 3))), logits)
    # A second forward replaces the capture; after remove() nothing new is recorded.
    x2 = images(1, 16, 20, seed=9)
    net(x2)
    assert hook.features.shape[0] == 1
    hook.remove()
    net(x)
    assert hook.features.shape[0] == 1
    hook.clear()
    with pytest.raises(RuntimeError, match="captured nothing"):
        _ = hook.features  # the property raises
    hook.attach()
    net(x)
    assert hook.features.shape[0] == 3
    hook.remove()


def test_feature_hook_detach_option():
    net = _PlainNet()
    with FeatureHook(net, "layer4", detach=True) as hook:
        net(images(1, 8, 8))
    assert not hook.features.requires_grad


def test_feature_hook_errors():
    net = _PlainNet()
    with pytest.raises(ValueError, match=r"'layer5'.*closest.*layer4"):
        FeatureHook(net, "layer5")
    with pytest.raises(ValueError, match="not a submodule"):
        FeatureHook(net, "")
    with pytest.raises(TypeError, match="nn.Module"):
        FeatureHook("net", "layer4")
    hook = FeatureHook(net, "fc")
    with pytest.raises(RuntimeError, match="captured nothing"):
        _ = hook.features  # the property raises
    hook.remove()

    class TupleOut(nn.Module):
        def forward(self, x):
            return x, x

    wrapper = nn.Sequential()
    wrapper.add_module("pair", TupleOut())
    with FeatureHook(wrapper, "pair"), pytest.raises(TypeError, match="not a Tensor"):
        wrapper(torch.zeros(1))


# ------------------------------------------------------------------ learning
def test_small_net_fits_real_cifar_images(cifar_uint8, cifar_labels):
    """The small net and its early head both learn: 16 real images are fitted in 40 steps."""
    torch.manual_seed(0)
    m = build_model("small", early_head=True).train()
    x = cifar_uint8[:16].float().div(255).sub(0.5).div(0.25)
    y = cifar_labels[:16]
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    for _ in range(40):
        logits, early = m.forward_with_early(x)
        loss = F.cross_entropy(logits, y) + 0.3 * F.cross_entropy(early, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        logits, early = m.forward_with_early(x)
    assert (logits.argmax(1) == y).float().mean() == 1.0
    assert F.cross_entropy(early, y) < math.log(10)  # the early head learned something too


# ---------------------------------------------------------------------- GPU
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("name", FAST)
def test_cuda_forward_matches_cpu(name):
    m = model(name, early_head=True)
    x = images(2, 32, 40, seed=7)
    with torch.no_grad():
        ref_logits, ref_early = m.forward_with_early(x)
        m_gpu = build_model(name, early_head=True).eval()
        m_gpu.load_state_dict(m.state_dict())
        m_gpu = m_gpu.cuda()
        logits, early = m_gpu.forward_with_early(x.cuda())
        assert logits.device.type == "cuda" and m_gpu.forward_features(x.cuda()).device.type == "cuda"
    torch.testing.assert_close(logits.cpu(), ref_logits, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(early.cpu(), ref_early, rtol=1e-3, atol=1e-3)


@cuda
def test_cuda_channels_last_bf16_training_step():
    m = build_model("resnet18", early_head=True).cuda().to(memory_format=torch.channels_last).train()
    x = images(4).cuda().contiguous(memory_format=torch.channels_last)
    y = torch.tensor([0, 1, 2, 3], device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits, early = m.forward_with_early(x)
        loss = F.cross_entropy(logits, y) + 0.3 * F.cross_entropy(early, y)
    loss.backward()
    assert logits.dtype == torch.bfloat16
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


@cuda
def test_cuda_feature_hook_and_early_saliency():
    m = build_model("resnet20", early_head=True).cuda().eval()
    x = images(2).cuda().requires_grad_(True)
    with FeatureHook(m, "stages.2") as hook:
        logits = m(x)
    assert hook.features.device.type == "cuda" and hook.features.shape == (2, 64, 8, 8)
    torch.testing.assert_close(m.classify(hook.features), logits)
    (g,) = torch.autograd.grad(m.early_logits(x)[:, 0].sum(), x)
    assert g.device.type == "cuda" and g.abs().sum() > 0


@pytest.mark.parametrize("name", ["resnet18", "preact_resnet18", "resnet20", "wrn28_10"])
def test_early_block_puts_the_head_inside_the_first_stage(name):
    """``early_block=1``: the head reads the first block's output; early_logits runs only the
    stem and that block, and forward_with_early still equals the plain forward."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, early_head=True, early_block=1).eval()
    x = torch.randn(2, 3, 32, 32)
    ran: list[str] = []
    hooks = [
        m.register_forward_hook(lambda *_, n=n: ran.append(n))
        for n, m in model.named_modules()
        if n.count(".") == 2 and n.startswith("stages.")
    ]
    early = model.early_logits(x)
    for h in hooks:
        h.remove()
    assert ran == ["stages.0.0"]  # only the first block of the first stage
    expected = model.early_head(model.stages[0][0](model.stem(x)))
    assert torch.allclose(early, expected, atol=1e-6)
    logits, early2 = model.forward_with_early(x)
    assert torch.allclose(early2, early, atol=1e-5)
    assert torch.allclose(logits, model(x), atol=1e-5)


def test_early_block_errors():
    with pytest.raises(ValueError, match="early_block must be an int"):
        build_model("resnet18", early_head=True, early_block=3)
    with pytest.raises(ValueError, match="sequence of blocks"):
        build_model("small", early_head=True, early_block=1)
    # The whole stage is the default placement.
    assert build_model("resnet18", early_head=True, early_block=2).early_block is None


# ----------------------------------------------------------------- ViT tokens
class _TinyViT(nn.Module):
    """A ViT's token layout: patch embedding (4 px patches), ``prefix`` tokens first, blocks, norm."""

    def __init__(self, prefix: int = 1, dim: int = 6) -> None:
        super().__init__()
        self.num_prefix_tokens = prefix
        self.patch_embed = nn.Conv2d(3, dim, 4, stride=4)
        self.prefix = nn.Parameter(torch.randn(1, prefix, dim))
        self.blocks = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        t = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, h*w, C), row-major
        t = torch.cat([self.prefix.expand(x.shape[0], -1, -1), t], dim=1)
        t = self.norm(self.blocks(t))
        return self.head(t[:, 0])


@pytest.mark.parametrize("prefix", [0, 1, 5])
@pytest.mark.parametrize("hw", [(16, 16), (8, 24), (28, 12)])
def test_tokens_to_map_is_the_patch_grid(prefix, hw):
    torch.manual_seed(0)
    vit = _TinyViT(prefix)
    x = torch.randn(2, 3, *hw)
    patch_map = vit.patch_embed(x)  # (B, C, h, w): where each patch token came from
    tokens = torch.cat([vit.prefix.expand(2, -1, -1), patch_map.flatten(2).transpose(1, 2)], dim=1)
    assert torch.equal(tokens_to_map(tokens, prefix, grid=patch_map.shape[-2:]), patch_map)
    assert torch.equal(tokens_to_map(tokens, prefix, image_size=hw), patch_map)
    if hw[0] == hw[1]:
        assert torch.equal(tokens_to_map(tokens, prefix), patch_map)
    assert tokens_to_map(patch_map) is patch_map  # a map passes through
    with FeatureHook(vit, "norm") as hook:  # the model's own prefix count, the grid from its input
        vit(x)
    want = vit.norm(vit.blocks(tokens))[:, prefix:].transpose(1, 2).reshape(patch_map.shape)
    assert hook.features.shape == patch_map.shape
    torch.testing.assert_close(hook.features, want)
    hook.features.sum().backward()  # still on the graph
    assert vit.norm.weight.grad is not None
    with FeatureHook(vit, "norm", tokens=False) as raw:
        vit(x)
    assert raw.features.shape == tokens.shape


def test_tokens_to_map_errors():
    t = torch.randn(2, 1 + 12, 4)
    with pytest.raises(ValueError, match=r"12 patch tokens.*square grid.*grid=\(h, w\)"):
        tokens_to_map(t)
    assert tokens_to_map(t, grid=(3, 4)).shape == (2, 4, 3, 4)
    with pytest.raises(ValueError, match="none left"):
        tokens_to_map(t, num_prefix_tokens=13)
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        tokens_to_map(t, num_prefix_tokens=-1)
    with pytest.raises(ValueError, match=r"\(B, N, C\)"):
        tokens_to_map(torch.randn(3, 4))
    with pytest.raises(TypeError, match="tokens must be a Tensor"):
        tokens_to_map([1, 2])  # type: ignore[arg-type]  # the value the test means to pass
