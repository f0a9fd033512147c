"""AutoAugment / RandAugment / TrivialAugmentWide: per-image draws, and agreement with a
per-image PIL loop that applies the very same parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from keepmix.functional import policy_ops
from keepmix.policies import (
    AUTOAUGMENT_POLICIES,
    OP_NAMES,
    SIGNED_OPS,
    AutoAugment,
    PolicyParams,
    RandAugment,
    TrivialAugmentWide,
    magnitude_table,
)

FILL = (128, 64, 200)
ENHANCE = {
    "Color": ImageEnhance.Color,
    "Contrast": ImageEnhance.Contrast,
    "Brightness": ImageEnhance.Brightness,
    "Sharpness": ImageEnhance.Sharpness,
}


def pil_op(im: Image.Image, op: str, m: float, center: tuple[float, float]) -> Image.Image:
    """The reference: one op on one PIL image with a signed magnitude."""
    nearest = Image.NEAREST
    if op == "Identity":
        return im
    if op in ("AutoContrast", "Equalize", "Invert"):
        return getattr(ImageOps, op.lower() if op != "AutoContrast" else "autocontrast")(im)
    if op == "Posterize":
        return ImageOps.posterize(im, int(m))
    if op == "Solarize":
        return ImageOps.solarize(im, m)
    if op in ENHANCE:
        return ENHANCE[op](im).enhance(1.0 + m)
    if op == "Rotate":
        return im.rotate(m, resample=nearest, fillcolor=FILL)
    data = {
        "ShearX": (1, m, 0, 0, 1, 0),
        "ShearY": (1, 0, 0, m, 1, 0),
        "TranslateX": (1, 0, -m, 0, 1, 0),
        "TranslateY": (1, 0, 0, 0, 1, -m),
    }.get(op)
    if data is not None:
        return im.transform(im.size, Image.AFFINE, data, nearest, fillcolor=FILL)
    assert op == "Cutout"
    a = np.array(im)
    h, w = a.shape[:2]
    side = int(round(m))
    cy, cx = min(int(center[0] * h), h - 1), min(int(center[1] * w), w - 1)
    y1, x1 = cy - side // 2, cx - side // 2
    a[max(y1, 0) : max(y1 + side, 0), max(x1, 0) : max(x1 + side, 0)] = FILL
    return Image.fromarray(a)


def apply_ops(x: torch.Tensor, p: PolicyParams, fill=0.0, interpolation: str = "nearest") -> torch.Tensor:
    """The functional kernel on a PolicyParams' fields."""
    return policy_ops.apply_ops(x, p.ops, p.signed_magnitudes, p.applied, p.centers, fill, interpolation)


def pil_reference(x: torch.Tensor, p: PolicyParams) -> torch.Tensor:
    out = []
    mags = p.signed_magnitudes
    for i in range(x.shape[0]):
        im = Image.fromarray(x[i].permute(1, 2, 0).numpy())
        for n in range(p.ops.shape[1]):
            if p.applied[i, n]:
                im = pil_op(im, OP_NAMES[int(p.ops[i, n])], float(mags[i, n]), tuple(p.centers[i, n].tolist()))
        out.append(torch.from_numpy(np.array(im)).permute(2, 0, 1))
    return torch.stack(out)


