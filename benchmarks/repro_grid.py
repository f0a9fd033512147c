"""The reproduction grids: the methods (each compared with a base method, beside the paper's
gain), the scales (the TrainConfig fields every cell of a grid shares) and one cell's config.

Part of ``benchmarks/reproduce.py`` (the command line); :mod:`repro_runner` trains the cells,
:mod:`repro_stats` aggregates them, :mod:`repro_report` writes the tables.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


class GridError(RuntimeError):
    """A grid that cannot run as asked (bad option, a run directory made with other settings)."""


# --------------------------------------------------------------------------------------------
# The grid: methods, their base method, and the paper's gain
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GridMethod:
    """One row of the table: a harness method with its options, compared with ``base``."""

    key: str
    label: str
    fields: Mapping[str, Any]
    base: str | None = None
    paper_gain: float | None = None  # accuracy points over the base in the paper
    paper_note: str = ""  # where the paper's number comes from
    paper_cost: float | None = None  # the paper's training cost relative to the base
    # The grid method whose finished cell of the same seed is this method's teacher
    # (Attentive CutMix): its run directory becomes the cell's teacher_run, and the runner
    # trains it first.
    teacher: str | None = None


GRID: tuple[GridMethod, ...] = (
    GridMethod("none", "crop+flip only", {"method": "none"}),
    GridMethod("cutout", "Cutout", {"method": "cutout"}, "none", -0.08, "CIFAR-100 PyramidNet-200, error 16.45 -> 16.53"),
    GridMethod(
        "keepcutout",
        "KeepCutout (full)",
        {"method": "keepcutout", "saliency": "full"},
        "cutout",
        0.5,
        "CIFAR-10 ResNet-18, 95.6 -> 96.1",
        38 / 19,
    ),
    # The control: the same quantile rule on a constant map. A box's importance is then its
    # area, so only boxes clipped by the border are cut (Cutout made weaker, no image content):
    # KeepCutout's gain over this row is what the saliency itself adds.
    GridMethod(
        "keepcutout_uniform",
        "KeepCutout (uniform map: control)",
        {"method": "keepcutout", "saliency": "uniform"},
        "cutout",
        None,
        "control, not in the paper: the quantile rule with no saliency",
    ),
    GridMethod(
        "keepcutout_lowres",
        "KeepCutout (low-res)",
        {"method": "keepcutout", "saliency": "lowres"},
        "cutout",
        0.6,
        "CIFAR-10 ResNet-18, 95.6 -> 96.2",
        24 / 19,
    ),
    # The early-head variants also train the head (loss weight 0.3 on the first stage's
    # features), which changes the network whatever the saliency does: this control trains it
    # with plain Cutout, so the early variants can be read against it.
    GridMethod(
        "cutout_earlyhead",
        "Cutout + early head (control)",
        {"method": "cutout", "early_head": True},
        "cutout",
        None,
        "control, not in the paper: the early head's auxiliary loss alone, no saliency",
    ),
    GridMethod(
        "keepcutout_early",
        "KeepCutout (early)",
        {"method": "keepcutout", "saliency": "early", "early_head": True},
        "cutout",
        0.4,
        "CIFAR-10 ResNet-18, 95.6 -> 96.0",
        23 / 19,
    ),
    # The head one block into the first stage: the placement that meets the step-cost
    # target (benchmarks/RESULTS.md section 1). Needs a model whose first stage has several
    # blocks (the ResNets, WRN), so it is not in the small net's cpu grid.
    GridMethod(
        "keepcutout_early1",
        "KeepCutout (early, block 1)",
        {"method": "keepcutout", "saliency": "early", "early_head": True, "early_block": 1},
        "cutout",
        0.4,
        "the paper's early head (95.6 -> 96.0) sits after the whole first stage; ours after its first block",
    ),
    # Whole (unclipped) boxes only: Cutout and KeepCutout then cut the same area, so the only
    # difference left is where the box goes, which only the saliency decides (with a constant
    # map, KeepCutout-inside *is* Cutout-inside). The difference is the saliency's own effect.
    GridMethod(
        "cutout_inside",
        "Cutout, whole boxes",
        {"method": "cutout", "whole_boxes": True},
        "cutout",
        None,
        "control, not in the paper: Cutout without border-clipped boxes",
    ),
    GridMethod(
        "keepcutout_inside",
        "KeepCutout (full), whole boxes",
        {"method": "keepcutout", "saliency": "full", "whole_boxes": True},
        "cutout_inside",
        None,
        "not in the paper: the saliency's own effect at a constant area cut",
    ),
    GridMethod(
        "keepcutout_lowres_inside",
        "KeepCutout (low-res), whole boxes",
        {"method": "keepcutout", "saliency": "lowres", "whole_boxes": True},
        "cutout_inside",
        None,
        "not in the paper: the low-res saliency's own effect at a constant area cut",
    ),
    # The paper's threshold sweep (its Figure 3: q = 0.4 / 0.6 / 0.8), at a constant area cut;
    # q = 0.6 (the default) is keepcutout_inside. Not in the inside scale's default methods:
    # ``--scale inside --methods keepcutout_inside_q04 keepcutout_inside_q08`` runs them.
    *(
        GridMethod(
            f"keepcutout_inside_q{round(10 * q):02d}",
            f"KeepCutout (full), whole boxes, q = {q}",
            {"method": "keepcutout", "saliency": "full", "whole_boxes": True, "keep_quantile": q},
            "cutout_inside",
            None,
            "the paper's threshold sweep (Figure 3), at a constant area cut",
        )
        for q in (0.4, 0.8)
    ),
    GridMethod("cutmix", "CutMix", {"method": "cutmix"}, "none", 2.22, "CIFAR-100 PyramidNet-200, error 16.45 -> 14.23"),
    GridMethod("keepcutmix", "KeepCutMix", {"method": "keepcutmix", "saliency": "full"}, "cutmix", 0.4, "ImageNet ResNet-50, 78.6 -> 79.0"),
    GridMethod("autoaugment", "AutoAugment", {"method": "autoaugment"}, "none", None, "the papers give no AutoAugment-vs-baseline pair"),
    GridMethod(
        "keepautoaugment",
        "KeepAutoAugment",
        {"method": "keepautoaugment", "saliency": "full"},
        "autoaugment",
        0.5,
        "CIFAR-10 WRN-28-10, 97.3 -> 97.8",
    ),
    GridMethod("mixup", "Mixup", {"method": "mixup"}, "none", 0.82, "CIFAR-100 PyramidNet-200, error 16.45 -> 15.63"),
    # omega 0.1: the paper's CIFAR-10 setting (0.5 is its ImageNet default).
    GridMethod(
        "recursivemix",
        "RecursiveMix",
        {"method": "recursivemix", "recursivemix_omega": 0.1},
        "none",
        2.88,
        "ImageNet ResNet-50, 76.32 -> 79.20; CIFAR-10 PyramidNet-200 reaches 97.65%",
    ),
    # The methods KeepAugment's Table 5 (CIFAR-10, WRN-28-10) sets against KeepAutoAugment, and
    # those OpenMixup / mmpretrain offer. Table 5 gives their accuracy, not a gain over a
    # baseline, so no paper gain stands beside them; every preset is the method's paper default.
    GridMethod(
        "gridmask", "GridMask", {"method": "gridmask"}, "none", None, "KeepAugment Table 5, CIFAR-10 WRN-28-10: 97.5 (KeepAutoAugment 97.8)"
    ),
    GridMethod(
        "augmix", "AugMix", {"method": "augmix"}, "none", None, "KeepAugment Table 5, CIFAR-10 WRN-28-10: 97.5 (KeepAutoAugment 97.8)"
    ),
    GridMethod(
        "augmix_jsd",
        "AugMix + JSD loss",
        {"method": "augmix_jsd"},
        "augmix",
        None,
        "AugMix's own training loss (CE on the clean third + 12 JS); 3 forward rows per image",
    ),
    # The teacher: the crop+flip cell of the same seed (a finished run of this grid).
    GridMethod(
        "attentive_cutmix",
        "Attentive CutMix",
        {"method": "attentive_cutmix"},
        "none",
        None,
        "KeepAugment Table 5, CIFAR-10 WRN-28-10: 97.3 (KeepAutoAugment 97.8); teacher: our crop+flip run",
        teacher="none",
    ),
    # The small net's last map is 4 x 4, so the paper's N = 6 pastes 6 / 16 = 37.5% of the image
    # (6 / 49 = 12% on ImageNet's 7 x 7): N = 2 pastes 12.5%, the paper's share.
    GridMethod(
        "attentive_cutmix_n2",
        "Attentive CutMix, N = 2 (the paper's pasted share)",
        {"method": "attentive_cutmix", "attentive_top_k": 2},
        "none",
        None,
        "not in a paper: N scaled so that the pasted share is Table 5's 12%; teacher: our crop+flip run",
        teacher="none",
    ),
    GridMethod(
        "resizemix", "ResizeMix", {"method": "resizemix"}, "none", None, "not in KeepAugment's table (OpenMixup / mmpretrain method)"
    ),
    GridMethod(
        "keepresizemix",
        "KeepResizeMix",
        {"method": "keepresizemix", "saliency": "full"},
        "resizemix",
        None,
        "not in any paper: KeepAugment's placement for ResizeMix's paste",
    ),
    # As keepcutout_uniform for KeepCutout: the quantile rule on a constant map favours boxes
    # the border clips, so a smaller paste; KeepResizeMix over this row is the saliency's part.
    GridMethod(
        "keepresizemix_uniform",
        "KeepResizeMix (uniform map: control)",
        {"method": "keepresizemix", "saliency": "uniform"},
        "resizemix",
        None,
        "control, not in any paper: KeepResizeMix's rule with no saliency",
    ),
    GridMethod(
        "saliencymix",
        "SaliencyMix (spectral)",
        {"method": "saliencymix"},
        "none",
        None,
        "not in KeepAugment's table (OpenMixup / mmpretrain method)",
    ),
    GridMethod(
        "saliencymix_gradient",
        "SaliencyMix (gradient map)",
        {"method": "saliencymix_gradient", "saliency": "full"},
        "saliencymix",
        None,
        "not in any paper: keepmix's gradient saliency in place of the spectral map",
    ),
    GridMethod("fmix", "FMix", {"method": "fmix"}, "none", None, "not in KeepAugment's table (OpenMixup / mmpretrain method)"),
)
GRID_BY_KEY = {m.key: m for m in GRID}


# --------------------------------------------------------------------------------------------
# Scales
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scale:
    """A grid size: the TrainConfig fields every cell shares, default seeds and methods."""

    name: str
    fields: Mapping[str, Any]
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    description: str
    expected_time: str


_COMMON = dict(
    dataset="cifar10",
    momentum=0.9,
    nesterov=True,
    weight_decay=5e-4,
    label_smoothing=0.0,
    crop_padding=4,
    flip=True,
    keep_quantile=0.6,
    keep_paste_size=16,
    cutout_length=16,
    progress=False,
    pictures=False,
    checkpoint_every=1,
)

# The cpu scale's settings, shared by the inside grid (which changes only the methods).
_CPU_FIELDS = dict(
    _COMMON,
    model="small",
    train_subset=5000,
    test_subset=0,
    epochs=20,
    batch_size=64,
    lr=0.05,
    warmup_epochs=1.0,
    eval_every=None,
    log_every=20,
    device="cpu",
    amp="off",
    channels_last="off",
)

SCALES: dict[str, Scale] = {
    # Seconds: the end-to-end test of this script. A few dozen images, one epoch.
    "tiny": Scale(
        "tiny",
        dict(
            _COMMON,
            model="small",
            train_subset=40,
            test_subset=20,
            epochs=1,
            batch_size=8,
            lr=0.05,
            warmup_epochs=0.0,
            eval_every=1,
            log_every=5,
            device="cpu",
            amp="off",
            channels_last="off",
            threads=1,
        ),
        seeds=(0, 1),
        methods=("none", "cutout", "keepcutout"),
        description="smoke test: small net, 40 train / 20 test images, 1 epoch",
        expected_time="well under a minute",
    ),
    # About two hours for the 11-method, 2-seed grid on 2 CPU cores with --jobs 2. Measured on
    # the grid itself: a plain cell (crop+flip only) took 18 min at 30 epochs on a loaded
    # machine, a KeepCutout cell (full-resolution saliency) about twice a plain one, which put
    # 30 epochs at over 3 h; 20 epochs brings the grid to about 1.7-2 h. The small
    # airbench-like net (0.66M parameters), a class-balanced 5,000-image subset (500 per
    # class), the full 10,000-image test set evaluated once at the end. lr 0.05 at batch 64 is
    # the paper's 0.1 at batch 128.
    "cpu": Scale(
        "cpu",
        _CPU_FIELDS,
        seeds=(0, 1),
        methods=tuple(m.key for m in GRID if m.key != "keepcutout_early1" and "_inside" not in m.key),
        description="small CPU net (0.66M params), 5,000-image class-balanced CIFAR-10 subset, full 10k test set, 20 epochs",
        expected_time="about 2 h with --jobs 2 on 2 cores",
    ),
    # Does the saliency matter beyond cutting less? The cpu scale's settings with whole boxes
    # only (see cutout_inside above), 3 seeds. Budget, stated before it ran: about two hours of
    # CPU (a plain cell ~10-15 CPU-min, a full-saliency cell about twice that).
    "inside": Scale(
        "inside",
        _CPU_FIELDS,
        seeds=(0, 1, 2),
        methods=("cutout_inside", "keepcutout_inside", "keepcutout_lowres_inside"),
        description="saliency isolated: Cutout and KeepCutout with whole boxes only (the same area cut); the cpu scale's "
        "small net, 5,000-image subset, full 10k test set, 20 epochs",
        expected_time="about 1 h with --jobs 2 on 2 quiet cores (two hours of CPU)",
    ),
    # Where the early head sits, at the cpu scale's settings on a network whose first stage has
    # several blocks: CIFAR ResNet-20 (3 stages of 3 basic blocks, 0.27M parameters; its step
    # costs about what the small net's does on a CPU). The head after the whole first stage (the
    # paper's placement) against the head after its first block (which meets the step-cost
    # target), with full-resolution KeepCutout, the two controls and plain Cutout beside them. Three
    # seeds (ResNet-20's seed-to-seed spread at this scale is 1-2 points): 18 cells, about 1.5 h
    # with --jobs 2 on 2 cores.
    "early": Scale(
        "early",
        dict(
            _COMMON,
            model="resnet20",
            train_subset=5000,
            test_subset=0,
            epochs=20,
            batch_size=64,
            lr=0.05,
            warmup_epochs=1.0,
            eval_every=None,
            log_every=20,
            device="cpu",
            amp="off",
            channels_last="off",
        ),
        seeds=(0, 1, 2),
        methods=("cutout", "keepcutout", "keepcutout_uniform", "cutout_earlyhead", "keepcutout_early", "keepcutout_early1"),
        description="early-head placement: CIFAR ResNet-20 (0.27M params), 5,000-image class-balanced CIFAR-10 "
        "subset, full 10k test set, 20 epochs",
        expected_time="about 1.5 h with --jobs 2 on 2 cores",
    ),
    # About 25 minutes of H100 time for the whole grid: CIFAR ResNet-18 on all 50,000 training
    # images, bf16 autocast, channels_last, the dataset on the GPU (the harness's loader).
    # Batch 512 with lr 0.4 (the paper's 0.1 at 128, scaled linearly) and 2 warm-up epochs.
    # 13 epochs: 15 were budgeted for 22 cells; the 6 added since (the two controls and the
    # head after one block, 2 seeds each) cost about a Cutout cell each.
    "gpu": Scale(
        "gpu",
        dict(
            _COMMON,
            model="resnet18",
            train_subset=0,
            test_subset=0,
            epochs=13,
            batch_size=512,
            lr=0.4,
            warmup_epochs=2.0,
            eval_every=5,
            log_every=50,
            device="cuda",
            amp="on",
            amp_dtype="bfloat16",
            channels_last="on",
        ),
        seeds=(0, 1),
        methods=tuple(m.key for m in GRID if "_inside" not in m.key),  # keepcutout_early1 included
        description="CIFAR ResNet-18, full CIFAR-10 (50k / 10k), bf16, channels_last, data on the GPU, 13 epochs",
        expected_time="about 25 min on one H100 (estimate; check with --estimate)",
    ),
}

#: Config fields that may differ between a cell's saved config and the planned one without
#: making its results different (how it was run, not what).
_RUN_ONLY_FIELDS = {"threads", "progress", "out_dir", "name", "log_every", "pictures", "checkpoint_every"}


def cell_name(method: str, seed: int) -> str:
    """Run directory name of one grid cell."""
    return f"{method}-seed{seed}"


def default_runs_dir(scale: str) -> Path:
    """Where a grid's run directories go unless --runs-dir says otherwise."""
    return REPO / "runs" / f"reproduce-{scale}"


