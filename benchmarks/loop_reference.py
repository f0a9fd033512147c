"""Straightforward per-image reference implementations, used only as a speed baseline.

They work the way the public KeepAugment code does (unofficial cjf8899/KeepAugment_Pytorch,
``util/keep_cutout.py``): one image at a time, parameters drawn with numpy's random state in
Python, the image changed with per-image tensor slicing, and for the Keep ops a
``while True`` loop that draws a box position and accepts it once its saliency passes the
threshold. The semantics follow keepmix's ops (not the public code's fixed threshold): the
threshold is each image's q-quantile (q = 0.6) of the scores of *all* candidate positions
of the region's size, computed per image from a numpy summed-area table, so keepmix and the
loop solve the same problem. What each function does is spelled out in its docstring and in
``bench_ops.LOOP_DESCRIPTIONS`` (copied into the results file).

Each sampling loop calls a per-image "apply" helper; the same helpers are exposed as
``*_apply_loop(images, <keepmix params>)`` so tests can check that, given keepmix's own
parameters, the loop produces exactly keepmix's output (the comparison is like for like).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from keepmix.policies import AUTOAUGMENT_POLICIES, OP_NAMES, RANDAUGMENT_OPS, SIGNED_OPS, magnitude_table

__all__ = [
    "cutout_loop",
    "random_erasing_loop",
    "mixup_loop",
    "cutmix_loop",
    "autoaugment_loop",
    "randaugment_loop",
    "trivialaugment_loop",
    "keep_cutout_loop",
    "keep_random_erasing_loop",
    "keep_cutmix_loop",
    "keep_paste_loop",
    "erase_apply_loop",
    "mixup_apply_loop",
    "cutmix_apply_loop",
    "policy_apply_loop",
    "paste_apply_loop",
    "candidate_scores_np",
    "keep_threshold",
    "gridmask_loop",
    "gridmask_apply_loop",
    "augmix_loop",
    "augmix_apply_loop",
    "attentive_cutmix_loop",
    "attentive_apply_loop",
    "resizemix_loop",
    "resizemix_apply_loop",
    "saliencymix_loop",
    "fmix_loop",
    "fmix_apply_loop",
]

# By module path: keepmix.functional re-exports a *function* named ``color``, which shadows the
# submodule for ``from keepmix.functional import color``.
C = importlib.import_module("keepmix.functional.color")
G = importlib.import_module("keepmix.functional.geometry")

Box = tuple[int, int, int, int]


# ------------------------------------------------------------------------------- boxes


def _centered(cy: int, cx: int, h: int, w: int, height: int, width: int) -> Box:
    """keepmix's centred box: ``[c - s // 2, c - s // 2 + s)`` clipped at the border."""
    y1, x1 = cy - h // 2, cx - w // 2
    return max(0, y1), max(0, x1), min(height, y1 + h), min(width, x1 + w)


def _one_hot(labels: Tensor, num_classes: int) -> Tensor:
    if labels.ndim == 2:
        return labels.float()
    return torch.nn.functional.one_hot(labels.long(), num_classes).float()


# --------------------------------------------------------------------- per-image helpers


def _erase_one(out: Tensor, i: int, box: Box, fill: float) -> None:
    y1, x1, y2, x2 = box
    out[i, :, y1:y2, x1:x2] = fill


def _mix_one(images: Tensor, out: Tensor, i: int, j: int, lam: float) -> None:
    """Image i <- lam x_i + (1 - lam) x_j, in float32 for half/uint8 (rounded back), as keepmix."""
    exact = images.dtype in (torch.float32, torch.float64)
    xi, xj = images[i], images[j]
    if not exact:
        xi, xj = xi.float(), xj.float()
    w = torch.tensor(lam, dtype=xi.dtype, device=xi.device)
    mixed = xj.lerp(xi, w)
    if images.dtype == torch.uint8:
        mixed = mixed.round()
    out[i] = mixed.to(images.dtype)


def _mix_target(targets: Tensor, out_t: Tensor, i: int, j: int, lam: float) -> None:
    lam_t = torch.tensor(lam, dtype=torch.float32, device=targets.device)
    out_t[i] = lam_t * targets[i] + (1.0 - lam_t) * targets[j]


def _paste_one(images: Tensor, out: Tensor, i: int, j: int, box: Box) -> None:
    y1, x1, y2, x2 = box
    out[i, :, y1:y2, x1:x2] = images[j, :, y1:y2, x1:x2]


def _area_lam(box: Box, height: int, width: int) -> float:
    """1 - area / (H W), rounded to float32 like keepmix.functional.mixing.area_lambda."""
    y1, x1, y2, x2 = box
    return float(np.float32(1.0 - (y2 - y1) * (x2 - x1) / float(height * width)))


