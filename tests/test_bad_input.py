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


# ------------------------------------------------------------------ the audit's kinds (issue 22)
MIXING = {
    "Mixup": lambda: keepmix.Mixup(num_classes=3),
    "CutMix": lambda: keepmix.CutMix(num_classes=3),
    "MixupCutMix": lambda: keepmix.MixupCutMix(num_classes=3),
    "KeepCutMix": lambda: keepmix.KeepCutMix(num_classes=3),
    "ResizeMix": lambda: keepmix.ResizeMix(num_classes=3),
    "SaliencyMix": lambda: keepmix.SaliencyMix(num_classes=3),
    "FMix": lambda: keepmix.FMix(num_classes=3),
    "RecursiveMix": lambda: keepmix.RecursiveMix(3),
}
BAD_ROWS = {
    "sum 5": torch.tensor([[5.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
    "sum -1": torch.tensor([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
    "negative": torch.tensor([[1.5, -0.5, 0.0], [0.0, 1.0, 0.0]]),
    "NaN": torch.tensor([[float("nan"), 0.5, 0.5], [0.0, 1.0, 0.0]]),
    "all 0.5": torch.full((2, 3), 0.5),
}


@pytest.mark.parametrize("bad", sorted(BAD_ROWS))
@pytest.mark.parametrize("name", sorted(MIXING))
def test_soft_targets_that_are_not_distributions_are_refused(name, bad):
    x, s = torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8)
    with pytest.raises(ValueError, match=r"labels of shape \(B, K\) must be soft targets: finite, non-negative rows that sum to 1"):
        MIXING[name]()(x, BAD_ROWS[bad], saliency=s)


def test_soft_targets_within_the_tolerance_pass_and_come_back_as_distributions():
    y = torch.tensor([[0.9, 0.05, 0.05], [0.0, 1.0, 0.0]]).half()  # float16 rounding of a smoothed row
    _, t = keepmix.Mixup(num_classes=3)(torch.rand(2, 3, 8, 8), y, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(t.sum(1), torch.ones(2), atol=1e-2, rtol=0)


def test_label_preserving_ops_check_soft_labels_too():
    with pytest.raises(ValueError, match="labels of shape"):
        keepmix.Cutout(4)(torch.rand(2, 3, 8, 8), BAD_ROWS["sum 5"])


@pytest.mark.parametrize("bad", ["all 0.5", "NaN", "sum -1"])
def test_saliency_labels_that_are_not_distributions_are_refused(bad):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    with pytest.raises(ValueError, match=r"labels of shape \(B, K\) must be soft targets"):
        keepmix.Saliency(model)(torch.rand(2, 3, 8, 8), BAD_ROWS[bad])


def test_recursive_mix_refuses_a_history_of_another_value_range():
    rm = keepmix.RecursiveMix(3)
    x, y = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    rm.update(x, y, torch.randn(2, 3))
    with pytest.raises(ValueError, match="images are torch.uint8 but the history is torch.float32"):
        rm((x * 255).to(torch.uint8), y)
    rm.update((x * 255).to(torch.uint8), y, torch.randn(2, 3))
    with pytest.raises(ValueError, match="images are torch.float32 but the history is torch.uint8"):
        rm(x, y)


def test_recursive_mix_converts_a_float_history_to_the_batch_float_dtype():
    x, y, logits = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]), torch.randn(4, 3)
    outs = []
    for history in (x, x.half()):  # a float32 history, and the same history given as float16
        rm = keepmix.RecursiveMix(3, alpha=1.0)
        rm.update(history, y, logits)
        outs.append(rm(x.half(), y.roll(1), generator=torch.Generator().manual_seed(0)))
    assert outs[0][0].dtype == torch.float16
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert not torch.equal(outs[0][0], x.half())  # something was pasted


def test_a_saliency_map_that_carries_a_gradient_is_detached():
    x, y = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    s = torch.rand(2, 8, 8).requires_grad_()
    out = keepmix.KeepCutout(4)(x, y, saliency=s, generator=torch.Generator().manual_seed(0))
    want = keepmix.KeepCutout(4)(x, y, saliency=s.detach(), generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[0], want[0]) and s.grad is None
    # A saliency_fn whose map is still attached to a model's graph.
    w = torch.ones(1, requires_grad=True)
    op = keepmix.KeepCutout(4, saliency_fn=lambda images, labels: images.mean(1) * w)
    out = op(x, y, generator=torch.Generator().manual_seed(0))
    assert not out[0].requires_grad


def test_attentive_cutmix_refuses_a_nan_teacher_map():
    def teacher(images):
        f = torch.rand(images.shape[0], 4, 4, 4)
        f[:, :, 0, 0] = float("nan")
        return f

    with pytest.raises(ValueError, match="teacher teacher returned a feature map with NaN"):
        keepmix.AttentiveCutMix(teacher, num_classes=3)(torch.rand(2, 3, 16, 16), torch.tensor([0, 1]))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((2**70,), r"seed must be an int in \[0, 2\*\*63\)"),
        ((-1,), r"seed must be an int in \[0, 2\*\*63\)"),
        ((1.5,), r"seed must be an int"),
        ((0, "bogus"), "device must be a torch.device or a device string"),
    ],
)
def test_worker_generator_names_its_bad_argument(args, match):
    with pytest.raises(ValueError, match=match):
        keepmix.worker_generator(*args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_worker_generator_on_cuda_without_a_gpu():
    with pytest.raises(ValueError, match="device='cuda': CUDA is not available"):
        keepmix.worker_generator(0, device="cuda")


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_an_empty_batch_passes_through(name):
    op = FACTORIES[name]()
    x, y = torch.rand(0, 3, 8, 8), torch.zeros(0, dtype=torch.int64)
    out = op(x, y, saliency=torch.rand(0, 8, 8))
    assert out[0].shape == (0, 3, 8, 8)
    if op.mixes_labels:
        assert out[1].shape[0] == 0 and out[1].dtype == torch.float32
    else:
        assert out[1] is y
