"""What one forward of a region or mixing op costs, counted: aten ops on the capture-safe path
(each a kernel launch on a GPU), the Python calls inside keepmix, and that it compiles whole.

Limits from the lean-core issue (issue 20), at B = 8 and 32 px. The counts are the same at
B = 8 and B = 16: a call issues a fixed number of kernels whatever the batch size.

A mixing op's boundary (``Op._validate`` in base.py) turns (B,) class ids into (B, K) soft
targets; that conversion is base.py's, not the op's. For mixing ops the op's own share
(the whole call minus the boundary, counted in the same test) is held to the issue's limit
less ``LABEL_OPS`` kernels, the most the conversion may cost for the totals to hold.
"""

from __future__ import annotations

import pytest
import torch
from costs import aten_ops, python_calls

import keepmix as km

K = 10
#: Kernels the boundary may spend turning class ids into soft targets (an ``==`` against a
#: cached ``arange(K)`` and a cast) for the issue's totals to hold.
LABEL_OPS = 1

# (op, aten limit per forward on the capture path)
OPS = {
    "Cutout": (lambda: km.Cutout(16), 15),
    "Cutout-p": (lambda: km.Cutout(16, p=0.5, fill=(0.1, 0.2, 0.3)), 17),
    "RandomErasing": (lambda: km.RandomErasing(p=1.0), 30),
    "RandomErasing-p": (lambda: km.RandomErasing(), 30),
    "Mixup": (lambda: km.Mixup(num_classes=K), 12),
    "CutMix": (lambda: km.CutMix(num_classes=K), 25),
    "MixupCutMix": (lambda: km.MixupCutMix(num_classes=K), 45),
    "MixupCutMix-elem": (lambda: km.MixupCutMix(mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem", num_classes=K), 45),
    "KeepCutout": (lambda: km.KeepCutout(16), 60),
}
#: Python calls inside keepmix per forward (the issue's limit, base.py's share included).
PYTHON_LIMIT = 40


def _batch(b: int):
    g = torch.Generator().manual_seed(0)
    return torch.rand(b, 3, 32, 32, generator=g), torch.randint(0, K, (b,), generator=g), torch.rand(b, 32, 32, generator=g)


def _call(op, b: int):
    x, y, s = _batch(b)

    def call():
        return op(x, y, saliency=s, generator=torch.Generator().manual_seed(1))

    call()  # the first call builds the cached constants
    return call, (x, y, s)


def _own(op, b: int) -> tuple[int, int]:
    """(aten ops of the whole forward, of the forward less the boundary validation)."""
    call, (x, y, s) = _call(op, b)
    total = sum(aten_ops(call).values())
    boundary = sum(aten_ops(lambda: op._validate(x, y, s, None)).values())
    return total, total - boundary


@pytest.mark.parametrize("name", sorted(OPS))
def test_aten_ops_per_forward_are_bounded_and_independent_of_the_batch(name):
    make, limit = OPS[name]
    op = make()
    (t8, own8), (t16, own16) = _own(op, 8), _own(op, 16)
    assert (t8, own8) == (t16, own16), f"{name}: {t8} ops at B = 8, {t16} at B = 16"
    if op.mixes_labels:
        assert own8 <= limit - LABEL_OPS, f"{name}: {own8} ops of its own (limit {limit} less {LABEL_OPS} for the labels)"
    else:
        assert t8 <= limit, f"{name}: {t8} aten ops per forward, limit {limit}"


@pytest.mark.parametrize("name", sorted(OPS))
def test_python_calls_per_forward(name):
    op = OPS[name][0]()
    call, _ = _call(op, 8)
    counts = python_calls(call)
    assert sum(counts.values()) <= PYTHON_LIMIT, counts


def test_the_fast_and_capture_paths_agree_on_the_counted_ops():
    # The counts are of the capture path; the CPU default path gives the same results bitwise.
    from keepmix import engine

    for name in ("Cutout", "RandomErasing-p", "CutMix", "MixupCutMix-elem", "KeepCutout"):
        op = OPS[name][0]()
        x, y, s = _batch(8)
        outs = []
        for strategy in ("fast", "capture"):
            with engine.strategy(strategy):
                outs.append(op(x, y, saliency=s, generator=torch.Generator().manual_seed(2)))
        assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1]), name