@pytest.mark.parametrize(
    "policy",
    [
        AutoAugment("cifar10", fill=FILL),
        AutoAugment("svhn", fill=FILL),
        AutoAugment("imagenet", fill=FILL),
        RandAugment(2, 9, fill=FILL),
        RandAugment(3, 27, fill=FILL, ops=OP_NAMES),
        TrivialAugmentWide(fill=FILL),
        TrivialAugmentWide(fill=FILL, ops=OP_NAMES),
        AutoAugment("cifar10", fill=FILL, whole_pixel_translate=False),
        RandAugment(2, 9, fill=FILL, ops=("TranslateX", "TranslateY", "Rotate"), whole_pixel_translate=False),
        TrivialAugmentWide(fill=FILL, whole_pixel_translate=False),
    ],
    ids=[
        "aa-cifar10",
        "aa-svhn",
        "aa-imagenet",
        "ra-2-9",
        "ra-3-27-all-ops",
        "ta-wide",
        "ta-wide-all-ops",
        "aa-cifar10-float-translate",
        "ra-2-9-float-translate",
        "ta-wide-float-translate",
    ],
)
def test_policy_equals_per_image_pil_loop_on_uint8(cifar_uint8, policy):
    g = torch.Generator().manual_seed(3)
    params = policy.sample_params(cifar_uint8, generator=g)
    ours = policy.transform(cifar_uint8, None, params)
    assert torch.equal(ours, pil_reference(cifar_uint8, params))
    # translations: whole pixels by default (torchvision's int()), the float value otherwise
    translate = torch.isin(params.ops, torch.tensor([OP_NAMES.index("TranslateX"), OP_NAMES.index("TranslateY")]))
    mags = params.magnitudes[translate & params.applied]
    can_translate = not (isinstance(policy, AutoAugment) and policy.policy == "imagenet")  # no translate ops there
    assert (mags.numel() > 0) == can_translate
    if policy.whole_pixel_translate:
        assert torch.equal(mags, mags.floor())
    elif can_translate:
        assert (mags != mags.floor()).any()


def test_whole_pixel_translate_moves_whole_pixels_and_false_keeps_the_float(cifar_uint8):
    # TranslateX at bin 9 of 10 on 32 px: 150 / 331 * 32 = 14.50... px; torchvision moves 14.
    x = cifar_uint8[:4]
    op_x = OP_NAMES.index("TranslateX")
    ops = torch.full((4, 1), op_x)
    on = torch.ones(4, 1, dtype=torch.bool)
    centers = torch.zeros(4, 1, 2)
    whole = magnitude_table("standard", 10, 32, 32)[op_x, 9].item()
    exact = magnitude_table("standard", 10, 32, 32, whole_pixel_translate=False)[op_x, 9].item()
    assert whole == 14.0 and exact == pytest.approx(150 / 331 * 32) and exact != whole
    p_whole = PolicyParams(ops, torch.full((4, 1), whole), torch.ones(4, 1), on, centers)
    p_float = PolicyParams(ops, torch.full((4, 1), exact), torch.ones(4, 1), on, centers)
    out_whole, out_float = apply_ops(x, p_whole, fill=FILL), apply_ops(x, p_float, fill=FILL)
    # a whole-pixel shift is exactly a slice: image columns ..18 move to 14.., the rest is fill
    assert torch.equal(out_whole[..., 14:], x[..., :18])
    assert torch.equal(out_whole[..., :14], torch.tensor(FILL, dtype=torch.uint8).view(1, 3, 1, 1).expand(4, 3, 32, 14))
    assert not torch.equal(out_whole, out_float)
    assert torch.equal(out_float, pil_reference(x, p_float))  # PIL's float translate (nearest)
    # the policies draw exactly these magnitudes (a translate-only RandAugment at bin 9 of 10)
    for flag, want in ((True, whole), (False, exact)):
        op = RandAugment(1, 9, num_magnitude_bins=10, ops=("TranslateX",), fill=FILL, whole_pixel_translate=flag)
        params = op.sample_params(x, generator=torch.Generator().manual_seed(0))
        assert torch.equal(params.magnitudes, torch.full((4, 1), want, dtype=torch.float32))
        out = op.transform(x, None, params)
        assert torch.equal(out, pil_reference(x, params))
        for i in range(4):  # each image's own sign: right by +m or left by -m
            ref_i = (out_whole if flag else out_float)[i] if params.signs[i, 0] > 0 else None
            if ref_i is not None:
                assert torch.equal(out[i], ref_i)
            elif flag:
                assert torch.equal(out[i, :, :, :18], x[i, :, :, 14:])
    assert (params.signs < 0).any() and (params.signs > 0).any()  # both directions were checked
    with pytest.raises(TypeError, match="whole_pixel_translate"):
        RandAugment(whole_pixel_translate=1)


