"""Saliency, the Keep ops and FeatureHook + RecursiveMix on real torchvision and timm models
(a ResNet, a MobileNet, a ConvNeXt, ViTs), with the models' state left untouched."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

import keepmix
from keepmix.models.hooks import FeatureHook


def _tv_vit():
    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=4, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    )
    nn.init.normal_(vit.heads.head.weight, std=0.1)  # torchvision zero-inits the head: constant logits, no saliency
    return vit


# name -> (builder, image side, hooked module, channels of its map)
MODELS = {
    "tv-resnet18": (lambda: torchvision.models.resnet18(num_classes=10), 32, "layer4", 512),
    "tv-mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(num_classes=10), 32, "features", 576),
    "tv-vit": (_tv_vit, 32, "encoder", 32),
    "timm-convnext_atto": (lambda: timm.create_model("convnext_atto", num_classes=10), 64, "stages", 320),
    "timm-vit": (
        lambda: timm.create_model(
            "vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=4, depth=2, dynamic_img_size=True, reg_tokens=2
        ),
        32,
        "norm",
        192,
    ),
}


def _state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _untouched(model: nn.Module, before: dict, training: bool) -> None:
    after = model.state_dict()
    assert set(after) == set(before)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"the model's state changed: {changed[:5]}"
    assert all(m.training == training for m in model.modules()), "the model's train / eval mode changed"
    assert all(p.grad is None for p in model.parameters()), "gradients were left in the model"


def _batch(cifar_uint8, cifar_labels, side: int):
    x = cifar_uint8[:8].float() / 255
    if side != 32:
        x = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    return (x - 0.45) / 0.25, cifar_labels[:8]


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("downscale", [1, 2])
def test_saliency_on_real_models_leaves_them_untouched(name, downscale, cifar_uint8, cifar_labels):
    build, side, _, _ = MODELS[name]
    torch.manual_seed(0)
    model = build().train()
    x, y = _batch(cifar_uint8, cifar_labels, side)
    before = _state(model)
    if name == "tv-vit" and downscale > 1:
        # A fixed-size model cannot take the downscaled copy: the error must say what to change
        # (timm ViTs take it with dynamic_img_size=True, as MODELS["timm-vit"] is built).
        with pytest.raises((ValueError, RuntimeError, AssertionError), match="downscale"):
            keepmix.Saliency(model, downscale=downscale)(x, y)
        _untouched(model, before, training=True)
        return
    sal = keepmix.Saliency(model, downscale=downscale)(x, y)
    assert sal.shape == (8, side, side) and sal.dtype == torch.float32
    assert bool(torch.isfinite(sal).all()) and bool((sal >= 0).all()) and bool((sal.flatten(1).sum(1) > 0).all())
    _untouched(model, before, training=True)


@pytest.mark.parametrize("name", list(MODELS))
def test_keep_ops_on_real_models(name, cifar_uint8, cifar_labels):
    """KeepCutout and KeepCutMix with a real model's saliency: the kept region is never covered."""
    build, side, _, _ = MODELS[name]
    torch.manual_seed(0)
    model = build().train()
    x, y = _batch(cifar_uint8, cifar_labels, side)
    before = _state(model)
    g = torch.Generator().manual_seed(0)
    cut = keepmix.KeepCutout(side // 4, saliency_fn=keepmix.Saliency(model))
    out, labels = cut(x, y, generator=g)
    assert out.shape == x.shape and torch.equal(labels, y) and not torch.equal(out, x)
    mix = keepmix.KeepCutMix(num_classes=10, saliency_fn=keepmix.Saliency(model))
    out, targets = mix(x, y, generator=g)
    assert out.shape == x.shape and targets.shape == (8, 10)
    torch.testing.assert_close(targets.sum(1), torch.ones(8))
    _untouched(model, before, training=True)


@pytest.mark.parametrize("name", list(MODELS))
def test_feature_hook_with_recursivemix_trains(name, cifar_uint8, cifar_labels):
    """Two RecursiveMix steps with the features from FeatureHook (a ViT's tokens as a map)."""
    build, side, module, channels = MODELS[name]
    torch.manual_seed(0)
    model = build().train()
    head = nn.Linear(channels, 10)
    opt = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=0.01)
    rm = keepmix.RecursiveMix(num_classes=10, alpha=0.5, omega=0.5)
    x, y = _batch(cifar_uint8, cifar_labels, side)
    g = torch.Generator().manual_seed(0)
    hook = FeatureHook(model, module)
    losses = []
    for _ in range(2):
        xm, ym = rm(x, y, generator=g)
        logits = model(xm)
        feats = hook.features
        assert feats.ndim == 4 and feats.shape[:2] == (8, channels)
        loss = keepmix.soft_target_cross_entropy(logits, ym) + rm.consistency_loss(feats, head=head)
        rm.update(xm, ym, logits)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    hook.remove()
    assert all(torch.isfinite(torch.tensor(losses))) and rm.has_history
    assert head.weight.grad is not None and float(head.weight.grad.abs().sum()) > 0  # the consistency term reached the head
