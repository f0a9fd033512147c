"""The GPU grid of issue 13: does KeepAugment's saliency help, at >= 95% on CIFAR-10, in 9
minutes of one H200?

An airbench-class recipe (Jordan 2024; the network is ``keepmix.models.airbench``, the code
keepmix's own): the whole uint8 training set on the GPU; per epoch, one batched alternating
flip + reflect-padded random translate of the whole set on the device; per batch, the
keepmix op (``op(x, y, saliency=..., generator=g)``, policies on uint8 before
normalisation); bf16 autocast, channels_last, ``torch.compile`` of the training forward
(one model object per head layout, re-initialised in place between runs, so every run
after the first reuses the compiled graphs); SGD with Nesterov momentum in airbench's
decoupled form (lr / weight decay per 1024 examples, BN biases at 64x lr), a triangular lr
schedule, label smoothing 0.2, Lookahead-style EMA every 5 steps, a whitened stem (bias
trained for 3 epochs), test-time augmentation (flip + 1 px translations).

Cells (``CELLS``): crop+flip, Cutout, KeepCutout (full / lowres / early / lowres+early),
the uniform-map control, Cutout-inside and KeepCutout-inside (whole boxes only), the Cutout
length sweep 8 / 16 / 24 for Cutout and KeepCutout, CutMix / KeepCutMix, AutoAugment /
KeepAutoAugment, RecursiveMix; 3 seeds each (54 runs, seed-major order, so a grid cut short
has whole seeds).

    python benchmarks/gpu_grid.py --time-model                       # the estimate, no training
    python benchmarks/gpu_grid.py --step-cost                        # Table 3 ratios + measured time model
    python benchmarks/gpu_grid.py --time-limit 9 --data DATA.tar.gz  # the grid; rerun to resume
    python benchmarks/gpu_grid.py --shard 1/2 ...                    # or split it explicitly
    python benchmarks/gpu_grid.py --device cpu --tiny --out /tmp/g   # every cell kind in seconds

Each finished run writes ``<out>/records/<cell>__s<seed>.json`` (atomically); a run whose
record exists with the same recipe is skipped, so the same command resumes. After every run
``<out>/gpu_grid.md`` (mean, sd, the comparisons, the pooled spread over seeds and the
smallest difference it can detect) and ``gpu_grid.json`` are rewritten.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from keepmix.models import build_model  # noqa: E402
from keepmix.targets import soft_target_cross_entropy  # noqa: E402
from keepmix.train.config import TrainConfig  # noqa: E402
from keepmix.train.methods import build_saliency  # noqa: E402
from keepmix.train.registry import BuildContext, get_entry  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results" / "gpu_grid"
SHARED_CIFAR10 = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)

# ---------------------------------------------------------------------------------- recipe


@dataclass(frozen=True)
class Recipe:
    """Everything a run depends on besides its cell and seed (hashed into each record)."""

    model: str = "airbench95"
    model_kwargs: tuple = ()  # (key, value) pairs for build_model
    epochs: int = 14
    batch_size: int = 1024
    lr: float = 10.0  # per 1024 examples (decoupled from momentum)
    momentum: float = 0.85
    weight_decay: float = 0.0153  # per 1024 examples (decoupled from lr)
    bias_scaler: float = 64.0  # BN biases' lr multiplier
    label_smoothing: float = 0.2
    translate: int = 2
    whiten_bias_epochs: int = 3
    lookahead_every: int = 5
    lookahead_base: float = 0.95**5
    lookahead_pow: float = 3.0
    lr_start: float = 0.2
    lr_peak_at: float = 0.23
    lr_end: float = 0.07
    tta: int = 2  # 0 none, 1 mirror, 2 mirror + 1 px translations
    early_loss_weight: float = 0.3
    keep_q: float = 0.6
    keep_paste_size: int = 16
    saliency_downscale: int = 2
    cutmix_alpha: float = 1.0
    cutmix_p: float = 0.5
    recursivemix_alpha: float = 0.5
    recursivemix_omega: float = 0.5
    n_train: int = 50_000  # 0 < n < 50,000: a class-balanced-ish prefix (tiny runs)
    n_test: int = 10_000
    image_size: int = 32
    amp: bool = True  # bf16 autocast (CUDA only)
    channels_last: bool = True
    compile: bool = True  # the training forward (CUDA only)

    def fingerprint(self) -> str:
        """A hash of every field but ``compile`` (compiling does not change what a run trains:
        a grid started compiled can be resumed with ``--no-compile``)."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k != "compile"}
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def tiny_recipe() -> Recipe:
    """Seconds on a CPU: a 8/16/16-wide airbench net, 2 epochs of 96 synthetic images."""
    return Recipe(
        model="airbench94",
        model_kwargs=(("widths", (8, 16, 16)),),
        epochs=2,
        batch_size=32,
        n_train=96,
        n_test=32,
        amp=False,
        channels_last=False,
        compile=False,
        whiten_bias_epochs=1,
    )


# ----------------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    """One grid cell: ``kind`` picks the op; ``saliency`` the Keep variant's map
    (full / lowres / early / lowres+early / uniform); ``inside``: whole boxes only."""

    name: str
    kind: str  # none, cutout, keepcutout, cutmix, keepcutmix, autoaugment, keepautoaugment, recursivemix
    length: int = 16
    saliency: str | None = None
    inside: bool = False

    @property
    def early(self) -> bool:
        return self.saliency is not None and "early" in self.saliency

    @property
    def cost_kind(self) -> str:
        """The time model's kind: what one training step does."""
        if self.saliency is None or self.saliency == "uniform":
            return self.kind if self.kind != "keepcutout" else "cutout"
        return f"{self.kind}:{self.saliency}"