def _policy_step_one(img: Tensor, op: str, mag: float, center: tuple[float, float], fill: float, interpolation: str) -> Tensor:
    """One policy op on one (1, C, H, W) image with its signed magnitude, via keepmix.functional."""
    h, w = img.shape[-2:]
    if op == "Identity":
        return img
    if op == "AutoContrast":
        return C.autocontrast(img)
    if op == "Equalize":
        return C.equalize(img)
    if op == "Invert":
        return C.invert(img)
    if op == "Posterize":
        return C.posterize(img, int(mag))
    if op == "Solarize":
        return C.solarize(img, mag)
    if op in ("Color", "Contrast", "Brightness", "Sharpness"):
        fn = {"Color": C.color, "Contrast": C.contrast, "Brightness": C.brightness, "Sharpness": C.sharpness}[op]
        return fn(img, max(0.0, float(np.float32(1.0) + np.float32(mag))))
    if op == "Rotate":
        return G.rotate(img, mag, interpolation, fill)
    if op == "ShearX":
        return G.shear_x(img, mag, interpolation, fill)
    if op == "ShearY":
        return G.shear_y(img, mag, interpolation, fill)
    if op == "TranslateX":
        return G.translate_x(img, mag, interpolation, fill)
    if op == "TranslateY":
        return G.translate_y(img, mag, interpolation, fill)
    if op == "Cutout":
        side = int(round(mag))
        cy = min(max(int(center[0] * h), 0), h - 1)
        cx = min(max(int(center[1] * w), 0), w - 1)
        out = img.clone()
        y1, x1, y2, x2 = _centered(cy, cx, side, side, h, w)
        out[..., y1:y2, x1:x2] = fill
        return out
    raise ValueError(f"unknown op {op!r}")


# ------------------------------------------------------ apply loops (given keepmix params)


def erase_apply_loop(images: Tensor, boxes: Tensor, fill: float = 0.0) -> Tensor:
    """Each image's box set to ``fill``, one image at a time (Cutout / RandomErasing apply)."""
    out = images.clone()
    for i, box in enumerate(boxes.tolist()):
        _erase_one(out, i, tuple(box), fill)
    return out


def mixup_apply_loop(images: Tensor, targets: Tensor, lam: Tensor, perm: Tensor) -> tuple[Tensor, Tensor]:
    """Mixup of image i with image perm[i] at lam[i], one image at a time."""
    out, out_t = images.clone(), targets.float().clone()
    t = targets.float()
    for i, (j, lam_i) in enumerate(zip(perm.tolist(), lam.tolist(), strict=True)):
        _mix_one(images, out, i, j, lam_i)
        _mix_target(t, out_t, i, j, lam_i)
    return out, out_t


def cutmix_apply_loop(images: Tensor, targets: Tensor, boxes: Tensor, perm: Tensor) -> tuple[Tensor, Tensor]:
    """Paste image perm[i]'s box into image i, targets mixed by exact area, one image at a time."""
    h, w = images.shape[-2:]
    out, out_t = images.clone(), targets.float().clone()
    t = targets.float()
    for i, (j, box) in enumerate(zip(perm.tolist(), boxes.tolist(), strict=True)):
        box = tuple(box)
        _paste_one(images, out, i, j, box)
        _mix_target(t, out_t, i, j, _area_lam(box, h, w))
    return out, out_t


def policy_apply_loop(images: Tensor, params, fill: float = 0.0, interpolation: str = "nearest") -> Tensor:
    """Apply keepmix :class:`~keepmix.policies.PolicyParams`, one image and one step at a time."""
    out = images.clone()
    ops, mags, applied, centers = (params.ops.tolist(), params.signed_magnitudes.tolist(), params.applied.tolist(), params.centers.tolist())
    for i in range(images.shape[0]):
        img = images[i : i + 1]
        for n in range(len(ops[i])):
            if applied[i][n]:
                img = _policy_step_one(img, OP_NAMES[ops[i][n]], mags[i][n], tuple(centers[i][n]), fill, interpolation)
        out[i] = img[0]
    return out


def paste_apply_loop(images: Tensor, augmented: Tensor, boxes: Tensor) -> Tensor:
    """``augmented`` with each image's box taken from ``images`` (KeepPaste apply)."""
    out = augmented.clone()
    for i, box in enumerate(boxes.tolist()):
        y1, x1, y2, x2 = box
        out[i, :, y1:y2, x1:x2] = images[i, :, y1:y2, x1:x2]
    return out


# ----------------------------------------------------------------------- plain loops


def cutout_loop(images: Tensor, rng: np.random.RandomState, length: int = 16, fill: float = 0.0) -> Tensor:
    """Per image: centre = two ``rng.randint`` draws, square clipped at the border, sliced to ``fill``."""
    b, _, h, w = images.shape
    out = images.clone()
    for i in range(b):
        cy, cx = rng.randint(h), rng.randint(w)
        _erase_one(out, i, _centered(cy, cx, length, length, h, w), fill)
    return out


