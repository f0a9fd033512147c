"""Tests for keepmix.saliency: vanilla-gradient maps and leaving the model untouched."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from keepmix.models.small import SmallConvNet
from keepmix.saliency import Saliency, saliency_map


class TinyNet(nn.Module):
    """conv-BN-ReLU-dropout-pool-linear, with one frozen parameter to check flags survive."""

    def __init__(self, k: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(6, k)
        self.fc.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.drop(F.relu(self.bn(self.conv(x))))
        return self.fc(f.mean((2, 3)) + f.amax((2, 3)))


def _net(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    net = TinyNet()
    with torch.no_grad():  # non-trivial running statistics
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net


def _images(b: int = 4, h: int = 12, w: int = 10, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _loop_saliency(model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Reference: one image at a time, eval mode, autograd on the label (or max) logit."""
    model = model.eval()
    maps = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].clone().requires_grad_(True)
        logits = model(xi)[0]
        target = logits[labels[i]] if labels is not None else logits.max()
        (g,) = torch.autograd.grad(target, xi)
        maps.append(g.abs().amax(1)[0])
    return torch.stack(maps)


def _state(model: nn.Module):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
    )


def _assert_same_state(before, model: nn.Module) -> None:
    sd, grads, modes, flags = before
    now = _state(model)
    assert sd.keys() == now[0].keys()
    for k in sd:
        assert torch.equal(sd[k], now[0][k]), k
    for a, b in zip(grads, now[1], strict=True):
        assert (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
    assert modes == now[2]
    assert flags == now[3]


def test_saliency_equals_per_image_autograd_loop():
    net, x = _net(), _images()
    labels = torch.tensor([0, 3, 4, 1])
    sal = Saliency(net)(x, labels)
    assert sal.shape == (4, 12, 10) and sal.dtype == torch.float32
    torch.testing.assert_close(sal, _loop_saliency(_net(), x, labels), rtol=1e-5, atol=1e-7)


def test_label_free_uses_max_logit():
    net, x = _net(), _images()
    sal = Saliency(net)(x)
    torch.testing.assert_close(sal, _loop_saliency(_net(), x, None), rtol=1e-5, atol=1e-7)
    # Soft targets select their largest class.
    labels = torch.tensor([2, 0, 1, 4])
    soft = F.one_hot(labels, 5).float() * 0.7 + 0.06
    torch.testing.assert_close(Saliency(net)(x, soft), Saliency(net)(x, labels))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("batchnorm", ["eval", "batch"])
def test_model_state_untouched(training, batchnorm):
    net = _net()
    net.train(training)
    net.bn.train(not training)  # mixed modes must come back exactly
    # Existing gradients must survive (and stay None where None).
    net(_images(seed=9)).sum().backward()
    net.conv.bias.grad = None
    before = _state(net)
    Saliency(net, batchnorm=batchnorm)(_images(), torch.tensor([0, 1, 2, 3]))
    _assert_same_state(before, net)


def test_batch_mode_uses_batch_statistics_and_restores_buffers():
    net = _net().train()
    x = _images()
    before = _state(net)
    sal_batch = Saliency(net, batchnorm="batch")(x)
    _assert_same_state(before, net)
    sal_eval = Saliency(net, batchnorm="eval")(x)
    assert not torch.allclose(sal_batch, sal_eval)  # the batch statistics were used
    assert net.training


def test_params_do_not_require_grad_during_the_pass():
    net = _net()
    seen = []

    def logits_fn(x):
        seen.append([p.requires_grad for p in net.parameters()])
        return net(x)

    Saliency(logits_fn, model=net)(_images())
    assert seen == [[False] * len(list(net.parameters()))]
    assert [p.requires_grad for p in net.parameters()] == [True, True, True, True, True, False]


def test_closure_with_model_argument_protects_the_model():
    net = _net().train()
    before = _state(net)
    sal = Saliency(lambda x: net(x), model=net)(_images(), torch.tensor([1, 1, 1, 1]))
    _assert_same_state(before, net)
    torch.testing.assert_close(sal, Saliency(net)(_images(), torch.tensor([1, 1, 1, 1])))


def test_low_resolution_variant():
    net, x = _net(), _images(h=16, w=12)
    labels = torch.tensor([0, 3, 4, 1])
    sal = Saliency(net, downscale=2)(x, labels)
    small = F.interpolate(x, size=(8, 6), mode="bicubic", align_corners=False, antialias=True)
    ref = F.interpolate(_loop_saliency(_net(), small, labels)[:, None], size=(16, 12), mode="bilinear", align_corners=False)[:, 0]
    assert sal.shape == (4, 16, 12)
    torch.testing.assert_close(sal, ref, rtol=1e-5, atol=1e-7)
    assert bool((sal >= 0).all())


def test_early_head_variant_is_just_another_logits_fn():
    torch.manual_seed(0)
    model = SmallConvNet(num_classes=10, early_head=True, stem_width=8, widths=(8, 16))
    model.train()
    x = _images(b=3, h=16, w=16)
    labels = torch.tensor([1, 5, 9])
    before = _state(model)
    sal = Saliency(model.early_logits)(x, labels)  # the bound method's module is protected
    _assert_same_state(before, model)
    model.eval()
    maps = []
    for i in range(3):
        xi = x[i : i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model.early_logits(xi)[0, labels[i]], xi)
        maps.append(g.abs().amax(1)[0])
    model.train()
    torch.testing.assert_close(sal, torch.stack(maps), rtol=1e-5, atol=1e-7)


def test_bfloat16_model_and_input():
    net = _net().to(torch.bfloat16)
    x = _images().to(torch.bfloat16)
    sal = Saliency(net)(x, torch.tensor([0, 1, 2, 3]))
    assert sal.dtype == torch.float32 and sal.shape == (4, 12, 10)
    assert bool(torch.isfinite(sal).all()) and bool((sal > 0).any())
    ref = Saliency(_net().to(torch.bfloat16).float())(x.float(), torch.tensor([0, 1, 2, 3]))
    # bf16 keeps ~3 significant digits (and max-pool ties may route differently): the maps
    # agree in pattern, measured by their correlation.
    corr = torch.corrcoef(torch.stack([sal.flatten(), ref.flatten()]))[0, 1]
    assert float(corr) > 0.9


def test_inside_no_grad_context_still_works():
    net, x = _net(), _images()
    with torch.no_grad():
        sal = Saliency(net)(x)
    torch.testing.assert_close(sal, Saliency(net)(x))


def test_input_not_modified_and_constant_logits_give_zero_map():
    x = _images()
    x0 = x.clone()
    sal = saliency_map(lambda t: torch.zeros(t.shape[0], 3), x)
    assert torch.equal(sal, torch.zeros(4, 12, 10)) and torch.equal(x, x0)


def test_bad_input():
    net = _net()
    with pytest.raises(TypeError, match="floating point"):
        Saliency(net)(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="labels"):
        Saliency(net)(_images(), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="class ids"):
        Saliency(net)(_images(), torch.tensor([0.0, 1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="logits_fn must return"):
        Saliency(lambda x: x.sum((2, 3)).sum(1))(_images())
    with pytest.raises(ValueError, match="downscale"):
        Saliency(net, downscale=0.5)
    with pytest.raises(ValueError, match="batchnorm"):
        Saliency(net, batchnorm="train")
    with pytest.raises(TypeError, match="callable"):
        Saliency(3)
    with pytest.raises(ValueError, match="shape"):
        Saliency(net)(torch.randn(3, 8, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_saliency_on_cuda_matches_cpu():
    x = _images()
    labels = torch.tensor([0, 3, 4, 1])
    cpu = Saliency(_net())(x, labels)
    net = _net().cuda()
    before = _state(net)
    gpu = Saliency(net, downscale=1)(x.cuda(), labels.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-5)
    _assert_same_state(before, net)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        amp = Saliency(net)(x.cuda(), labels.cuda())
    assert amp.dtype == torch.float32 and bool(torch.isfinite(amp).all())


def test_uniform_map_is_ones_and_makes_keepcut_choose_by_clipped_area(cifar_uint8):
    """The ablation control: a constant map, so a region's importance is its (clipped) area and
    selective-cut only ever cuts boxes the border clips below the q-quantile of those areas."""
    from keepmix.placers import KeepPlacer
    from keepmix.saliency import uniform_saliency

    x = cifar_uint8[:16].float()
    sal = uniform_saliency(x, torch.zeros(16, dtype=torch.long))
    assert sal.shape == (16, 32, 32) and sal.dtype == torch.float32 and torch.equal(sal, torch.ones_like(sal))
    sel = KeepPlacer(q=0.6).select(sal, (16, 16), "center", generator=torch.Generator().manual_seed(0))
    area = (sel.boxes[:, 2] - sel.boxes[:, 0]) * (sel.boxes[:, 3] - sel.boxes[:, 1])
    # Areas of the clipped 16 x 16 boxes centred on each of the 32 x 32 pixels, and their 0.6-quantile.
    side = torch.tensor([min(c + 8, 32) - max(c - 8, 0) for c in range(32)])
    areas = (side[:, None] * side[None, :]).flatten().double()
    tau = torch.quantile(areas, 0.6)
    assert not sel.fallback.any() and torch.equal(sel.tau, torch.full((16,), float(tau), dtype=torch.float64))
    assert (area < tau).all() and (area < 256).all()
    # score="mean" (or whole boxes) on a constant map: every candidate scores the same, nothing
    # is strictly below tau, and the documented fallback draws among all of them.
    for placer in (KeepPlacer(q=0.6, score="mean"), KeepPlacer(q=0.6, whole_boxes=True)):
        sel = placer.select(sal, (16, 16), "center", generator=torch.Generator().manual_seed(0))
        assert sel.fallback.all()
    with pytest.raises(ValueError, match="images"):
        uniform_saliency(torch.zeros(3, 32, 32))


def test_a_fixed_size_model_under_downscale_gets_an_error_naming_downscale():
    class FixedSize(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3 * 8 * 8, 4)

        def forward(self, x):
            assert x.shape[-2:] == (8, 8), f"Input height ({x.shape[-2]}) doesn't match model (8)"
            return self.fc(x.flatten(1))

    x, y = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    assert Saliency(FixedSize())(x, y).shape == (2, 8, 8)
    with pytest.raises(ValueError, match=r"Saliency\(downscale=2\): the model failed .* use downscale=1"):
        Saliency(FixedSize(), downscale=2)(x, y)