def test_mixup_enabled_false_returns_the_images_and_smoothed_one_hot_targets():
    # timm's Mixup.__call__ with mixup_enabled = False: lam 1 for every image, so the images
    # come back unmixed and the targets are the label-smoothed one-hot labels.
    op = km.MixupCutMix(mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem", label_smoothing=0.1, num_classes=K)
    x, y, s = _batch(8)
    op.mixup_enabled = False
    out, t = op(x, y, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, x)
    want = torch.full((8, K), 0.1 / K).scatter_(1, y[:, None], 1 - 0.1 + 0.1 / K)
    torch.testing.assert_close(t, want, atol=1e-7, rtol=0)
    op.mixup_enabled = True
    assert not torch.equal(op(x, y, generator=torch.Generator().manual_seed(3))[0], x)


def test_keep_cutmix_inside_the_switch_skips_the_saliency_when_no_image_gets_cutmix():
    # Mixup-only draws: the placer's saliency_fn is never called.
    calls = []

    def saliency_fn(images, labels):
        calls.append(1)
        return torch.rand(images.shape[0], *images.shape[-2:])

    op = km.MixupCutMix(mixup_alpha=1.0, cutmix_alpha=0.0, num_classes=K, placer=km.KeepPlacer(saliency_fn=saliency_fn))
    x, y, _ = _batch(8)
    op(x, y, generator=torch.Generator().manual_seed(4))
    op.mixup_enabled = False
    op2 = km.MixupCutMix(mixup_alpha=0.0, cutmix_alpha=1.0, num_classes=K, placer=km.KeepPlacer(saliency_fn=saliency_fn))
    op2.mixup_enabled = False
    op2(x, y, generator=torch.Generator().manual_seed(4))
    assert calls == []
    op2.mixup_enabled = True
    op2(x, y, generator=torch.Generator().manual_seed(4))
    assert calls == [1]


def test_keep_cutmix_in_the_switch_on_a_uint8_collate_path():
    # timm's prefetcher path collates uint8 images; KeepCutMix inside the switch mixes them.
    op = km.MixupCutMix(mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem", num_classes=K, placer=km.KeepPlacer())
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (8, 3, 32, 32), generator=g, dtype=torch.uint8)
    y, s = torch.randint(0, K, (8,), generator=g), torch.rand(8, 32, 32, generator=g)
    params = op.sample_params(x, y, saliency=s, generator=torch.Generator().manual_seed(6))
    out, t = op.transform(x, y, params)
    assert out.dtype == torch.uint8 and t.shape == (8, K)
    for i in range(8):  # pasted pixels are the partner's, bitwise
        if params.use_cutmix[i]:
            y1, x1, y2, x2 = params.boxes[i].tolist()
            assert torch.equal(out[i, :, y1:y2, x1:x2], x[7 - i, :, y1:y2, x1:x2])


def test_cutmix_sides_take_one_minus_lam_in_float64():
    # lam a hair above 0: 1 - lam in float32 is 1.0 (a full side), in float64 just below 1,
    # so the side is int(32 * sqrt(1 - lam)) = 31 as the official rule gives.
    from keepmix.mixup_cutmix import MixupCutMix

    op = MixupCutMix(mixup_alpha=0.0, cutmix_alpha=1.0, mode="elem", num_classes=K)
    lam = torch.full((4, 1, 1), 1e-9, dtype=torch.float64)
    u = torch.full((4, 1, 2), 0.5, dtype=torch.float64)
    size, _, _ = op._size_and_corner(lam, u, 32, 32)
    assert size.flatten().tolist() == [31.0] * 8
    assert float(torch.tensor(1e-9, dtype=torch.float32).neg().add(1.0)) == 1.0  # the float32 rule would give 32


COMPILED = {
    "Cutout": OPS["Cutout"][0],
    "CutMix": OPS["CutMix"][0],
    "MixupCutMix-cutmix": lambda: km.MixupCutMix(mixup_alpha=0.0, cutmix_alpha=1.0, mode="elem", num_classes=K),
    "KeepCutout": OPS["KeepCutout"][0],
}


# Pastes and fills compile bitwise. A float blend (Mixup's lerp) is left out: inductor lowers
# lerp to its own arithmetic, which can differ from ATen's in the last bit.
@pytest.mark.parametrize("name", sorted(COMPILED))
def test_whole_forward_compiles_as_one_graph_and_transform_equals_eager(name):
    op = COMPILED[name]()
    x, y, s = _batch(4)
    torch._dynamo.reset()
    out, targets = torch.compile(op, fullgraph=True, dynamic=False)(x, y, saliency=s)
    assert out.shape == x.shape and targets.shape[0] == 4
    params = op.sample_params(x, y, saliency=s, generator=torch.Generator().manual_seed(7))
    torch._dynamo.reset()
    got = torch.compile(op.transform, fullgraph=True, dynamic=False)(x, y, params)
    want = op.transform(x, y, params)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], atol=1e-6, rtol=0)


def test_placer_and_selection_argument_errors_name_the_argument():
    from keepmix.functional.selection import num_draws, select_boxes

    with pytest.raises(TypeError, match="q must be"):
        km.KeepPlacer(q=None)  # type: ignore[arg-type]  # the value the test means to pass
    with pytest.raises(ValueError, match="q must"):
        km.KeepPlacer(q=1.5)
    s = torch.rand(4, 16, 16)
    keys = torch.rand(4, num_draws(0.6, "below") + 1, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"sizes must have shape \(B, 2\) = \(4, 2\)"):
        select_boxes(s, torch.full((3, 2), 4), 0.6, keys=keys)