def _erasing_size(rng: np.random.RandomState, h: int, w: int, p: float, scale, ratio, num_tries: int) -> tuple[int, int]:
    """torchvision-style: with probability p, up to ``num_tries`` (area, log-ratio) draws until one fits."""
    if rng.rand() >= p:
        return 0, 0
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(num_tries):
        area = rng.uniform(scale[0], scale[1]) * h * w
        r = math.exp(rng.uniform(*log_r))
        eh, ew = round(math.sqrt(area * r)), round(math.sqrt(area / r))
        if 1 <= eh <= h and 1 <= ew <= w:
            return eh, ew
    return 0, 0


def random_erasing_loop(
    images: Tensor,
    rng: np.random.RandomState,
    p: float = 0.5,
    scale: tuple[float, float] = (0.02, 0.4),
    ratio: tuple[float, float] = (0.3, 1 / 0.3),
    fill: float = 0.0,
    num_tries: int = 10,
) -> Tensor:
    """Per image: coin with ``p``; up to 10 (area, ratio) tries until the box fits; top-left
    uniform inside the image; sliced to ``fill`` (torchvision's RandomErasing, per image)."""
    b, _, h, w = images.shape
    out = images.clone()
    for i in range(b):
        eh, ew = _erasing_size(rng, h, w, p, scale, ratio, num_tries)
        if eh:
            top, left = rng.randint(h - eh + 1), rng.randint(w - ew + 1)
            _erase_one(out, i, (top, left, top + eh, left + ew), fill)
    return out


def mixup_loop(images: Tensor, labels: Tensor, rng: np.random.RandomState, num_classes: int, alpha: float = 1.0) -> tuple[Tensor, Tensor]:
    """One ``rng.permutation`` for the partners; per image ``lam = rng.beta(a, a)``, mixed pixels and targets."""
    b = images.shape[0]
    t = _one_hot(labels, num_classes)
    out, out_t = images.clone(), t.clone()
    perm = rng.permutation(b)
    for i in range(b):
        lam = float(np.float32(rng.beta(alpha, alpha)))
        _mix_one(images, out, i, int(perm[i]), lam)
        _mix_target(t, out_t, i, int(perm[i]), lam)
    return out, out_t


def cutmix_loop(images: Tensor, labels: Tensor, rng: np.random.RandomState, num_classes: int, alpha: float = 1.0) -> tuple[Tensor, Tensor]:
    """One permutation; per image ``lam = rng.beta``, box side ``floor(side sqrt(1 - lam))``,
    centre uniform, clipped; partner's box pasted; lam corrected to the exact area."""
    b, _, h, w = images.shape
    t = _one_hot(labels, num_classes)
    out, out_t = images.clone(), t.clone()
    perm = rng.permutation(b)
    for i in range(b):
        cut = math.sqrt(1.0 - rng.beta(alpha, alpha))
        box = _centered(rng.randint(h), rng.randint(w), int(h * cut), int(w * cut), h, w)
        _paste_one(images, out, i, int(perm[i]), box)
        _mix_target(t, out_t, i, int(perm[i]), _area_lam(box, h, w))
    return out, out_t


def _signed(rng: np.random.RandomState, op: str, mag: float) -> float:
    return -mag if op in SIGNED_OPS and rng.rand() < 0.5 else mag


def _run_policy(images: Tensor, steps_of, fill: float, interpolation: str) -> Tensor:
    """Per image: ``steps_of(i)`` gives its (op, signed magnitude, centre) steps, applied one by one."""
    out = images.clone()
    for i in range(images.shape[0]):
        img = images[i : i + 1]
        for op, mag, center in steps_of(i):
            img = _policy_step_one(img, op, mag, center, fill, interpolation)
        out[i] = img[0]
    return out


def autoaugment_loop(
    images: Tensor, rng: np.random.RandomState, policy: str = "cifar10", fill: float = 0.0, interpolation: str = "nearest"
) -> Tensor:
    """Per image: a sub-policy by ``rng.randint(25)``; each of its two steps applied with its
    probability, magnitude from its bin (torchvision's 10-bin table), random sign."""
    h, w = images.shape[-2:]
    table = magnitude_table("standard", 10, h, w).tolist()
    subs = AUTOAUGMENT_POLICIES[policy]

    def steps_of(_: int):
        steps = []
        for op, prob, bin_ in subs[rng.randint(len(subs))]:
            if rng.rand() < prob:
                mag = float(np.float32(table[OP_NAMES.index(op)][bin_ or 0]))
                steps.append((op, _signed(rng, op, mag), (rng.rand(), rng.rand())))
        return steps

    return _run_policy(images, steps_of, fill, interpolation)