CELLS: list[Cell] = [
    Cell("crop+flip", "none"),
    Cell("cutout16", "cutout"),
    Cell("keepcutout16", "keepcutout", saliency="full"),
    Cell("keepcutout16_lowres", "keepcutout", saliency="lowres"),
    Cell("keepcutout16_early", "keepcutout", saliency="early"),
    Cell("keepcutout16_lowres+early", "keepcutout", saliency="lowres+early"),
    Cell("keepcutout16_uniform", "keepcutout", saliency="uniform"),
    Cell("cutout16_inside", "cutout", inside=True),
    Cell("keepcutout16_inside", "keepcutout", saliency="full", inside=True),
    Cell("cutout8", "cutout", length=8),
    Cell("keepcutout8", "keepcutout", length=8, saliency="full"),
    Cell("cutout24", "cutout", length=24),
    Cell("keepcutout24", "keepcutout", length=24, saliency="full"),
    Cell("cutmix", "cutmix"),
    Cell("keepcutmix", "keepcutmix", saliency="full"),
    Cell("autoaugment", "autoaugment"),
    Cell("keepautoaugment", "keepautoaugment", saliency="full"),
    Cell("recursivemix", "recursivemix"),
]
CELL_BY_NAME = {c.name: c for c in CELLS}
SEEDS = (0, 1, 2)

# (label, cell a, cell b): the report's differences a - b.
COMPARISONS = [
    ("regime check: Cutout helps?", "cutout16", "crop+flip"),
    ("KeepCutout (full) vs Cutout", "keepcutout16", "cutout16"),
    ("uniform control vs Cutout", "keepcutout16_uniform", "cutout16"),
    ("saliency's own effect (inside)", "keepcutout16_inside", "cutout16_inside"),
    ("full saliency vs uniform map", "keepcutout16", "keepcutout16_uniform"),
    ("lowres vs full", "keepcutout16_lowres", "keepcutout16"),
    ("early vs full", "keepcutout16_early", "keepcutout16"),
    ("lowres+early vs full", "keepcutout16_lowres+early", "keepcutout16"),
    ("length 8: Keep vs Cutout", "keepcutout8", "cutout8"),
    ("length 24: Keep vs Cutout", "keepcutout24", "cutout24"),
    ("KeepCutMix vs CutMix", "keepcutmix", "cutmix"),
    ("KeepAutoAugment vs AutoAugment", "keepautoaugment", "autoaugment"),
    ("RecursiveMix vs crop+flip", "recursivemix", "crop+flip"),
]


def grid_runs(cells: list[Cell] = CELLS, seeds=SEEDS) -> list[tuple[Cell, int]]:
    """Seed-major order: every cell of seed 0, then of seed 1, ..."""
    return [(c, s) for s in seeds for c in cells]


def cell_config(cell: Cell, recipe: Recipe) -> TrainConfig:
    """The harness config of ``cell``'s method (only the method's fields matter here): the
    op and its saliency source are built by the harness's method registry, as in ``keepmix train``."""
    return TrainConfig(
        method=cell.kind,
        model=recipe.model,
        cutout_length=cell.length,
        whole_boxes=cell.inside,
        keep_quantile=recipe.keep_q,
        keep_paste_size=recipe.keep_paste_size,
        cutmix_alpha=recipe.cutmix_alpha,
        cutmix_p=recipe.cutmix_p,
        autoaugment_policy="cifar10",
        recursivemix_alpha=recipe.recursivemix_alpha,
        recursivemix_omega=recipe.recursivemix_omega,
        saliency=cell.saliency or "full",
        saliency_downscale=recipe.saliency_downscale,
        early_head=cell.early,
    )


def build_op(cell: Cell, recipe: Recipe, num_classes: int, model: torch.nn.Module | None = None):
    """The keepmix op of ``cell`` (None for crop+flip), from its registry entry."""
    entry = get_entry(cell.kind)
    if entry.build_op is None:
        return None
    return entry.build_op(BuildContext(cell_config(cell, recipe), model if model is not None else torch.nn.Identity(), num_classes))


# ------------------------------------------------------------------------------------ data


def synthetic_data(recipe: Recipe, seed: int = 0, num_classes: int = 10):
    """uint8 images with a class-dependent colour shift (learnable), labels cycling classes."""
    g = torch.Generator().manual_seed(seed)

    def make(n):
        y = torch.arange(n) % num_classes
        base = torch.randint(0, 160, (n, 3, recipe.image_size, recipe.image_size), generator=g)
        shift = (torch.arange(3)[None, :] * 31 + y[:, None] * 9) % 96
        return (base + shift[:, :, None, None]).to(torch.uint8), y

    return (*make(recipe.n_train), *make(recipe.n_test))


def load_data(path: str | None, recipe: Recipe):
    """(train images, train labels, test images, test labels) as uint8 / int64 CPU tensors."""
    from keepmix.data.image_folder import load_image_folder

    if path is None:
        env = os.environ.get("KEEPMIX_CIFAR10_JPEG")
        path = env or (str(SHARED_CIFAR10) if SHARED_CIFAR10.is_file() else None)
    if path is None:
        raise SystemExit("no CIFAR-10 source: pass --data (the ImageFolder tarball) or use --tiny")
    train, test = load_image_folder(path)
    if test is None:
        raise SystemExit(f"{path} has no test/ split")
    xtr, ytr, xte, yte = train.images, train.labels, test.images, test.labels
    if recipe.n_train < len(ytr):  # a seeded random subset
        idx = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(0))[: recipe.n_train]
        xtr, ytr = xtr[idx], ytr[idx]
    return xtr, ytr, xte[: recipe.n_test], yte[: recipe.n_test]


def _reflect(i: Tensor, n: int) -> Tensor:
    """Reflect-pad indices (no edge repeat) into [0, n)."""
    i = i.abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


