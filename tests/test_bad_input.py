"""Bad input to any op, placer or MixupCutMix gets a clear error that names what was wrong."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from test_contract import FACTORIES

import keepmix
from keepmix.base import Op


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_what_the_op_takes(name):
    op = FACTORIES[name]()
    labels = torch.tensor([0, 1])
    with pytest.raises(TypeError, match=r"images must be a \(B, C, H, W\) tensor"):
        op([[0.0]], labels)
    with pytest.raises(ValueError, match=r"images must have shape \(B, C, H, W\)"):
        op(torch.rand(2, 3, 4, 8, 8), labels)
    with pytest.raises(TypeError, match="images must be uint8 or floating point"):
        op(torch.zeros(2, 3, 8, 8, dtype=torch.int32), labels)
    pil = Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8))
    if not op.pil_image:
        with pytest.raises(TypeError, match="not a PIL image"):
            op(pil)
    if not op.single_image:
        with pytest.raises(ValueError, match=r"takes a \(B, C, H, W\) batch, got a single image"):
            op(torch.rand(3, 8, 8))
    # Labels that do not fit the batch are named.
    with pytest.raises(ValueError, match="labels must have shape"):
        op(torch.rand(2, 3, 8, 8), torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="labels must be a torch.Tensor"):
        op(torch.rand(2, 3, 8, 8), [0, 1])


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_forward_is_written_once(name):
    assert type(FACTORIES[name]()).forward is Op.forward


def test_mixing_ops_need_labels_and_valid_ones():
    x = torch.rand(2, 3, 8, 8)
    for op in (keepmix.CutMix(num_classes=3), keepmix.Mixup(num_classes=3), keepmix.MixupCutMix(num_classes=3)):
        with pytest.raises(ValueError, match="mixes labels"):
            op(x)
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
            op(x, torch.tensor([0, 3]))
        with pytest.raises(ValueError, match="K = num_classes = 3"):
            op(x, torch.rand(2, 4))


def test_saliency_maps_are_checked():
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="saliency must have shape"):
        keepmix.KeepCutout(4)(x, saliency=torch.rand(2, 8, 9))
    with pytest.raises(ValueError, match="needs a saliency map"):
        keepmix.KeepCutout(4)(x)
    with pytest.raises(TypeError, match="saliency must be floating point"):
        keepmix.KeepCutout(4)(x, saliency=torch.ones(2, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN or infinite"):
        keepmix.KeepCutout(4)(x, saliency=torch.full((2, 8, 8), float("nan")))
    with pytest.raises(ValueError, match=r"saliency_fn\(images, labels\) must have shape"):
        keepmix.KeepCutout(4, saliency_fn=lambda im, lab: torch.rand(2, 4, 4))(x)


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: keepmix.KeepPlacer(q=1.0), "q"),
        (lambda: keepmix.KeepPlacer(score="max"), "score"),
        (lambda: keepmix.KeepPlacer(whole_boxes=1), "whole_boxes"),
        (lambda: keepmix.KeepPlacer(saliency_fn="model"), "saliency_fn"),
        (lambda: keepmix.KeepPlacer(candidate_stride=0), "candidate_stride"),
        (lambda: keepmix.UniformPlacer(whole_boxes="yes"), "whole_boxes"),
        (lambda: keepmix.Cutout(4, placer="keep"), "placer"),
        (lambda: keepmix.Cutout(0), "length"),
        (lambda: keepmix.Cutout(4, p=1.5), "p"),
        (lambda: keepmix.KeepCutout(4, q=0), "q"),
        (lambda: keepmix.CutMix(label_weight="pixels"), "label_weight"),
        (lambda: keepmix.CutMix(per_sample="no"), "per_sample"),
        (lambda: keepmix.KeepPaste(42), "transform"),
        (lambda: keepmix.KeepPaste(keepmix.CutMix()), "transform"),
        (lambda: keepmix.KeepAutoAugment(size=0), "size"),
        (lambda: keepmix.AutoAugment(whole_pixel_translate=1), "whole_pixel_translate"),
        (lambda: keepmix.RecursiveMix(num_classes=0), "num_classes"),
        (lambda: keepmix.MixupCutMix(prob=-0.1), "prob"),
        (lambda: keepmix.MixupCutMix(correct_lam="yes"), "correct_lam"),
        (lambda: keepmix.MixupCutMix(num_classes=2.5), "num_classes"),
        (lambda: keepmix.worker_generator(-1), "seed"),
    ],
)
def test_bad_arguments_are_named(make, name):
    with pytest.raises((TypeError, ValueError), match=name):
        make()


def test_sizes_that_cannot_fit_are_refused():
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="length 16 is larger than the 8x8 images"):
        keepmix.Cutout(16)(x)
    with pytest.raises(ValueError, match=r"size \(16, 16\) is larger than the 8x8 images"):
        keepmix.KeepAutoAugment(size=16)(x, saliency=torch.rand(2, 8, 8))


def test_apply_refuses_params_of_another_op():
    x = torch.rand(2, 3, 8, 8)
    params = keepmix.Cutout(4).sample_params(x)
    with pytest.raises(TypeError, match="params must be a RandomErasingParams"):
        keepmix.RandomErasing().transform(x, None, params)
    with pytest.raises(ValueError, match=r"params.boxes\[0\]"):
        keepmix.Cutout(4).transform(x, None, params.replace(boxes=torch.tensor([[0, 0, 9, 9], [0, 0, 1, 1]])))