def randaugment_loop(
    images: Tensor,
    rng: np.random.RandomState,
    num_ops: int = 2,
    magnitude: int = 9,
    num_bins: int = 31,
    fill: float = 0.0,
    interpolation: str = "nearest",
) -> Tensor:
    """Per image: ``num_ops`` ops by ``rng.randint(14)``, all at ``magnitude``, random signs."""
    h, w = images.shape[-2:]
    table = magnitude_table("standard", num_bins, h, w).tolist()

    def steps_of(_: int):
        steps = []
        for _ in range(num_ops):
            op = RANDAUGMENT_OPS[rng.randint(len(RANDAUGMENT_OPS))]
            mag = float(np.float32(table[OP_NAMES.index(op)][magnitude]))
            steps.append((op, _signed(rng, op, mag), (rng.rand(), rng.rand())))
        return steps

    return _run_policy(images, steps_of, fill, interpolation)


def trivialaugment_loop(
    images: Tensor, rng: np.random.RandomState, num_bins: int = 31, fill: float = 0.0, interpolation: str = "nearest"
) -> Tensor:
    """Per image: one op by ``rng.randint(14)`` and one bin by ``rng.randint(31)`` of the wide table."""
    h, w = images.shape[-2:]
    table = magnitude_table("wide", num_bins, h, w).tolist()

    def steps_of(_: int):
        op = RANDAUGMENT_OPS[rng.randint(len(RANDAUGMENT_OPS))]
        mag = float(np.float32(table[OP_NAMES.index(op)][rng.randint(num_bins)]))
        return [(op, _signed(rng, op, mag), (rng.rand(), rng.rand()))]

    return _run_policy(images, steps_of, fill, interpolation)


# ------------------------------------------------------------------------ Keep loops


_EDGES: dict[tuple, tuple[np.ndarray, ...]] = {}