def teacher_cell(method: str, seed: int) -> tuple[str, int] | None:
    """The grid cell whose trained model is the teacher of ``method``'s cell ``seed`` (None: none)."""
    teacher = GRID_BY_KEY[method].teacher
    return None if teacher is None else (teacher, seed)


def cell_config(scale: Scale, method: str, seed: int, overrides: Mapping[str, Any] | None = None, runs_dir: Path | None = None):
    """The validated TrainConfig of one cell: scale fields, then the method's, then overrides.

    A method with a teacher gets ``teacher_run`` = its teacher cell's directory under
    ``runs_dir`` (default :func:`default_runs_dir`).
    """
    from keepmix.train.config import config_from_dict

    if method not in GRID_BY_KEY:
        raise GridError(f"unknown method {method!r}; the grid's methods are: {', '.join(GRID_BY_KEY)}")
    values = {**scale.fields, **GRID_BY_KEY[method].fields, **(overrides or {})}
    values.update(name=cell_name(method, seed), seed=seed)
    teacher = teacher_cell(method, seed)
    if teacher is not None:
        values["teacher_run"] = str(Path(runs_dir or default_runs_dir(scale.name)) / cell_name(*teacher))
    # eval_every None: evaluate once, after the last epoch.
    if values.get("eval_every") is None or values["eval_every"] > values["epochs"]:
        values["eval_every"] = values["epochs"]
    # A shortened run (--epochs) keeps a warm-up no longer than itself.
    if "warmup_epochs" not in (overrides or {}):
        values["warmup_epochs"] = min(float(values.get("warmup_epochs", 0.0)), float(values["epochs"]))
    config = config_from_dict(values, where=f"the {scale.name} grid ({method}, seed {seed})")
    why = _model_problem(config.model, config.early_head, config.early_block)
    if why:  # refuse before training rather than fail in the cell
        raise GridError(f"{method} cannot run on {config.model}: {why}")
    return config


@functools.cache
def _model_problem(model: str, early_head: bool, early_block: int) -> str | None:
    """Why a model with these early-head options cannot be built (None: it can)."""
    from keepmix.models import build_model

    try:
        build_model(model, num_classes=10, early_head=early_head, **({"early_block": early_block} if early_block else {}))
    except (ValueError, TypeError, KeyError) as e:
        return str(e)
    return None