def test_float_images_follow_the_uint8_result(cifar_uint8):
    policy = RandAugment(2, 14, fill=0)
    params = policy.sample_params(cifar_uint8, generator=torch.Generator().manual_seed(0))
    out_u = policy.transform(cifar_uint8, None, params)
    out_f = policy.transform(cifar_uint8.float() / 255, None, params)
    assert out_f.dtype == torch.float32
    diff = (out_f * 255 - out_u.float()).abs()
    # Enhance ops truncate on uint8 and a second op can amplify that slightly (autocontrast).
    assert diff.mean() < 0.3
    assert (diff.amax(dim=(1, 2, 3)) <= 3.0).float().mean() > 0.9


def test_ops_are_drawn_per_image(cifar_uint8):
    for policy in (AutoAugment(), RandAugment(), TrivialAugmentWide()):
        p = policy.sample_params(cifar_uint8, generator=torch.Generator().manual_seed(1))
        assert p.ops[:, 0].unique().numel() > 5
    aa = AutoAugment().sample_params(cifar_uint8, generator=torch.Generator().manual_seed(1))
    assert aa.sub_policies.unique().numel() > 10
    ta = TrivialAugmentWide().sample_params(cifar_uint8, generator=torch.Generator().manual_seed(1))
    assert ta.magnitudes.unique().numel() > 10
    # the outputs of one batch differ from applying one image's ops to every image
    out = RandAugment()(cifar_uint8, generator=torch.Generator().manual_seed(2))
    assert (out != cifar_uint8).flatten(1).any(1).float().mean() > 0.5


def test_params_have_documented_shapes_and_signs(cifar_uint8):
    p = RandAugment(num_ops=3).sample_params(cifar_uint8, generator=torch.Generator().manual_seed(0))
    b = cifar_uint8.shape[0]
    assert p.ops.shape == p.magnitudes.shape == p.signs.shape == p.applied.shape == (b, 3)
    assert p.centers.shape == (b, 3, 2) and p.ops.dtype == torch.int64 and p.applied.all()
    signed = torch.tensor([OP_NAMES[int(o)] in SIGNED_OPS for o in p.ops.flatten()]).view(b, 3)
    assert torch.all(p.signs[~signed] == 1)
    assert (p.signs[signed] == -1).any() and (p.signs[signed] == 1).any()
    assert torch.all((p.centers >= 0) & (p.centers < 1))


def test_same_generator_seed_gives_same_output(cifar_uint8):
    for policy in (AutoAugment("svhn"), RandAugment(), TrivialAugmentWide()):
        a = policy(cifar_uint8, generator=torch.Generator().manual_seed(7))
        b = policy(cifar_uint8, generator=torch.Generator().manual_seed(7))
        c = policy(cifar_uint8, generator=torch.Generator().manual_seed(8))
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_batch_result_equals_single_image_results(cifar_uint8):
    policy = RandAugment(2, 20, ops=OP_NAMES)
    p = policy.sample_params(cifar_uint8, generator=torch.Generator().manual_seed(4))
    out = policy.transform(cifar_uint8, None, p)
    for i in range(0, 64, 9):
        single = PolicyParams(*(t[i : i + 1] for t in (p.ops, p.magnitudes, p.signs, p.applied, p.centers)))
        assert torch.equal(out[i : i + 1], policy.transform(cifar_uint8[i : i + 1], None, single))


def test_published_policies_have_25_two_step_sub_policies():
    assert set(AUTOAUGMENT_POLICIES) == {"cifar10", "svhn", "imagenet"}
    for name, subs in AUTOAUGMENT_POLICIES.items():
        assert len(subs) == 25, name
        for sub in subs:
            assert len(sub) == 2
            for op, prob, level in sub:
                assert op in OP_NAMES and 0.0 <= prob <= 1.0
                assert (level is None) == (op in ("AutoContrast", "Equalize", "Invert"))
                assert level is None or 0 <= level <= 9
    assert AUTOAUGMENT_POLICIES["cifar10"][0] == (("Invert", 0.1, None), ("Contrast", 0.2, 6))