def _edges(hh: int, ww: int, h: int, w: int, placement: str) -> tuple[np.ndarray, ...]:
    """Row and column edges (y1, y2, x1, x2, (y1, y2) stacked, (x1, x2) stacked) of every
    candidate position; they depend only on the sizes, so they are cached (keeps the loop
    reference fast rather than a strawman)."""
    key = (hh, ww, h, w, placement)
    if key not in _EDGES:
        if placement == "center":
            y1 = np.clip(np.arange(hh) - h // 2, 0, hh)
            x1 = np.clip(np.arange(ww) - w // 2, 0, ww)
            y2 = np.clip(np.arange(hh) - h // 2 + h, 0, hh)
            x2 = np.clip(np.arange(ww) - w // 2 + w, 0, ww)
        else:
            y1, x1 = np.arange(hh - h + 1), np.arange(ww - w + 1)
            y2, x2 = y1 + h, x1 + w
        _EDGES[key] = (y1, y2, x1, x2, np.stack([y1, y2], 1), np.stack([x1, x2], 1))
    return _EDGES[key]


def candidate_scores_np(sal: np.ndarray, h: int, w: int, placement: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores (Hc, Wc) of every candidate box of size (h, w) of one (H, W) float64 map, with
    the candidates' row edges (Hc, 2) and column edges (Wc, 2). ``"center"``: every pixel is a
    centre, boxes clipped; ``"inside"``: every top-left corner keeping the box inside."""
    hh, ww = sal.shape
    sat = np.zeros((hh + 1, ww + 1))
    sat[1:, 1:] = sal.cumsum(0).cumsum(1)
    y1, y2, x1, x2, ys, xs = _edges(hh, ww, h, w, placement)
    band = sat[y2] - sat[y1]  # (Hc, W + 1)
    scores = band[:, x2] - band[:, x1]
    return scores, ys, xs


def _quantile(scores: np.ndarray, q: float) -> float:
    """Linear-interpolation quantile (numpy's default method) from one partial sort."""
    flat = scores.ravel()
    rank = q * (flat.size - 1)
    lo = int(rank)
    hi = min(lo + 1, flat.size - 1)
    part = np.partition(flat, (lo, hi))
    a, b, t = float(part[lo]), float(part[hi]), rank - lo
    return a + (b - a) * t if t < 0.5 else b - (b - a) * (1.0 - t)


def keep_threshold(sal: np.ndarray, h: int, w: int, q: float = 0.6, placement: str = "center") -> float:
    """The per-image threshold: q-quantile (linear) of all candidate scores of size (h, w)."""
    scores, _, _ = candidate_scores_np(sal, h, w, placement)
    return _quantile(scores, q)


def _keep_box(
    sal: np.ndarray, h: int, w: int, q: float, placement: str, side: str, rng: np.random.RandomState, max_tries: int = 100_000
) -> Box:
    """The public code's loop with keepmix's threshold: ``while True`` draw a position
    uniformly (``rng.randint``), sum the saliency inside the box by slicing, accept when it
    is below (above) tau. When no candidate passes at all (a flat map), a position among the
    lowest- (highest-) scoring ones, as keepmix does."""
    scores, ys, xs = candidate_scores_np(sal, h, w, placement)
    tau = _quantile(scores, q)
    passing = scores < tau if side == "below" else scores > tau
    if not passing.any():
        extreme = scores.min() if side == "below" else scores.max()
        cand = np.argwhere(scores == extreme)
        iy, ix = cand[rng.randint(len(cand))]
        return int(ys[iy, 0]), int(xs[ix, 0]), int(ys[iy, 1]), int(xs[ix, 1])
    for _ in range(max_tries):
        iy, ix = rng.randint(len(ys)), rng.randint(len(xs))
        y1, y2 = ys[iy]
        x1, x2 = xs[ix]
        score = sal[y1:y2, x1:x2].sum()
        if (score < tau) if side == "below" else (score > tau):
            return int(y1), int(x1), int(y2), int(x2)
    iy, ix = np.argwhere(passing)[0]  # unreachable in practice: >= 40% of positions pass
    return int(ys[iy, 0]), int(xs[ix, 0]), int(ys[iy, 1]), int(xs[ix, 1])


def _saliency_np(saliency: Tensor) -> np.ndarray:
    """The whole batch's maps as one float64 numpy array (one device-to-host copy per batch)."""
    return saliency.detach().to("cpu", torch.float64).numpy()


def keep_cutout_loop(
    images: Tensor, saliency: Tensor, rng: np.random.RandomState, length: int = 16, fill: float = 0.0, q: float = 0.6
) -> Tensor:
    """Per image: tau over all centres, ``while True`` centre draws until the clipped square's
    saliency sum is below tau, sliced to ``fill``."""
    b = images.shape[0]
    out, sal_np = images.clone(), _saliency_np(saliency)
    for i in range(b):
        _erase_one(out, i, _keep_box(sal_np[i], length, length, q, "center", "below", rng), fill)
    return out


def keep_random_erasing_loop(
    images: Tensor,
    saliency: Tensor,
    rng: np.random.RandomState,
    p: float = 0.5,
    scale: tuple[float, float] = (0.02, 0.4),
    ratio: tuple[float, float] = (0.3, 1 / 0.3),
    fill: float = 0.0,
    q: float = 0.6,
    num_tries: int = 10,
) -> Tensor:
    """Per image: Random Erasing's size draws; tau over all inside positions of that size;
    ``while True`` corner draws until below tau; sliced to ``fill``."""
    b, _, h, w = images.shape
    out, sal_np = images.clone(), _saliency_np(saliency)
    for i in range(b):
        eh, ew = _erasing_size(rng, h, w, p, scale, ratio, num_tries)
        if eh:
            _erase_one(out, i, _keep_box(sal_np[i], eh, ew, q, "inside", "below", rng), fill)
    return out


def keep_cutmix_loop(
    images: Tensor,
    labels: Tensor,
    saliency: Tensor,
    rng: np.random.RandomState,
    num_classes: int,
    alpha: float = 1.0,
    q: float = 0.6,
) -> tuple[Tensor, Tensor]:
    """CutMix's per-image size draw; tau over all centres on the receiving image's saliency;
    ``while True`` centre draws until below tau; partner's box pasted, targets by exact area."""
    b, _, h, w = images.shape
    t = _one_hot(labels, num_classes)
    out, out_t = images.clone(), t.clone()
    sal_np = _saliency_np(saliency)
    perm = rng.permutation(b)
    for i in range(b):
        cut = math.sqrt(1.0 - rng.beta(alpha, alpha))
        ch, cw = int(h * cut), int(w * cut)
        if ch == 0 or cw == 0:
            continue
        box = _keep_box(sal_np[i], ch, cw, q, "center", "below", rng)
        _paste_one(images, out, i, int(perm[i]), box)
        _mix_target(t, out_t, i, int(perm[i]), _area_lam(box, h, w))
    return out, out_t


def keep_paste_loop(
    images: Tensor, saliency: Tensor, rng: np.random.RandomState, image_loop=None, size: int = 16, q: float = 0.6
) -> Tensor:
    """Selective-paste: ``image_loop(images)`` (one of the policy loops above, or nothing =
    identity) augments, then per image tau over all inside positions of ``size``, ``while
    True`` corner draws until above tau, and the clean region is sliced back in."""
    b = images.shape[0]
    augmented = image_loop(images) if image_loop is not None else images
    out, sal_np = augmented.clone(), _saliency_np(saliency)
    for i in range(b):
        y1, x1, y2, x2 = _keep_box(sal_np[i], size, size, q, "inside", "above", rng)
        out[i, :, y1:y2, x1:x2] = images[i, :, y1:y2, x1:x2]
    return out


# ------------------------------------------- GridMask, AugMix, Attentive CutMix, ResizeMix, SaliencyMix, FMix


def _grid_drop(h: int, w: int, d: int, stripe: int, dy: int, dx: int, mode: int) -> np.ndarray:
    """(H, W) bool: GridMask's dropped pixels of one image (unrotated); ``stripe`` is the paper's l."""
    rows = ((np.arange(h) - dy) % d) < stripe
    cols = ((np.arange(w) - dx) % d) < stripe
    return (~rows[:, None] & ~cols[None, :]) if mode == 1 else (rows[:, None] | cols[None, :])


def gridmask_loop(
    images: Tensor, rng: np.random.RandomState, d_range=(14, 32), ratio: float = 0.6, p: float = 0.8, mode: int = 1, fill: float = 0.0
) -> Tensor:
    """Per image: masked with probability p; ``d = rng.randint(d_min, d_max)``, stripe
    ``ceil(d r)``, offsets ``rng.randint(d)``; the (H, W) grid built with numpy, the squares filled."""
    b, _, h, w = images.shape
    out = images.clone()
    for i in range(b):
        if rng.rand() >= p:
            continue
        d = rng.randint(*d_range)
        drop = _grid_drop(h, w, d, math.ceil(d * ratio), rng.randint(d), rng.randint(d), mode)
        out[i][:, torch.from_numpy(drop)] = fill
    return out


def gridmask_apply_loop(images: Tensor, params, mode: int = 1, fill: float = 0.0) -> Tensor:
    """keepmix :class:`~keepmix.gridmask.GridMaskParams` (unrotated), one image at a time."""
    out = images.clone()
    h, w = images.shape[-2:]
    for i in range(images.shape[0]):
        if not bool(params.applied[i]):
            continue
        dy, dx = params.offsets[i].tolist()
        drop = _grid_drop(h, w, int(params.unit[i]), int(params.stripe[i]), dy, dx, mode)
        out[i][:, torch.from_numpy(drop)] = fill
    return out


_AUGMIX_OPS = ("AutoContrast", "Equalize", "Posterize", "Rotate", "Solarize", "ShearX", "ShearY", "TranslateX", "TranslateY")


def _augmix_mag(op: str, level: float, h: int, w: int) -> float:
    """The official augmentations.py level -> value (unsigned), in apply_ops units."""
    return {
        "Posterize": 4 - int(level * 4 / 10),
        "Rotate": int(level * 30 / 10),
        "Solarize": 256 - int(level * 256 / 10),
        "ShearX": level * 0.3 / 10,
        "ShearY": level * 0.3 / 10,
        "TranslateX": int(level * (w / 3) / 10),
        "TranslateY": int(level * (h / 3) / 10),
    }.get(op, 0.0)


def _augmix_mix(img: Tensor, chains: list[Tensor], weights: Sequence[float], m: float) -> Tensor:
    """``(1 - m) x + sum_k m w_k chain_k`` with keepmix.augmix's rounding, for one image."""
    wd = torch.float64 if img.dtype == torch.float64 else torch.float32
    acc = img.to(wd) * (1.0 - torch.tensor(m, dtype=wd))
    for chain, wk in zip(chains, weights, strict=True):
        acc = acc + chain.to(wd) * (torch.tensor(m, dtype=wd) * torch.tensor(wk, dtype=wd))
    if img.dtype == torch.uint8:
        return acc.round().clamp(0, 255).to(torch.uint8)
    return acc.to(img.dtype)


def _chain(img: Tensor, ops: Sequence[str], mags: Sequence[float]) -> Tensor:
    """One AugMix chain on one (1, C, H, W) image, op after op (keepmix's PIL-exact kernels)."""
    from keepmix.functional.policy_ops import _OP_ID, apply_ops

    n = len(ops)
    if n == 0:
        return img
    ids = torch.tensor([[_OP_ID[o] for o in ops]])
    return apply_ops(
        img, ids, torch.tensor([list(mags)], dtype=torch.float64), torch.ones(1, n, dtype=torch.bool), torch.zeros(1, n, 2), 0.0, "bilinear"
    )


def augmix_loop(images: Tensor, rng: np.random.RandomState, severity: int = 3, width: int = 3, alpha: float = 1.0) -> Tensor:
    """The official AugMix ``augment_and_mix``, per image: ``ws = rng.dirichlet``, ``m = rng.beta``;
    ``width`` chains of depth ``rng.randint(1, 4)``, ops ``rng.choice``, levels ``rng.uniform(0.1,
    severity)`` and signs per op; the chains mixed and blended with the image."""
    b, _, h, w = images.shape
    out = images.clone()
    for i in range(b):
        ws, m = rng.dirichlet([alpha] * width), rng.beta(alpha, alpha)
        chains = []
        for _ in range(width):
            ops = [_AUGMIX_OPS[k] for k in rng.randint(0, len(_AUGMIX_OPS), rng.randint(1, 4))]
            mags = [_augmix_mag(o, rng.uniform(0.1, severity), h, w) * (-1 if o in SIGNED_OPS and rng.rand() < 0.5 else 1) for o in ops]
            chains.append(_chain(images[i : i + 1], ops, mags))
        out[i] = _augmix_mix(images[i : i + 1], chains, ws.tolist(), float(m))[0]
    return out


def augmix_apply_loop(images: Tensor, params) -> Tensor:
    """keepmix :class:`~keepmix.augmix.AugMixParams`, one image and one chain at a time."""
    out = images.clone()
    for i in range(images.shape[0]):
        chains = []
        for k in range(params.ops.shape[1]):
            steps = [d for d in range(params.ops.shape[2]) if bool(params.applied[i, k, d])]
            chains.append(
                _chain(
                    images[i : i + 1],
                    [OP_NAMES[int(params.ops[i, k, d])] for d in steps],
                    [float(params.magnitudes[i, k, d]) for d in steps],
                )
            )
        out[i] = _augmix_mix(images[i : i + 1], chains, params.weights[i].tolist(), float(params.mix[i]))[0]
    return out


def _paste_cells(images: Tensor, out: Tensor, i: int, j: int, cells: np.ndarray) -> int:
    """Paste image j's grid cells (flat indices of a gh x gw grid) into image i, cell by cell."""
    gh, gw = cells.shape
    h, w = images.shape[-2:]
    ch, cw = h // gh, w // gw
    for c in np.flatnonzero(cells):
        r, q = divmod(int(c), gw)
        out[i, :, r * ch : (r + 1) * ch, q * cw : (q + 1) * cw] = images[j, :, r * ch : (r + 1) * ch, q * cw : (q + 1) * cw]
    return int(cells.sum()) * ch * cw


def attentive_cutmix_loop(
    images: Tensor, labels: Tensor, rng: np.random.RandomState, teacher, num_classes: int, top_k: int = 6
) -> tuple[Tensor, Tensor]:
    """The teacher's last map on the batch (one forward), then per image: the partner's top-k
    cells (``np.argsort`` of the channel sum), pasted cell by cell; lam the unpasted share."""
    b, _, h, w = images.shape
    with torch.no_grad():
        feats = teacher(images.float()).double().sum(1).cpu().numpy()
    t = _one_hot(labels, num_classes)
    out, out_t = images.clone(), t.clone()
    perm = rng.permutation(b)
    for i in range(b):
        j = int(perm[i])
        score = feats[j].ravel()
        cells = np.zeros(score.shape, dtype=bool)
        cells[np.argsort(-score, kind="stable")[:top_k]] = True
        area = _paste_cells(images, out, i, j, cells.reshape(feats.shape[1:]))
        _mix_target(t, out_t, i, j, float(np.float32(1.0 - area / float(h * w))))
    return out, out_t


def attentive_apply_loop(images: Tensor, targets: Tensor, cells: Tensor, perm: Tensor) -> tuple[Tensor, Tensor]:
    """keepmix :class:`~keepmix.attentive_cutmix.AttentiveCutMixParams`, one image at a time."""
    h, w = images.shape[-2:]
    out, out_t = images.clone(), targets.float().clone()
    t = targets.float()
    for i, j in enumerate(perm.tolist()):
        area = _paste_cells(images, out, i, j, cells[i].cpu().numpy())
        _mix_target(t, out_t, i, j, float(np.float32(1.0 - area / float(h * w))))
    return out, out_t


def _resize_paste_one(images: Tensor, out: Tensor, i: int, j: int, box: Box) -> None:
    import torch.nn.functional as F

    y1, x1, y2, x2 = box
    if y2 > y1 and x2 > x1:
        out[i, :, y1:y2, x1:x2] = F.interpolate(images[j : j + 1].float(), size=(y2 - y1, x2 - x1), mode="nearest")[0].to(images.dtype)


def resizemix_loop(images: Tensor, labels: Tensor, rng: np.random.RandomState, num_classes: int, scale=(0.1, 0.8)) -> tuple[Tensor, Tensor]:
    """One permutation; per image ``tau = rng.uniform(*scale)``, a ``floor(tau H) x floor(tau W)``
    box centred uniformly (clipped); the whole partner resized into it (nearest, F.interpolate
    per image); lam the unpasted share."""
    b, _, h, w = images.shape
    t = _one_hot(labels, num_classes)
    out, out_t = images.clone(), t.clone()
    perm = rng.permutation(b)
    for i in range(b):
        tau = rng.uniform(*scale)
        box = _centered(rng.randint(h), rng.randint(w), int(h * tau), int(w * tau), h, w)
        _resize_paste_one(images, out, i, int(perm[i]), box)
        _mix_target(t, out_t, i, int(perm[i]), _area_lam(box, h, w))
    return out, out_t


def resizemix_apply_loop(images: Tensor, targets: Tensor, boxes: Tensor, perm: Tensor) -> tuple[Tensor, Tensor]:
    """keepmix :class:`~keepmix.resizemix.ResizeMixParams` (nearest), one image at a time."""
    h, w = images.shape[-2:]
    out, out_t = images.clone(), targets.float().clone()
    t = targets.float()
    for i, (j, box) in enumerate(zip(perm.tolist(), boxes.tolist(), strict=True)):
        _resize_paste_one(images, out, i, j, tuple(box))
        _mix_target(t, out_t, i, j, _area_lam(tuple(box), h, w))
    return out, out_t


def _spectral_peak(img: Tensor) -> tuple[int, int]:
    """The most salient pixel of one image's spectral-residual map (numpy FFT, 64 x 64)."""
    import torch.nn.functional as F

    x = img.double()
    grey = (x[0] * 0.299 + x[1] * 0.587 + x[2] * 0.114)[None, None]
    g = F.interpolate(grey, size=(64, 64), mode="bilinear", align_corners=False)[0, 0].numpy()
    spec = np.fft.fft2(g)
    log_amp = np.log(np.maximum(np.abs(spec), 1e-12 * np.abs(spec).max()))
    pad = np.pad(log_amp, 1, mode="reflect")
    box = sum(pad[a : a + 64, c : c + 64] for a in range(3) for c in range(3)) / 9.0
    back = np.abs(np.fft.ifft2(np.exp(log_amp - box + 1j * np.angle(spec))))
    k = np.exp(-((np.arange(5) - 2.0) ** 2) / 128.0)
    k /= k.sum()
    pad = np.pad(back, 2, mode="reflect")
    blur = sum(k[a] * k[c] * pad[a : a + 64, c : c + 64] for a in range(5) for c in range(5))
    sal = torch.from_numpy(blur**2)[None, None].float()
    sal = F.interpolate(sal, size=img.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    flat = int(sal.argmax())
    return divmod(flat, img.shape[-1])


def saliencymix_loop(
    images: Tensor, labels: Tensor, rng: np.random.RandomState, num_classes: int, alpha: float = 1.0
) -> tuple[Tensor, Tensor]:
    """The official SaliencyMix per image: ``lam = rng.beta``, a ``sqrt(1 - lam)`` box centred
    on the partner's spectral-residual peak (numpy FFT per image), pasted at the same place."""
    b, _, h, w = images.shape
    t = _one_hot(labels, num_classes)
    out, out_t = images.clone(), t.clone()
    perm = rng.permutation(b)
    for i in range(b):
        j = int(perm[i])
        cut = math.sqrt(1.0 - rng.beta(alpha, alpha))
        cy, cx = _spectral_peak(images[j])
        box = _centered(cy, cx, int(h * cut), int(w * cut), h, w)
        _paste_one(images, out, i, j, box)
        _mix_target(t, out_t, i, j, _area_lam(box, h, w))
    return out, out_t


def fmix_loop(
    images: Tensor, labels: Tensor, rng: np.random.RandomState, num_classes: int, alpha: float = 1.0, decay_power: float = 3.0
) -> tuple[Tensor, Tensor]:
    """The official FMix per image: a complex Gaussian spectrum scaled by ``1 / f^decay``
    (numpy), ``irfft2``, the ``round(lam H W)`` highest pixels keep the image (numpy argsort)."""
    b, _, h, w = images.shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    scale = 1.0 / np.maximum(np.sqrt(fx * fx + fy * fy), 1.0 / max(h, w)) ** decay_power
    t = _one_hot(labels, num_classes)
    out, out_t = images.clone(), t.clone()
    perm = rng.permutation(b)
    for i in range(b):
        lam = rng.beta(alpha, alpha)
        draws = rng.randn(h, w // 2 + 1, 2)
        noise = np.fft.irfft2((draws[..., 0] + 1j * draws[..., 1]) * scale, s=(h, w))
        n = math.ceil(lam * h * w) if rng.rand() > 0.5 else math.floor(lam * h * w)
        keep = np.zeros(h * w, dtype=bool)
        keep[np.argsort(-noise.ravel(), kind="stable")[:n]] = True
        mask = torch.from_numpy(keep.reshape(h, w))
        j = int(perm[i])
        out[i] = torch.where(mask, images[i], images[j])
        _mix_target(t, out_t, i, j, float(np.float32(n / float(h * w))))
    return out, out_t


def fmix_apply_loop(images: Tensor, targets: Tensor, masks: Tensor, perm: Tensor) -> tuple[Tensor, Tensor]:
    """keepmix :class:`~keepmix.fmix.FMixParams`, one image at a time."""
    h, w = images.shape[-2:]
    out, out_t = images.clone(), targets.float().clone()
    t = targets.float()
    for i, j in enumerate(perm.tolist()):
        out[i] = torch.where(masks[i], images[i], images[j])
        _mix_target(t, out_t, i, j, float(np.float32(float(masks[i].sum()) / float(h * w))))
    return out, out_t


def describe(names: Sequence[str]) -> dict[str, str]:
    """First docstring line of each named loop function (for the results file)."""
    g = globals()
    return {n: " ".join((g[n].__doc__ or "").split()) for n in names}