def flip_translate(images: Tensor, epoch: int, base_flip: Tensor, r: int, g: torch.Generator, chunk: int = 8192) -> Tensor:
    """The whole set's augmentation for one epoch, batched on its device (uint8 in, out):
    alternating flip (a fixed random half flipped on even epochs, the other half on odd ones)
    and a random translation by up to ``r`` px with reflection padding."""
    n, _, h, w = images.shape
    flip = base_flip ^ bool(epoch % 2)
    out = torch.empty_like(images)
    ar_h = torch.arange(h, device=images.device)
    ar_w = torch.arange(w, device=images.device)
    if r > 0:
        shifts = torch.randint(-r, r + 1, (n, 2), device=images.device, generator=g)
    else:
        shifts = torch.zeros(n, 2, dtype=torch.long, device=images.device)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        rows = _reflect(ar_h[None] + shifts[s:e, :1], h)  # (b, h)
        cols = _reflect(ar_w[None] + shifts[s:e, 1:], w)  # (b, w)
        cols = torch.where(flip[s:e, None], w - 1 - cols, cols)
        b = torch.arange(e - s, device=images.device)[:, None, None]
        out[s:e] = images[s:e][b, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return out


# ------------------------------------------------------------------------------- the engine


def lr_factor(step: int, total: int, recipe: Recipe) -> float:
    """Triangle: ``lr_start`` -> 1 at ``lr_peak_at`` of training -> ``lr_end``."""
    peak = max(1, int(recipe.lr_peak_at * total))
    if step < peak:
        return recipe.lr_start + (1 - recipe.lr_start) * step / peak
    return 1 + (recipe.lr_end - 1) * (step - peak) / max(1, total - peak)


class Engine:
    """Models (one per head layout), their compiled forwards and the device-side data.

    Runs re-initialise the model objects in place (``load_state_dict`` of a freshly seeded
    net), so compiled graphs stay valid from run to run.
    """

    def __init__(self, recipe: Recipe, device: torch.device, data, num_classes: int = 10) -> None:
        self.recipe, self.device, self.num_classes = recipe, device, num_classes
        xtr, ytr, xte, yte = data
        self.xtr, self.ytr = xtr.to(device), ytr.to(device)
        self.xte, self.yte = xte.to(device), yte.to(device)
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
        self.cuda = device.type == "cuda"
        self._nets: dict[bool, torch.nn.Module] = {}
        self._fwd: dict[tuple, Callable] = {}

    # ---- pieces
    def autocast(self):
        if self.recipe.amp and self.cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def normalize(self, x: Tensor) -> Tensor:
        x = (x.float() / 255.0 - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.recipe.channels_last else x

    def _new_net(self, early: bool, seed: int):
        torch.manual_seed(seed)
        return build_model(self.recipe.model, num_classes=self.num_classes, early_head=early, **dict(self.recipe.model_kwargs))

    def net(self, early: bool, seed: int):
        """The (persistent) model with this head layout, re-initialised for ``seed``."""
        fresh = self._new_net(early, seed)
        if early not in self._nets:
            m = fresh.to(self.device)
            if self.recipe.channels_last:
                m = m.to(memory_format=torch.channels_last)
            self._nets[early] = m
        m = self._nets[early]
        m.load_state_dict(fresh.state_dict())
        m.stem_conv.weight.requires_grad_(True)
        k = min(len(self.xtr), 5000)
        m.init_whitening(self.normalize(self.xtr[:k]))
        m.train()
        return m

    def forward(self, net, mode: str) -> Callable:
        """``mode``: "logits", "early" ((logits, early)), "features" ((logits, features))."""
        key = (id(net), mode)
        if key not in self._fwd:
            if mode == "logits":
                fn = net.forward
            elif mode == "early":
                fn = net.forward_with_early
            else:

                def fn(x, _net=net):
                    f = _net.forward_features(x)
                    return _net.classify(f), f

            if self.recipe.compile and self.cuda:
                fn = torch.compile(fn, dynamic=False)
            self._fwd[key] = fn
        return self._fwd[key]

    def saliency(self, cell: Cell, net):
        """The cell's saliency source, built as the harness builds it (:func:`keepmix.train.methods.build_saliency`)."""
        if cell.saliency is None:
            return None
        return build_saliency(cell_config(cell, self.recipe), net, self.autocast)

    def optimizer(self, net):
        """SGD (Nesterov) in airbench's decoupled form: the lr and weight decay are given per
        1024 examples and do not move with the momentum; BN biases get ``bias_scaler`` x lr
        (same decay); the stem's bias has its own group (frozen after ``whiten_bias_epochs``)."""
        r = self.recipe
        scale = 1024 * (1 + 1 / (1 - r.momentum))
        lr, wd = r.lr / scale, r.weight_decay * r.batch_size / scale
        bn_bias, stem_bias, other = [], [], []
        for name, p in net.named_parameters():
            if not p.requires_grad:
                continue
            if p is net.stem_conv.bias:
                stem_bias.append(p)
            elif "norm" in name and name.endswith("bias"):
                bn_bias.append(p)
            else:
                other.append(p)
        groups = [
            dict(params=bn_bias, lr=lr * r.bias_scaler, weight_decay=wd / (lr * r.bias_scaler)),
            dict(params=other, lr=lr, weight_decay=wd / lr),
            dict(params=stem_bias, lr=lr, weight_decay=wd / lr),
        ]
        opt = torch.optim.SGD(groups, momentum=r.momentum, nesterov=True)
        for grp in opt.param_groups:
            grp["base_lr"] = grp["lr"]
        return opt

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Summed label-smoothed cross-entropy (ids or soft targets)."""
        return soft_target_cross_entropy(logits.float(), targets, self.recipe.label_smoothing, reduction="none").sum()

    # ---- one step
    def make_step(self, cell: Cell, net, op, sal) -> Callable[[Tensor, Tensor, torch.Generator], Tensor]:
        """``step(x_uint8, labels, g) -> loss`` (forward + backward, no optimiser step)."""
        r = self.recipe
        mode = "early" if cell.early else ("features" if cell.kind == "recursivemix" else "logits")
        fwd = self.forward(net, mode)

        def step(x8: Tensor, y: Tensor, g: torch.Generator) -> Tensor:
            extra = None
            if op is not None and op.raw_pixels:  # policies: on uint8, saliency of the clean batch
                if sal is not None:
                    x8, t = op(x8, y, saliency=sal(self.normalize(x8), y), generator=g)
                else:
                    x8, t = op(x8, generator=g), y
                x = self.normalize(x8)
            else:
                x = self.normalize(x8)
                if op is None:
                    t = y
                elif cell.kind == "recursivemix":
                    x, t = op(x, y, generator=g)
                    params = op.last_params
                    extra = lambda f: op.consistency_loss(f.float(), head=net.fc, params=params)  # noqa: E731
                elif sal is not None:
                    x, t = op(x, y, saliency=sal(x, y), generator=g)
                elif op.mixes_labels:
                    x, t = op(x, y, generator=g)
                else:
                    x, t = op(x, generator=g), y
            if r.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self.autocast():
                out = fwd(x)
            if mode == "early":
                logits, early = out
                loss = self.loss(logits, t) + r.early_loss_weight * self.loss(early, t)
            elif mode == "features":
                logits, feats = out
                loss = self.loss(logits, t) + extra(feats) * x.shape[0]  # the sum-reduced scale
            else:
                logits = out
                loss = self.loss(logits, t)
            loss.backward()
            if cell.kind == "recursivemix":
                op.update(x.detach(), t, logits.detach().float())
            return loss

        return step

    # ---- evaluation
    @torch.no_grad()
    def evaluate(self, net, tta: int) -> float:
        net.eval()
        fwd = self.forward(net, "logits")
        correct = 0
        for s in range(0, len(self.yte), 2000):
            x = self.normalize(self.xte[s : s + 2000])
            with self.autocast():
                logits = self._tta_logits(fwd, x, tta)
            correct += int((logits.argmax(1) == self.yte[s : s + 2000]).sum())
        net.train()
        return correct / len(self.yte)

    @staticmethod
    def _tta_logits(fwd, x: Tensor, tta: int) -> Tensor:
        def mirror(v):
            return 0.5 * fwd(v).float() + 0.5 * fwd(v.flip(-1)).float()

        if tta == 0:
            return fwd(x).float()
        out = mirror(x)
        if tta == 1:
            return out
        h, w = x.shape[-2:]
        p = F.pad(x, (1, 1, 1, 1), mode="reflect")
        moved = [p[..., 0:h, 0:w], p[..., 2 : h + 2, 2 : w + 2]]
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        return 0.5 * out + 0.25 * (mirror(moved[0].contiguous(memory_format=fmt)) + mirror(moved[1].contiguous(memory_format=fmt)))

    # ---- one run
    def train_run(self, cell: Cell, seed: int, log: Callable[[str], None] = print) -> dict[str, Any]:
        r, dev = self.recipe, self.device
        t0 = time.perf_counter()
        net = self.net(cell.early, seed)
        op = build_op(cell, r, self.num_classes)
        if op is not None:
            op = op.to(dev)
        sal = self.saliency(cell, net)
        opt = self.optimizer(net)
        step = self.make_step(cell, net, op, sal)
        g = torch.Generator(device=dev).manual_seed(1000 + seed)
        n = len(self.ytr)
        steps_per_epoch = n // r.batch_size if n >= r.batch_size else 1
        total = steps_per_epoch * r.epochs
        base_flip = torch.rand(n, device=dev, generator=g) < 0.5
        ema = [t.detach().clone() for t in net.state_dict().values() if t.is_floating_point()]
        live = [t for t in net.state_dict().values() if t.is_floating_point()]
        epoch_s, it = [], 0
        self._sync()
        t_train = time.perf_counter()
        for epoch in range(r.epochs):
            te = time.perf_counter()
            if epoch == r.whiten_bias_epochs:
                opt.param_groups[2]["base_lr"] = 0.0
            data = flip_translate(self.xtr, epoch, base_flip, r.translate, g)
            order = torch.randperm(n, device=dev, generator=g)
            for b in range(steps_per_epoch):
                idx = order[b * r.batch_size : (b + 1) * r.batch_size]
                f = lr_factor(it, total, r)
                for grp in opt.param_groups:
                    grp["lr"] = grp["base_lr"] * f
                opt.zero_grad(set_to_none=True)
                step(data[idx], self.ytr[idx], g)
                opt.step()
                it += 1
                if r.lookahead_every and it % r.lookahead_every == 0:
                    decay = r.lookahead_base * (it / total) ** r.lookahead_pow
                    with torch.no_grad():
                        torch._foreach_lerp_(ema, live, 1 - decay)
                        torch._foreach_copy_(live, ema)
            self._sync()
            epoch_s.append(time.perf_counter() - te)
        if r.lookahead_every:
            with torch.no_grad():
                torch._foreach_copy_(live, ema)
        train_s = time.perf_counter() - t_train
        te = time.perf_counter()
        acc_tta = self.evaluate(net, r.tta)
        acc_plain = self.evaluate(net, 0) if r.tta else acc_tta
        self._sync()
        eval_s = time.perf_counter() - te
        rec = dict(
            cell=cell.name,
            kind=cell.kind,
            seed=seed,
            accuracy=acc_tta,
            accuracy_no_tta=acc_plain,
            epochs=r.epochs,
            steps=it,
            train_seconds=round(train_s, 3),
            eval_seconds=round(eval_s, 3),
            run_seconds=round(time.perf_counter() - t0, 3),
            epoch_seconds=[round(s, 3) for s in epoch_s],
            recipe=r.fingerprint(),
            device=str(dev),
            torch=torch.__version__,
            gpu=torch.cuda.get_device_name(dev) if self.cuda else None,
            finished=time.strftime("%Y-%m-%d %H:%M:%S"),
        )
        log(
            f"  {cell.name:28s} seed {seed}: {100 * acc_tta:.2f}% (no TTA {100 * acc_plain:.2f}%), train {train_s:.1f}s, eval {eval_s:.1f}s"
        )
        return rec

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


# ------------------------------------------------------------------------------ time model

#: Effective bf16 throughput assumed for an airbench-class net on one H200 (AN ESTIMATE:
#: a quarter of the 788 TFLOP/s bf16 matmul rate measured on this kind of machine; the
#: airbench scripts reach 94-161 TFLOP/s, 30-50% of peak, on an A100).
ASSUMED_TFLOPS = 200.0
ASSUMED_STARTUP_S = 60.0  # data decode + upload + first compiles (estimate)
ASSUMED_COMPILE_S = 30.0  # first run of each forward layout in a process, for --time-limit (estimate)
ASSUMED_RUN_OVERHEAD_S = 0.5  # per run: re-init, whitening, optimiser, syncs (estimate)
BUDGET_S = 540.0


def count_macs(model: torch.nn.Module, size: int, fn: Callable | None = None) -> int:
    """Multiply-adds of one image's forward through ``fn`` (default ``model``): conv + linear."""
    total = [0]

    def hook(mod, inp, out):
        if isinstance(mod, torch.nn.Conv2d):
            total[0] += out[0].numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
        elif isinstance(mod, torch.nn.Linear):
            total[0] += mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        with torch.no_grad():
            (fn or model)(torch.zeros(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    return total[0]


def step_flops(recipe: Recipe) -> dict[str, float]:
    """FLOPs per training image of each cost kind (2 FLOPs per MAC).

    A training step is forward + backward (input and weight gradients): 3 forwards. The
    saliency pass is a forward + an input-only backward (Saliency freezes the weights): 2
    forwards of the saliency network (full, at 1/downscale^2 of the pixels for lowres, stem +
    first group + head for early). Ops themselves (box selection, policies) are not FLOPs:
    ``--step-cost`` measures them.
    """
    m = build_model(recipe.model, early_head=True, **dict(recipe.model_kwargs)).eval()
    s = recipe.image_size
    full = 2 * count_macs(m, s, lambda x: m(x))
    early = 2 * count_macs(m, s, m.early_logits)
    small = round(s / recipe.saliency_downscale)
    full_lo = 2 * count_macs(m, small, lambda x: m(x))
    early_lo = 2 * count_macs(m, small, m.early_logits)
    train = 3 * full
    sal = {"full": 2 * full, "lowres": 2 * full_lo, "early": 2 * early, "lowres+early": 2 * early_lo}
    out = {"forward": full, "train": train}
    for c in CELLS:
        k = c.cost_kind
        if k not in out:
            out[k] = train + (sal[c.saliency] if c.saliency in sal else 0.0)  # the early head's own cost is ~0
    return out


def time_model(
    recipe: Recipe, tflops: float = ASSUMED_TFLOPS, measured: dict | None = None, runs: list[tuple[Cell, int]] | None = None
) -> dict[str, Any]:
    """Seconds per epoch of each cost kind and the grid's total.

    ``measured``: {cost kind: seconds per training step} from ``--step-cost`` (then the
    numbers are measured, not estimated); otherwise FLOPs / ``tflops``.
    """
    runs = runs if runs is not None else grid_runs()
    flops = step_flops(recipe)
    n, b = recipe.n_train, recipe.batch_size
    steps = max(1, n // b) if n >= b else 1
    kinds: dict[str, dict[str, float]] = {}
    for c, _ in runs:
        k = c.cost_kind
        if k in kinds:
            continue
        if measured and k in measured:
            epoch_s, source = measured[k] * steps, "measured"
        else:
            epoch_s, source = flops[k] * n / (tflops * 1e12), "estimate"
        kinds[k] = dict(flops_per_image=flops[k], relative=flops[k] / flops["train"], epoch_seconds=epoch_s, source=source)
    eval_views = {0: 1, 1: 2, 2: 6}[recipe.tta] + 1  # + the no-TTA accuracy
    eval_s = flops["forward"] * recipe.n_test * eval_views / (tflops * 1e12)
    per_run = {c.name: kinds[c.cost_kind]["epoch_seconds"] * recipe.epochs + eval_s + ASSUMED_RUN_OVERHEAD_S for c, _ in runs}
    per_epoch_grid = sum(kinds[c.cost_kind]["epoch_seconds"] for c, _ in runs)  # one epoch of every run
    fixed = ASSUMED_STARTUP_S + len(runs) * (eval_s + ASSUMED_RUN_OVERHEAD_S)
    total = fixed + per_epoch_grid * recipe.epochs
    return dict(
        kinds=kinds,
        eval_seconds=eval_s,
        run_seconds=per_run,
        total_seconds=total,
        runs=len(runs),
        epochs_that_fit=max(0, math.floor((BUDGET_S - fixed) / per_epoch_grid)) if per_epoch_grid > 0 else None,
        tflops=tflops,
        startup_seconds=ASSUMED_STARTUP_S,
        run_overhead_seconds=ASSUMED_RUN_OVERHEAD_S,
        budget_seconds=BUDGET_S,
        fits=total <= BUDGET_S,
        epochs=recipe.epochs,
        source="measured" if measured else "estimate",
    )


def format_time_model(tm: dict[str, Any], recipe: Recipe) -> str:
    lab = "MEASURED step times" if tm["source"] == "measured" else f"ESTIMATE at an assumed {tm['tflops']:g} TFLOP/s"
    lines = [
        f"Time model ({lab}; {recipe.model}, {recipe.epochs} epochs of {recipe.n_train} images, batch {recipe.batch_size})",
        "",
        "| step kind | GFLOP / image | relative to a plain step | s / epoch | source |",
        "|---|---:|---:|---:|---|",
    ]
    for k, v in tm["kinds"].items():
        lines.append(f"| {k} | {v['flops_per_image'] / 1e9:.3f} | {v['relative']:.3f} | {v['epoch_seconds']:.3f} | {v['source']} |")
    lines += [
        "",
        f"eval (TTA) per run: {tm['eval_seconds']:.2f} s (estimate); per-run overhead {tm['run_overhead_seconds']} s "
        f"and startup {tm['startup_seconds']} s (assumptions)",
        f"grid: {tm['runs']} runs, total {tm['total_seconds']:.0f} s = {tm['total_seconds'] / 60:.1f} min "
        f"against a budget of {tm['budget_seconds'] / 60:.0f} min: {'FITS' if tm['fits'] else 'DOES NOT FIT'}",
    ]
    if tm["epochs_that_fit"] is not None:
        lines.append(f"epochs per run that fit the budget at these costs: {tm['epochs_that_fit']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- step cost

STEP_COST_CELLS = [
    "crop+flip",
    "cutout16",
    "keepcutout16",
    "keepcutout16_lowres",
    "keepcutout16_early",
    "keepcutout16_lowres+early",
    "cutmix",
    "keepcutmix",
    "autoaugment",
    "keepautoaugment",
    "recursivemix",
]


def step_cost(engine: Engine, steps: int, rounds: int, warmup: int, log=print) -> dict[str, Any]:
    """Seconds per training step (augmentation + saliency + forward + backward + SGD) of each
    cell kind on the grid's recipe, timed interleaved round by round (drift cancels), and
    KeepAugment's Table 3 as ratios to Cutout. Also the eager-vs-compiled Cutout step when
    the recipe compiles (whether ``torch.compile`` pays)."""
    r = engine.recipe
    dev = engine.device
    b = min(r.batch_size, len(engine.ytr))
    g = torch.Generator(device=dev).manual_seed(0)
    batches = [(engine.xtr[i * b : (i + 1) * b], engine.ytr[i * b : (i + 1) * b]) for i in range(max(1, min(4, len(engine.ytr) // b)))]
    contenders: dict[str, Callable[[], None]] = {}

    def contender(cell: Cell, eager: bool = False):
        net = engine.net(cell.early, 0)
        op = build_op(cell, r, engine.num_classes)
        op = op.to(dev) if op is not None else None
        opt = engine.optimizer(net)
        if eager:
            saved = engine.recipe
            engine.recipe = dataclasses.replace(saved, compile=False)
            engine._fwd.pop((id(net), "logits"), None)
            step = engine.make_step(cell, net, op, engine.saliency(cell, net))
            engine._fwd.pop((id(net), "logits"), None)
            engine.recipe = saved
        else:
            step = engine.make_step(cell, net, op, engine.saliency(cell, net))
        state = {"i": 0}

        def run():
            for _ in range(steps):
                x, y = batches[state["i"] % len(batches)]
                state["i"] += 1
                opt.zero_grad(set_to_none=True)
                step(x, y, g)
                opt.step()

        return run

    for name in STEP_COST_CELLS:
        contenders[name] = contender(CELL_BY_NAME[name])
    if r.compile and engine.cuda:
        contenders["cutout16 (eager)"] = contender(CELL_BY_NAME["cutout16"], eager=True)
    for name, fn in contenders.items():  # warm-up: compiles, cudnn autotune
        t = time.perf_counter()
        for _ in range(warmup):
            fn()
        engine._sync()
        log(f"  warm-up {name}: {time.perf_counter() - t:.1f}s")
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            engine._sync()
            t = time.perf_counter()
            fn()
            engine._sync()
            times[name].append((time.perf_counter() - t) / steps)
    base = times["cutout16"]
    rows = {}
    for name, ts in times.items():
        ratios = [a / c for a, c in zip(ts, base, strict=True)]
        kind = CELL_BY_NAME[name].cost_kind if name in CELL_BY_NAME else None
        rows[name] = dict(
            seconds_per_step=statistics.median(ts),
            ratio_to_cutout=statistics.median(ratios),
            ratio_min=min(ratios),
            ratio_max=max(ratios),
            cost_kind=kind,
        )
    return dict(
        rows=rows,
        batch=b,
        steps=steps,
        rounds=rounds,
        device=str(dev),
        recipe=r.fingerprint(),
        gpu=torch.cuda.get_device_name(dev) if engine.cuda else None,
        torch=torch.__version__,
    )


def format_step_cost(sc: dict[str, Any], recipe: Recipe) -> str:
    table3 = {
        "cutout16": "Cutout",
        "keepcutout16": "KeepCutout (full)",
        "keepcutout16_lowres": "KeepCutout (low-res)",
        "keepcutout16_early": "KeepCutout (early)",
        "keepcutout16_lowres+early": "KeepCutout (low-res + early)",
    }
    rows = sc["rows"]
    where = sc["gpu"] or sc["device"]
    lines = [
        f"Training-step cost, KeepAugment Table 3 as ratios (MEASURED on {where}, torch {sc['torch']}; "
        f"{recipe.model}, batch {sc['batch']}, median of {sc['rounds']} interleaved rounds of {sc['steps']} steps)",
        "",
        "| method | ms / step | ratio to Cutout | range over rounds |",
        "|---|---:|---:|---:|",
    ]
    for key, label in table3.items():
        v = rows[key]
        spread = f"{v['ratio_min']:.3f}-{v['ratio_max']:.3f}"
        lines.append(f"| {label} | {1e3 * v['seconds_per_step']:.2f} | {v['ratio_to_cutout']:.3f} | {spread} |")
    lines += ["", "Other cell kinds (for the time model):", "", "| cell | ms / step | ratio to Cutout |", "|---|---:|---:|"]
    for key, v in rows.items():
        if key not in table3:
            lines.append(f"| {key} | {1e3 * v['seconds_per_step']:.2f} | {v['ratio_to_cutout']:.3f} |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------- reporting


def t_quantile(p: float, df: int) -> float:
    try:
        from scipy.stats import t

        return float(t.ppf(p, df))
    except ImportError:  # normal approximation
        from statistics import NormalDist

        return NormalDist().inv_cdf(p)


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-cell mean / sd, the pooled within-cell sd over seeds, the comparisons, and what a
    difference of two cells with n seeds each can resolve (95% CI half-width; the smallest
    true difference found with 80% power at alpha 0.05, two-sided)."""
    by: dict[str, list[float]] = {}
    for r in records:
        by.setdefault(r["cell"], []).append(100 * r["accuracy"])
    cells = {k: dict(n=len(v), mean=statistics.fmean(v), sd=statistics.stdev(v) if len(v) > 1 else None) for k, v in by.items()}
    ss = sum((len(v) - 1) * statistics.variance(v) for v in by.values() if len(v) > 1)
    df = sum(len(v) - 1 for v in by.values() if len(v) > 1)
    pooled = math.sqrt(ss / df) if df else None
    out: dict[str, Any] = dict(cells=cells, pooled_sd=pooled, pooled_df=df, comparisons=[])
    n_typ = max((c["n"] for c in cells.values()), default=0)
    if pooled is not None and n_typ:
        se = pooled * math.sqrt(2 / n_typ)
        out["ci_halfwidth"] = t_quantile(0.975, df) * se
        out["detectable"] = (t_quantile(0.975, df) + t_quantile(0.8, df)) * se
        out["n_per_cell"] = n_typ
    for label, a, b in COMPARISONS:
        if a in cells and b in cells:
            d = cells[a]["mean"] - cells[b]["mean"]
            row = dict(label=label, a=a, b=b, diff=d)
            if pooled is not None:
                se = pooled * math.sqrt(1 / cells[a]["n"] + 1 / cells[b]["n"])
                row["ci"] = t_quantile(0.975, df) * se
                row["verdict"] = "resolved" if abs(d) > row["ci"] else "within noise"
            out["comparisons"].append(row)
    return out


def format_report(summary: dict[str, Any], recipe: Recipe, records: list[dict[str, Any]]) -> str:
    gpu = next((r.get("gpu") for r in records if r.get("gpu")), None) or (records[0]["device"] if records else "?")
    lines = [
        f"# GPU grid (issue 13): {len(records)} runs on {gpu}",
        "",
        f"Recipe {recipe.fingerprint()}: {recipe.model}, {recipe.epochs} epochs, batch {recipe.batch_size}, "
        f"{recipe.n_train} training / {recipe.n_test} test images, TTA level {recipe.tta}. Accuracy in % (with TTA).",
        "",
        "| cell | seeds | mean | sd | train s / run |",
        "|---|---:|---:|---:|---:|",
    ]
    train_s: dict[str, list[float]] = {}
    for r in records:
        train_s.setdefault(r["cell"], []).append(r["train_seconds"])
    for c in CELLS:
        v = summary["cells"].get(c.name)
        if v is None:
            lines.append(f"| {c.name} | 0 | - | - | - |")
            continue
        sd = f"{v['sd']:.2f}" if v["sd"] is not None else "-"
        lines.append(f"| {c.name} | {v['n']} | {v['mean']:.2f} | {sd} | {statistics.fmean(train_s[c.name]):.1f} |")
    lines += ["", "| comparison | a - b (points) | 95% CI half-width | reading |", "|---|---:|---:|---|"]
    for row in summary["comparisons"]:
        ci = f"±{row['ci']:.2f}" if "ci" in row else "-"
        lines.append(f"| {row['label']} ({row['a']} - {row['b']}) | {row['diff']:+.2f} | {ci} | {row.get('verdict', 'needs 2+ seeds')} |")
    if summary.get("pooled_sd") is not None:
        lines += [
            "",
            f"Pooled spread over seeds: sd {summary['pooled_sd']:.3f} points ({summary['pooled_df']} df). "
            f"A difference of two cells with {summary['n_per_cell']} seeds each has a 95% CI half-width of "
            f"{summary['ci_halfwidth']:.2f} points; a true difference of {summary['detectable']:.2f} points is found "
            "with 80% power (two-sided, alpha 0.05). Smaller effects: cannot tell at this scale.",
        ]
    return "\n".join(lines) + "\n"


def read_records(out: Path, recipe: Recipe) -> list[dict[str, Any]]:
    recs = []
    for p in sorted((out / "records").glob("*.json")):
        try:
            r = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if r.get("recipe") == recipe.fingerprint():
            recs.append(r)
    return recs


def write_report(out: Path, recipe: Recipe) -> str:
    recs = read_records(out, recipe)
    summary = summarize(recs)
    text = format_report(summary, recipe, recs)
    (out / "gpu_grid.md").write_text(text)
    (out / "gpu_grid.json").write_text(json.dumps(dict(summary=summary, recipe=dataclasses.asdict(recipe)), indent=1, default=str))
    return text


def record_path(out: Path, cell: Cell, seed: int) -> Path:
    return out / "records" / f"{cell.name}__s{seed}.json"


def is_done(out: Path, cell: Cell, seed: int, recipe: Recipe) -> bool:
    p = record_path(out, cell, seed)
    try:
        return json.loads(p.read_text()).get("recipe") == recipe.fingerprint()
    except (OSError, json.JSONDecodeError):
        return False


def write_record(out: Path, rec: dict[str, Any]) -> None:
    p = record_path(out, CELL_BY_NAME[rec["cell"]], rec["seed"])
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=1))
    os.replace(tmp, p)


# ------------------------------------------------------------------------------------- CLI


def parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return 1, 1
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise SystemExit(f"--shard must be i/n with 1 <= i <= n, got {text!r}") from None
    if not 1 <= i <= n:
        raise SystemExit(f"--shard must be i/n with 1 <= i <= n, got {text!r}")
    return i, n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="seconds-sized recipe on synthetic data (tests)")
    ap.add_argument("--data", default=None, help="CIFAR-10 ImageFolder tarball/folder (default: $KEEPMIX_CIFAR10_JPEG or ../shared)")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--model", default=None, help="registry name (default airbench95)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: 1 with --tiny, else torch's)")
    ap.add_argument("--cells", default=None, help="comma-separated cell names (default: all)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2)")
    ap.add_argument("--shard", default=None, help="i/n: run every n-th run starting at i (1-based)")
    ap.add_argument("--time-limit", type=float, default=None, help="minutes: start no run that would end after it")
    ap.add_argument("--time-model", action="store_true", help="print the time model and exit")
    ap.add_argument("--tflops", type=float, default=ASSUMED_TFLOPS, help="assumed throughput for the estimate")
    ap.add_argument("--measured", default=None, help="step_cost.json: use its measured step times in the time model")
    ap.add_argument("--step-cost", action="store_true", help="time one training step of each cell kind (Table 3)")
    ap.add_argument("--steps", type=int, default=None, help="--step-cost: steps per round")
    ap.add_argument("--rounds", type=int, default=None, help="--step-cost: interleaved rounds")
    args = ap.parse_args(argv)
    t_start = time.monotonic()
    if args.threads or args.tiny:
        torch.set_num_threads(args.threads or 1)

    recipe = tiny_recipe() if args.tiny else Recipe()
    if args.epochs is not None:
        recipe = dataclasses.replace(recipe, epochs=args.epochs)
    if args.model:
        if not args.model.startswith("airbench"):
            raise SystemExit(f"--model must be an airbench variant (airbench94 / airbench95 / airbench96), got {args.model!r}")
        recipe = dataclasses.replace(recipe, model=args.model, model_kwargs=())
    if args.no_compile:
        recipe = dataclasses.replace(recipe, compile=False)
    device = torch.device(args.device)
    cells = CELLS if not args.cells else [CELL_BY_NAME[c] for c in args.cells.split(",")]
    seeds = SEEDS if not args.seeds else tuple(int(s) for s in args.seeds.split(","))
    runs = grid_runs(cells, seeds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    measured = None
    if args.measured:
        sc = json.loads(Path(args.measured).read_text())
        measured = {v["cost_kind"]: v["seconds_per_step"] for v in sc["rows"].values() if v.get("cost_kind")}
    tm = time_model(recipe, args.tflops, measured, runs)
    text = format_time_model(tm, recipe)
    print(text, flush=True)
    (out / "time_model.md").write_text(text + "\n")
    if args.time_model:
        return 0
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA device; use --device cpu --tiny for the smoke test")

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        for name in ("cache_size_limit", "recompile_limit"):  # the name moved between torch versions
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 64))
    data = synthetic_data(recipe) if args.tiny else load_data(args.data, recipe)
    print(f"data: {len(data[1])} train / {len(data[3])} test images on {device} ({time.monotonic() - t_start:.1f}s)", flush=True)
    engine = Engine(recipe, device, data)

    if args.step_cost:
        steps = args.steps or (2 if args.tiny else 10)
        rounds = args.rounds or (2 if args.tiny else 5)
        sc = step_cost(engine, steps, rounds, warmup=1 if args.tiny else 3)
        text = format_step_cost(sc, recipe)
        print(text)
        (out / "step_cost.json").write_text(json.dumps(sc, indent=1))
        (out / "step_cost.md").write_text(text + "\n")
        measured = {v["cost_kind"]: v["seconds_per_step"] for v in sc["rows"].values() if v.get("cost_kind")}
        tm = time_model(recipe, args.tflops, measured, grid_runs())
        text = format_time_model(tm, recipe)
        print("\n" + text)
        (out / "time_model_measured.md").write_text(text + "\n")
        return 0

    i, n = parse_shard(args.shard)
    mine = runs[i - 1 :: n]
    todo = [(c, s) for c, s in mine if not is_done(out, c, s, recipe)]
    print(f"grid: {len(mine)} runs in shard {i}/{n}, {len(mine) - len(todo)} already done, {len(todo)} to run", flush=True)
    limit = args.time_limit * 60 if args.time_limit else None
    seen: dict[str, list[float]] = {}
    compiled: set[str] = set()
    done = 0
    for cell, seed in todo:
        if limit is not None:
            past = seen.get(cell.cost_kind)
            guess = statistics.fmean(past) if past else tm["run_seconds"][cell.name]
            mode = "early" if cell.early else ("features" if cell.kind == "recursivemix" else "logits")
            if recipe.compile and device.type == "cuda" and mode not in compiled:
                guess += ASSUMED_COMPILE_S  # this run compiles its forward (and the eval forward)
            if time.monotonic() - t_start + guess > limit:
                print(
                    f"time limit: stopping before {cell.name} seed {seed} (needs ~{guess:.0f}s); "
                    f"{len(todo) - done} runs left: rerun the same command to resume",
                    flush=True,
                )
                break
        rec = engine.train_run(cell, seed)
        compiled.add("early" if cell.early else ("features" if cell.kind == "recursivemix" else "logits"))
        write_record(out, rec)
        seen.setdefault(cell.cost_kind, []).append(rec["run_seconds"])
        done += 1
        write_report(out, recipe)
    report = write_report(out, recipe)
    print(report)
    print(f"finished {done} runs in {time.monotonic() - t_start:.0f}s; records in {out / 'records'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