def test_magnitude_tables():
    t = magnitude_table("standard", 31, 32, 32)
    op = {n: i for i, n in enumerate(OP_NAMES)}
    assert t[op["Rotate"], 9] == pytest.approx(9.0)
    assert t[op["ShearX"], 30] == pytest.approx(0.3)
    assert t[op["TranslateX"], 30] == 14.0  # whole pixels by default: int(14.50...)
    tf = magnitude_table("standard", 31, 32, 32, whole_pixel_translate=False)
    assert tf[op["TranslateX"], 30] == pytest.approx(150 / 331 * 32)
    assert torch.equal(t[op["TranslateX"]], tf[op["TranslateX"]].floor())
    assert torch.equal(t[op["TranslateY"]], tf[op["TranslateY"]].floor())
    keep = [i for i, n in enumerate(OP_NAMES) if n not in ("TranslateX", "TranslateY")]
    assert torch.equal(t[keep], tf[keep])  # nothing else changes
    assert t[op["Posterize"]].tolist()[:1] == [8.0] and t[op["Posterize"], 30] == 4
    assert t[op["Solarize"], 0] == 255 and t[op["Solarize"], 30] == 0
    w = magnitude_table("wide", 31, 32, 32)
    assert w[op["Rotate"], 30] == pytest.approx(135.0) and w[op["TranslateY"], 30] == pytest.approx(32.0)
    assert w[op["TranslateY"], 1] == 1.0  # 32 / 30 = 1.07 px -> 1 px
    assert magnitude_table("wide", 31, 32, 32, whole_pixel_translate=False)[op["TranslateY"], 1] == pytest.approx(32 / 30)
    assert w[op["Posterize"], 30] == 2
    ra = RandAugment(magnitude=30).sample_params(torch.zeros(64, 3, 8, 8, dtype=torch.uint8))
    rot = ra.ops == op["Rotate"]
    assert torch.all(ra.magnitudes[rot] == 30.0)


def test_single_channel_and_float_inputs_keep_dtype_and_are_not_modified(cifar_uint8):
    grey = cifar_uint8[:16, :1].clone()
    before = grey.clone()
    out = RandAugment(ops=OP_NAMES)(grey, generator=torch.Generator().manual_seed(0))
    assert out.shape == grey.shape and out.dtype == torch.uint8 and torch.equal(grey, before)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        xf = (cifar_uint8[:8].float() / 255).to(dtype)
        keep = xf.clone()
        y = AutoAugment()(xf, generator=torch.Generator().manual_seed(0))
        assert y.dtype == dtype and torch.equal(xf, keep)


def test_bad_arguments_are_rejected(cifar_uint8):
    with pytest.raises(ValueError, match="policy"):
        AutoAugment("cifar100")
    with pytest.raises(ValueError, match="magnitude"):
        RandAugment(magnitude=31)
    with pytest.raises(ValueError, match="magnitude"):
        RandAugment(magnitude=-1)
    with pytest.raises(ValueError, match="num_ops"):
        RandAugment(num_ops=0)
    with pytest.raises(ValueError, match="num_magnitude_bins"):
        TrivialAugmentWide(num_magnitude_bins=1)
    with pytest.raises(ValueError, match="unknown ops"):
        RandAugment(ops=("Rotate", "Blur"))
    with pytest.raises(ValueError, match="fill"):
        RandAugment(fill=(1, 2))
    with pytest.raises(ValueError, match="interpolation"):
        AutoAugment(interpolation="bicubic")
    with pytest.raises(ValueError, match="channels"):
        RandAugment()(torch.zeros(2, 4, 8, 8, dtype=torch.uint8))
    with pytest.raises(TypeError, match="generator"):
        RandAugment()(cifar_uint8, generator=0)
    p = RandAugment().sample_params(cifar_uint8)
    with pytest.raises(ValueError, match="params.ops"):
        RandAugment().transform(cifar_uint8[:3], None, p)
    with pytest.raises(ValueError, match="outside"):
        apply_ops(cifar_uint8, p.replace(ops=torch.full_like(p.ops, len(OP_NAMES))))
    with pytest.raises(ValueError, match="fill"):
        RandAugment(fill=300)(cifar_uint8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_result(cifar_uint8):
    policy = RandAugment(2, 15, ops=OP_NAMES)
    p = policy.sample_params(cifar_uint8, generator=torch.Generator().manual_seed(0))
    cpu = policy.transform(cifar_uint8, None, p)
    gpu = policy.transform(cifar_uint8.cuda(), None, p)
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)
    # a CPU generator gives the same params whatever the device of the batch
    q = policy.sample_params(cifar_uint8.cuda(), generator=torch.Generator().manual_seed(0))
    assert torch.equal(q.ops.cpu(), p.ops)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_merged_warp_families_equal_op_by_op_warps(cifar_uint8, dtype):
    # every image draws a warp: Rotate / ShearX / ShearY share one call, the translations
    # another; each image must get exactly what its op alone gives (and PIL on uint8).
    b = cifar_uint8.shape[0]
    g = torch.Generator().manual_seed(5)
    warps = torch.tensor([OP_NAMES.index(n) for n in ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")])
    ops = warps[torch.randint(0, 5, (b, 2), generator=g)]
    ops[:8, 0] = OP_NAMES.index("Rotate")  # some images with a single-op warp group too
    mags = torch.rand(b, 2, generator=g) * 9
    signs = torch.where(torch.rand(b, 2, generator=g) < 0.5, -1.0, 1.0)
    p = PolicyParams(ops, mags, signs, torch.ones(b, 2, dtype=torch.bool), torch.rand(b, 2, 2, generator=g))
    x = cifar_uint8 if dtype == torch.uint8 else cifar_uint8.to(dtype) / 255
    out = apply_ops(x, p, fill=FILL if dtype == torch.uint8 else 0.5)
    for i in range(0, b, 7):
        one = PolicyParams(*(t[i : i + 1] for t in (p.ops, p.magnitudes, p.signs, p.applied, p.centers)))
        assert torch.equal(out[i : i + 1], apply_ops(x[i : i + 1], one, fill=FILL if dtype == torch.uint8 else 0.5))
    if dtype == torch.uint8:
        assert torch.equal(out, pil_reference(cifar_uint8, p))


def test_geometric_matrices_equal_the_named_matrix_builders():
    from keepmix.functional import geometry as G
    from keepmix.functional.policy_ops import _geometric_matrices

    names = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "Identity", "Equalize")
    ops = torch.tensor([OP_NAMES.index(n) for n in names]).repeat(5)
    mag = torch.linspace(-31.0, 29.0, ops.numel())
    m = _geometric_matrices(ops, mag, 24, 40)
    zero = torch.zeros(1)
    for i, op in enumerate(ops.tolist()):
        v = mag[i : i + 1]
        want = {
            "Rotate": lambda v=v: G.rotation_matrix(v, 24, 40),
            "ShearX": lambda v=v: G.shear_matrix(v, "x"),
            "ShearY": lambda v=v: G.shear_matrix(v, "y"),
            "TranslateX": lambda v=v: G.translation_matrix(v, zero),
            "TranslateY": lambda v=v: G.translation_matrix(zero, v),
        }.get(OP_NAMES[op], lambda: torch.tensor([[1.0, 0, 0, 0, 1, 0]], dtype=torch.float64))()
        assert torch.equal(m[i], want[0]), OP_NAMES[op]


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_every_reordering_path_equals_pil_and_single_images(cifar_uint8, dtype):
    # Steps that exercise each path of apply_ops' sorted-batch loop: the whole batch in one
    # single-op family (no reorder), a mixed step (reorder, in-place slice writes), a step
    # that skips every image, a whole-batch merged warp family, a second mixed step whose
    # reorder reuses a buffer of this call, then the inverse permutation.
    b = cifar_uint8.shape[0]
    g = torch.Generator().manual_seed(11)
    ops = torch.empty(b, 5, dtype=torch.int64)
    ops[:, 0] = OP_NAMES.index("Equalize")
    ops[:, 1] = torch.randint(0, len(OP_NAMES), (b,), generator=g)
    ops[:, 2] = OP_NAMES.index("Solarize")
    warps = torch.tensor([OP_NAMES.index(n) for n in ("Rotate", "ShearX", "ShearY")])
    ops[:, 3] = warps[torch.randint(0, 3, (b,), generator=g)]
    ops[:, 4] = torch.randint(0, len(OP_NAMES), (b,), generator=g)
    mags = torch.rand(b, 5, generator=g) * 0.4
    mags[:, 1] *= 20
    mags[:, 4] *= 20
    enhance = torch.isin(ops, torch.tensor([OP_NAMES.index(n) for n in ENHANCE]))
    mags[enhance] = mags[enhance].clamp_max(0.9)  # factors 1 +- m stay in [0.1, 1.9], as the policies draw
    mags[ops == OP_NAMES.index("Posterize")] = 5.0
    mags[ops == OP_NAMES.index("Solarize")] = 140.0
    signs = torch.where(torch.rand(b, 5, generator=g) < 0.5, -1.0, 1.0)
    signs[ops == OP_NAMES.index("Posterize")] = 1.0
    signs[ops == OP_NAMES.index("Solarize")] = 1.0
    applied = torch.rand(b, 5, generator=g) < 0.8
    applied[:, 0] = True
    applied[:, 2] = False  # every image skips this step
    applied[:, 3] = True
    p = PolicyParams(ops, mags, signs, applied, torch.rand(b, 5, 2, generator=g))
    x = cifar_uint8.clone() if dtype == torch.uint8 else cifar_uint8.to(dtype) / 255
    before = x.clone()
    fill = FILL if dtype == torch.uint8 else (0.5, 0.25, 0.75)
    out = apply_ops(x, p, fill=fill)
    assert torch.equal(x, before) and out.data_ptr() != x.data_ptr()
    for i in range(0, b, 5):
        one = PolicyParams(*(t[i : i + 1] for t in (p.ops, p.magnitudes, p.signs, p.applied, p.centers)))
        assert torch.equal(out[i : i + 1], apply_ops(x[i : i + 1], one, fill=fill))
    if dtype == torch.uint8:
        assert torch.equal(out, pil_reference(cifar_uint8, p))


def test_steps_that_change_nothing_still_return_a_new_tensor(cifar_uint8):
    b = cifar_uint8.shape[0]
    p = PolicyParams(
        torch.zeros(b, 2, dtype=torch.int64), torch.zeros(b, 2), torch.ones(b, 2), torch.ones(b, 2, dtype=torch.bool), torch.zeros(b, 2, 2)
    )  # Identity twice
    out = apply_ops(cifar_uint8, p)
    assert torch.equal(out, cifar_uint8) and out.data_ptr() != cifar_uint8.data_ptr()


@pytest.mark.parametrize(
    "make",
    [
        lambda fill: AutoAugment("cifar10", fill=fill),
        lambda fill: RandAugment(2, 14, fill=fill, ops=OP_NAMES),
        lambda fill: TrivialAugmentWide(fill=fill),
    ],
    ids=["aa", "ra", "ta"],
)
def test_pil_and_single_images_equal_the_batched_result(cifar_uint8, make):
    # A PIL image and a (C, H, W) image go through the op as a batch of one: the same
    # generator seed gives the same params and so the batch-of-one result, returned as the
    # input's type (PIL mode kept).
    policy, grey_policy = make(FILL), make(90)
    changed = 0
    for i, seed in ((0, 0), (5, 1), (11, 2), (20, 3), (33, 4), (47, 5)):
        one = cifar_uint8[i : i + 1]
        params = policy.sample_params(one, generator=torch.Generator().manual_seed(seed))
        want = policy.transform(one, None, params)
        assert torch.equal(want, policy(one, generator=torch.Generator().manual_seed(seed)))
        single = policy(one[0], generator=torch.Generator().manual_seed(seed))
        assert single.shape == (3, 32, 32) and single.dtype == torch.uint8 and torch.equal(single, want[0])
        pil = Image.fromarray(one[0].permute(1, 2, 0).numpy())
        out = policy(pil, generator=torch.Generator().manual_seed(seed))
        assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == pil.size
        assert torch.equal(torch.from_numpy(np.array(out)).permute(2, 0, 1), want[0])
        grey = one[:, :1]
        want_grey = grey_policy(grey, generator=torch.Generator().manual_seed(seed))
        out_grey = grey_policy(Image.fromarray(grey[0, 0].numpy(), mode="L"), generator=torch.Generator().manual_seed(seed))
        assert out_grey.mode == "L" and torch.equal(torch.from_numpy(np.array(out_grey))[None], want_grey[0])
        # labels pass through unchanged for a single image too
        out_l, label = policy(one[0], 3, generator=torch.Generator().manual_seed(seed))
        assert label == 3 and torch.equal(out_l, want[0])
        changed += int(not torch.equal(want, one))
    assert changed >= 3  # the comparisons are not all of unchanged images


def test_magnitude_tables_are_torchvision_float32_values():
    """Built in float32 as torchvision builds them (issue 21): not a float64 table rounded."""
    op = {n: i for i, n in enumerate(OP_NAMES)}
    t = magnitude_table("standard", 31, 32, 32)
    assert t.dtype == torch.float32
    assert t[op["Brightness"], 9].item() == torch.linspace(0.0, 0.9, 31)[9].item() != float(torch.tensor(0.27, dtype=torch.float32))
    w = magnitude_table("wide", 31, 32, 32)
    # float32 linspace(0, 32, 31)[15] is 15.999999: int() truncates it to 15 px, as torchvision moves.
    assert w[op["TranslateX"], 15] == 15.0 and w[op["TranslateY"], 15] == 15.0
    assert magnitude_table("wide", 31, 32, 32, whole_pixel_translate=False)[op["TranslateX"], 15].item() < 16.0
    ta = TrivialAugmentWide(ops=("TranslateX",)).sample_params(torch.zeros(256, 3, 8, 8, dtype=torch.uint8))
    assert not bool((ta.magnitudes == 16.0).any())  # bin 15 gives 15 px, and no bin gives 16


def test_interpolation_takes_torchvision_style_enums_by_value(cifar_uint8):
    """torchvision's references pass ``InterpolationMode.BILINEAR``; keepmix reads the enum's
    value (no torchvision import), and says what to do about bicubic."""
    import enum

    class InterpolationMode(enum.Enum):  # the shape of torchvision's enum
        NEAREST = "nearest"
        BILINEAR = "bilinear"
        BICUBIC = "bicubic"

    op = RandAugment(interpolation=InterpolationMode.BILINEAR)
    assert op.interpolation == "bilinear"
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(op(cifar_uint8[:8], generator=g()), RandAugment(interpolation="bilinear")(cifar_uint8[:8], generator=g()))
    assert TrivialAugmentWide(interpolation=InterpolationMode.NEAREST).interpolation == "nearest"
    with pytest.raises(ValueError, match="bicubic is not implemented"):
        AutoAugment(interpolation=InterpolationMode.BICUBIC)


def test_non_integer_uint8_fills_are_refused_with_the_rounded_value(cifar_uint8):
    with pytest.raises(ValueError, match=r"round them first \(fill=\[128, 64, 200\]\)"):
        RandAugment(fill=(127.6, 64.2, 199.5), ops=("Rotate",))(cifar_uint8[:2])
