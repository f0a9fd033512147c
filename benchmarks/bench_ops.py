"""Images per second of every keepmix op, side by side with a per-image loop and kornia.

For every op, batch shape and dtype, three contenders (plus a plain ``x.clone()``, the
memory floor) are timed in the same run, interleaved round by round (see
``benchmarks/timing.py``):

* keepmix's op (the nn.Module, ``forward`` with a ``torch.Generator``);
* a straightforward per-image loop reference of the same op (``benchmarks/loop_reference.py``:
  one image at a time, numpy sampling, per-image tensor ops, ``while True`` for the Keep ops);
* kornia's equivalent where it has one (float input only).

Keep ops are given a precomputed saliency map (their own cost only; the model's saliency
pass is measured by bench_train_step.py). Writes ``<out>/ops.md`` and ``<out>/ops.json``.

    python benchmarks/bench_ops.py                          # full run, CPU, 2 threads
    python benchmarks/bench_ops.py --device cuda            # on a GPU
    python benchmarks/bench_ops.py --ops KeepCutout,CutMix --shapes 256x32
    python benchmarks/bench_ops.py --quick --out /tmp/b     # seconds: smoke test
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loop_reference as L  # noqa: E402
from timing import Stats, fmt_rate, fmt_ratio, interleaved, machine_info, machine_line, paired_ratio, write_results  # noqa: E402

from keepmix.attentive_cutmix import AttentiveCutMix  # noqa: E402
from keepmix.augmix import AugMix  # noqa: E402
from keepmix.fmix import FMix  # noqa: E402
from keepmix.gridmask import GridMask  # noqa: E402
from keepmix.keep import KeepAutoAugment, KeepCutMix, KeepCutout, KeepPaste, KeepRandAugment, KeepRandomErasing  # noqa: E402
from keepmix.mixing import CutMix, Mixup  # noqa: E402
from keepmix.policies import AutoAugment, RandAugment, TrivialAugmentWide  # noqa: E402
from keepmix.regional import Cutout, RandomErasing  # noqa: E402
from keepmix.resizemix import ResizeMix  # noqa: E402
from keepmix.saliencymix import SaliencyMix  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NUM_CLASSES = 10
Q = 0.6
DEFAULT_SHAPES = "256x32,64x224"
QUICK_SHAPES = "8x32,2x64"

# Targets of the speed issue.
KEEP_LOOP_TARGET = 20.0  # Keep ops: >= 20x the per-image loop at 32 px
KEEP_COPY_TARGET = 2.0  # selective-cut ops / KeepPaste: at most 2x the time of x.clone() at 224 px
KORNIA_TARGET = 2.0  # every op with a kornia equivalent: >= 2x kornia's images/s

Thunk = Callable[[], object]


@dataclass(frozen=True)
class Inputs:
    """One benchmark case: images, labels, saliency, and the region side used by the ops."""

    x: torch.Tensor
    y: torch.Tensor
    sal: torch.Tensor
    side: int  # Cutout length / kept-region side: half the image side (16 at 32 px)
    generator: torch.Generator
    rng: np.random.RandomState


@dataclass(frozen=True)
class OpSpec:
    """How to build each contender of one op for given inputs (None: no such contender).

    ``kind``: "floor" (the copy), "plain" (an op), "keep_cut" / "keep_paste" (the Keep ops:
    a region op with a KeepPlacer, or KeepPaste, whose own cost the copy target applies to),
    "keep_policy" (KeepPaste around a policy: the policy's cost dominates at large sizes).
    """

    name: str
    kind: str
    keepmix: Callable[[Inputs], Thunk]
    loop: Callable[[Inputs], Thunk] | None
    kornia: Callable[[Inputs], Thunk] | None = None
    kornia_name: str = ""
    kornia_per_batch: bool = False  # kornia draws one op set per batch (not per image)


def _kornia(ctor: Callable[[], torch.nn.Module], with_labels: bool = False) -> Callable[[Inputs], Thunk]:
    def build(inp: Inputs) -> Thunk:
        aug = ctor().to(inp.x.device)
        if with_labels:
            return lambda: aug(inp.x, inp.y)
        return lambda: aug(inp.x)

    return build


def _grid_range(inp: Inputs) -> tuple[int, int]:
    """GridMask's unit range at this size: the official ImageNet (96, 224) relative to the side
    ((14, 32) at 32 px)."""
    size = inp.x.shape[-1]
    return max(1, round(size * 7 / 16)), size


_TEACHERS: dict[tuple, torch.nn.Module] = {}


def _teacher(inp: Inputs) -> torch.nn.Module:
    """Attentive CutMix's teacher for the benchmark: one fixed random 8 x 8 / stride-8
    convolution (a 4 x 4 grid at 32 px, 28 x 28 at 224), shared by the op and the loop."""
    key = (str(inp.x.device),)
    if key not in _TEACHERS:
        torch.manual_seed(0)
        _TEACHERS[key] = torch.nn.Conv2d(3, 8, 8, stride=8).to(inp.x.device).eval()
    return _TEACHERS[key]


def _specs() -> dict[str, OpSpec]:
    import kornia.augmentation as K
    from kornia.augmentation import auto

    er_kwargs = dict(p=0.5, scale=(0.02, 0.4), ratio=(0.3, 1 / 0.3))

    def op_images(make: Callable[[Inputs], torch.nn.Module]) -> Callable[[Inputs], Thunk]:
        def build(inp: Inputs) -> Thunk:
            op = make(inp).to(inp.x.device)
            return lambda: op(inp.x, generator=inp.generator)

        return build

    def op_labels(make: Callable[[Inputs], torch.nn.Module]) -> Callable[[Inputs], Thunk]:
        def build(inp: Inputs) -> Thunk:
            op = make(inp).to(inp.x.device)
            return lambda: op(inp.x, inp.y, generator=inp.generator)

        return build

    def keep_images(make: Callable[[Inputs], torch.nn.Module]) -> Callable[[Inputs], Thunk]:
        def build(inp: Inputs) -> Thunk:
            op = make(inp).to(inp.x.device)
            return lambda: op(inp.x, saliency=inp.sal, generator=inp.generator)

        return build

    def keep_labels(make: Callable[[Inputs], torch.nn.Module]) -> Callable[[Inputs], Thunk]:
        def build(inp: Inputs) -> Thunk:
            op = make(inp).to(inp.x.device)
            return lambda: op(inp.x, inp.y, saliency=inp.sal, generator=inp.generator)

        return build

    specs = [
        OpSpec("copy", "floor", lambda i: i.x.clone, None),
        OpSpec("Cutout", "plain", op_images(lambda i: Cutout(i.side)), lambda i: lambda: L.cutout_loop(i.x, i.rng, i.side)),
        OpSpec(
            "RandomErasing",
            "plain",
            op_images(lambda i: RandomErasing(**er_kwargs)),
            lambda i: lambda: L.random_erasing_loop(i.x, i.rng, **er_kwargs),
            _kornia(lambda: K.RandomErasing(value=0.0, **er_kwargs)),
            "RandomErasing",
        ),
        OpSpec(
            "Mixup",
            "plain",
            op_labels(lambda i: Mixup(1.0, num_classes=NUM_CLASSES)),
            lambda i: lambda: L.mixup_loop(i.x, i.y, i.rng, NUM_CLASSES),
            _kornia(lambda: K.RandomMixUpV2(data_keys=["input", "class"]), True),
            "RandomMixUpV2",
        ),
        OpSpec(
            "CutMix",
            "plain",
            op_labels(lambda i: CutMix(1.0, 1.0, NUM_CLASSES)),
            lambda i: lambda: L.cutmix_loop(i.x, i.y, i.rng, NUM_CLASSES),
            _kornia(lambda: K.RandomCutMixV2(use_correct_lambda=True, data_keys=["input", "class"]), True),
            "RandomCutMixV2",
        ),
        OpSpec(
            "AutoAugment",
            "plain",
            op_images(lambda i: AutoAugment("cifar10")),
            lambda i: lambda: L.autoaugment_loop(i.x, i.rng),
            _kornia(lambda: auto.AutoAugment("cifar10")),
            "auto.AutoAugment",
            True,
        ),
        OpSpec(
            "RandAugment",
            "plain",
            op_images(lambda i: RandAugment(2, 9)),
            lambda i: lambda: L.randaugment_loop(i.x, i.rng),
            _kornia(lambda: auto.RandAugment(n=2, m=9)),
            "auto.RandAugment",
            True,
        ),
        OpSpec(
            "TrivialAugmentWide",
            "plain",
            op_images(lambda i: TrivialAugmentWide()),
            lambda i: lambda: L.trivialaugment_loop(i.x, i.rng),
            _kornia(lambda: auto.TrivialAugment()),
            "auto.TrivialAugment",
            True,
        ),
        # The methods KeepAugment's Table 5 and the mixing libraries compare against; kornia has
        # none of them (kornia.augmentation offers RandomMixUpV2, RandomCutMixV2, RandomMosaic,
        # RandomJigsaw, RandomTransplantation, PatchMix).
        OpSpec(
            "GridMask",
            "plain",
            op_images(lambda i: GridMask(_grid_range(i))),
            lambda i: lambda: L.gridmask_loop(i.x, i.rng, _grid_range(i)),
        ),
        OpSpec("AugMix", "plain", op_images(lambda i: AugMix()), lambda i: lambda: L.augmix_loop(i.x, i.rng)),
        OpSpec(
            "AttentiveCutMix",
            "plain",
            op_labels(lambda i: AttentiveCutMix(_teacher(i), num_classes=NUM_CLASSES)),
            lambda i: lambda: L.attentive_cutmix_loop(i.x, i.y, i.rng, _teacher(i), NUM_CLASSES),
        ),
        OpSpec(
            "ResizeMix",
            "plain",
            op_labels(lambda i: ResizeMix(num_classes=NUM_CLASSES)),
            lambda i: lambda: L.resizemix_loop(i.x, i.y, i.rng, NUM_CLASSES),
        ),
        OpSpec(
            "SaliencyMix",
            "plain",
            op_labels(lambda i: SaliencyMix(num_classes=NUM_CLASSES)),
            lambda i: lambda: L.saliencymix_loop(i.x, i.y, i.rng, NUM_CLASSES),
        ),
        OpSpec(
            "FMix",
            "plain",
            op_labels(lambda i: FMix(num_classes=NUM_CLASSES)),
            lambda i: lambda: L.fmix_loop(i.x, i.y, i.rng, NUM_CLASSES),
        ),
        OpSpec(
            "KeepCutout",
            "keep_cut",
            keep_images(lambda i: KeepCutout(i.side, q=Q)),
            lambda i: lambda: L.keep_cutout_loop(i.x, i.sal, i.rng, i.side, q=Q),
        ),
        OpSpec(
            "KeepRandomErasing",
            "keep_cut",
            keep_images(lambda i: KeepRandomErasing(q=Q, **er_kwargs)),
            lambda i: lambda: L.keep_random_erasing_loop(i.x, i.sal, i.rng, q=Q, **er_kwargs),
        ),
        OpSpec(
            "KeepCutMix",
            "keep_cut",
            keep_labels(lambda i: KeepCutMix(alpha=1.0, p=1.0, num_classes=NUM_CLASSES, q=Q)),
            lambda i: lambda: L.keep_cutmix_loop(i.x, i.y, i.sal, i.rng, NUM_CLASSES, q=Q),
        ),
        OpSpec(
            "KeepPaste(identity)",
            "keep_paste",
            keep_images(lambda i: KeepPaste(lambda t: t, size=i.side, q=Q)),
            lambda i: lambda: L.keep_paste_loop(i.x, i.sal, i.rng, None, i.side, q=Q),
        ),
        OpSpec(
            "KeepAutoAugment",
            "keep_policy",
            keep_images(lambda i: KeepAutoAugment("cifar10", size=i.side, q=Q)),
            lambda i: lambda: L.keep_paste_loop(i.x, i.sal, i.rng, lambda t: L.autoaugment_loop(t, i.rng), i.side, q=Q),
        ),
        OpSpec(
            "KeepRandAugment",
            "keep_policy",
            keep_images(lambda i: KeepRandAugment(2, 9, size=i.side, q=Q)),
            lambda i: lambda: L.keep_paste_loop(i.x, i.sal, i.rng, lambda t: L.randaugment_loop(t, i.rng), i.side, q=Q),
        ),
    ]
    return {s.name: s for s in specs}


LOOP_DESCRIPTIONS = {
    "Cutout": "cutout_loop",
    "RandomErasing": "random_erasing_loop",
    "Mixup": "mixup_loop",
    "CutMix": "cutmix_loop",
    "AutoAugment": "autoaugment_loop",
    "RandAugment": "randaugment_loop",
    "TrivialAugmentWide": "trivialaugment_loop",
    "GridMask": "gridmask_loop",
    "AugMix": "augmix_loop",
    "AttentiveCutMix": "attentive_cutmix_loop",
    "ResizeMix": "resizemix_loop",
    "SaliencyMix": "saliencymix_loop",
    "FMix": "fmix_loop",
    "KeepCutout": "keep_cutout_loop",
    "KeepRandomErasing": "keep_random_erasing_loop",
    "KeepCutMix": "keep_cutmix_loop",
    "KeepPaste(identity)": "keep_paste_loop",
    "KeepAutoAugment": "keep_paste_loop",
    "KeepRandAugment": "keep_paste_loop",
}


def _make_inputs(batch: int, size: int, dtype: torch.dtype, device: torch.device, seed: int) -> Inputs:
    g = torch.Generator(device="cpu").manual_seed(seed)
    if dtype == torch.uint8:
        x = torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8)
    else:
        x = torch.rand(batch, 3, size, size, generator=g).to(dtype)  # [0, 1]: what the policies take
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=g)
    sal = torch.rand(batch, size, size, generator=g)
    gen = torch.Generator(device=device).manual_seed(seed)
    return Inputs(x.to(device), y.to(device), sal.to(device), max(1, size // 2), gen, np.random.RandomState(seed))


def _target(
    spec: OpSpec, size: int, uint8: bool, vs_loop: Stats | None, vs_kornia: Stats | None, vs_copy: Stats | None
) -> tuple[str, bool | None]:
    """(text, met) of the speed target that applies to this row (met None: no target)."""
    if spec.kind in ("keep_cut", "keep_paste", "keep_policy"):
        if size <= 32:
            if vs_loop is None:
                return "—", None
            ok = vs_loop.median >= KEEP_LOOP_TARGET
            return f"{'yes' if ok else 'NO'} (>= {KEEP_LOOP_TARGET:g}x loop)", ok
        if spec.kind == "keep_policy":
            return "— (policy cost dominates; see KeepPaste(identity))", None
        if vs_copy is None:
            return "—", None
        ok = vs_copy.median <= KEEP_COPY_TARGET
        return f"{'yes' if ok else 'NO'} ({vs_copy.median:.2f}x copy time, <= {KEEP_COPY_TARGET:g})", ok
    if spec.kornia is not None:
        if uint8:
            return "n/a (kornia float-only)", None
        if vs_kornia is None:
            return "—", None
        ok = vs_kornia.median >= KORNIA_TARGET
        return f"{'yes' if ok else 'NO'} (>= {KORNIA_TARGET:g}x kornia)", ok
    return "—", None


def run_case(spec: OpSpec, batch: int, size: int, dtype: torch.dtype, device: torch.device, args) -> dict:
    """Time one (op, shape, dtype): keepmix, loop, kornia and the copy, interleaved."""
    inp = _make_inputs(batch, size, dtype, device, args.seed)
    uint8 = dtype == torch.uint8
    contenders: dict[str, Thunk] = {"keepmix": spec.keepmix(inp)}
    if spec.loop is not None:
        contenders["loop"] = spec.loop(inp)
    if spec.kornia is not None and not uint8:
        contenders["kornia"] = spec.kornia(inp)
    if spec.kind != "floor":
        contenders["copy"] = inp.x.clone
    samples = interleaved(contenders, args.rounds, device, warmup=args.warmup, min_sample_s=args.min_sample_s)
    rate = {k: Stats.of(v).map(lambda t: batch / t) for k, v in samples.items()}
    vs_loop = paired_ratio(samples["loop"], samples["keepmix"]) if "loop" in samples else None
    vs_kornia = paired_ratio(samples["kornia"], samples["keepmix"]) if "kornia" in samples else None
    vs_copy = paired_ratio(samples["keepmix"], samples["copy"]) if "copy" in samples else None
    text, met = _target(spec, size, uint8, vs_loop, vs_kornia, vs_copy)
    return {
        "op": spec.name,
        "shape": [batch, 3, size, size],
        "dtype": str(dtype).replace("torch.", ""),
        "device": str(device),
        "images_per_s": {k: v.to_dict() for k, v in rate.items()},
        "keepmix_over_loop": vs_loop.to_dict() if vs_loop else None,
        "keepmix_over_kornia": vs_kornia.to_dict() if vs_kornia else None,
        "keepmix_time_over_copy": vs_copy.to_dict() if vs_copy else None,
        "kornia_op": spec.kornia_name or None,
        "kornia_per_batch": spec.kornia_per_batch,
        "target": text,
        "target_met": met,
    }


def _cell(stats: dict | None, ratio: bool = False) -> str:
    if stats is None:
        return "n/a"
    if ratio:
        return f"{fmt_ratio(stats['median'])} ({fmt_ratio(stats['min'])}–{fmt_ratio(stats['max'])})"
    return f"{fmt_rate(stats['median'])} ({fmt_rate(stats['min'])}–{fmt_rate(stats['max'])})"


def to_markdown(rows: list[dict], info: dict, args, command: str) -> str:
    lines = [
        "# keepmix ops: images per second",
        "",
        f"- command: `{command}`",
        f"- date: {info['date']}",
        f"- machine: {machine_line(info)}",
        f"- device {args.device}; {args.rounds} rounds per case, contenders interleaved (rotating start), "
        f"{args.warmup} warm-up calls each, each sample >= {args.min_sample_s:g} s of back-to-back calls",
        "- cells: median images/s (min–max over rounds); ratios are the median (min–max) of the per-round ratios "
        "(keepmix/loop = loop time / keepmix time, so > 1 means keepmix is faster)",
        "- inputs: uniform random images (float32 in [0, 1], uint8 in [0, 255]), labels of 10 classes, a uniform "
        "random (B, H, W) saliency map given to the Keep ops; region side = image side / 2 (Cutout length and "
        "kept region 16 at 32 px, 112 at 224 px); q = 0.6; CutMix/Mixup alpha 1, p 1; RandomErasing p 0.5, value 0; "
        "AutoAugment cifar10 policy; RandAugment N=2, M=9",
        "",
        "| op | shape | dtype | keepmix img/s | loop img/s | kornia img/s | keepmix/loop | keepmix/kornia | target met? |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    per_batch = False
    for r in rows:
        ips = r["images_per_s"]
        kornia = _cell(ips.get("kornia"))
        if r["kornia_per_batch"] and "kornia" in ips:
            kornia += " ¹"
            per_batch = True
        shape = "x".join(str(s) for s in r["shape"])
        lines.append(
            f"| {r['op']} | {shape} | {r['dtype']} | {_cell(ips['keepmix'])} | {_cell(ips.get('loop'))} | {kornia} | "
            f"{_cell(r['keepmix_over_loop'], True)} | {_cell(r['keepmix_over_kornia'], True)} | {r['target']} |"
        )
    lines += [""]
    if per_batch:
        lines += [
            "¹ kornia's AutoAugment / RandAugment / TrivialAugment draw one sub-policy / op set for the whole "
            "batch; keepmix draws them per image (and groups the batch by op).",
            "",
        ]
    with_kornia = {r["op"]: r["kornia_op"] for r in rows if r["kornia_op"]}
    if with_kornia:
        lines += [
            "kornia equivalents: "
            + ", ".join(f"{op} -> `kornia.augmentation.{k}`" for op, k in with_kornia.items())
            + ". kornia takes float images only: its uint8 cells are n/a.",
            "",
        ]
    lines += [
        "Targets: Keep ops >= 20x the loop at 32 px; selective-cut ops (KeepCutout, KeepRandomErasing, KeepCutMix) and "
        "KeepPaste(identity) at most 2x the time of a plain copy (`x.clone()`) at 224 px; every op with a kornia "
        "equivalent >= 2x kornia's images/s (float32).",
        "",
        "## What each loop reference does",
        "",
        "All in `benchmarks/loop_reference.py`: one image at a time, parameters from a numpy `RandomState`, "
        "per-image tensor slicing. Tested to give keepmix's exact output for keepmix's parameters "
        "(`tests/test_benchmarks.py`).",
        "",
    ]
    names = sorted({r["op"] for r in rows if r["op"] in LOOP_DESCRIPTIONS})
    docs = L.describe(sorted({LOOP_DESCRIPTIONS[n] for n in names}))
    for n in names:
        fn = LOOP_DESCRIPTIONS[n]
        extra = ""
        if n == "KeepAutoAugment":
            extra = " The augmentation is `autoaugment_loop`."
        elif n == "KeepRandAugment":
            extra = " The augmentation is `randaugment_loop`."
        elif n == "KeepPaste(identity)":
            extra = " The augmentation is the identity (the selective-paste's own cost)."
        lines.append(f"- **{n}** (`{fn}`): {docs[fn]}{extra}")
    lines.append(
        "- Policy ops in the loops run through keepmix.functional's public per-op functions on one "
        "(1, C, H, W) image at a time. Keep loops compute each image's threshold from a numpy "
        "summed-area table of all candidate positions, then draw positions in a `while True` loop, "
        "summing the saliency inside each drawn box by slicing."
    )
    lines.append("")
    missed = [r for r in rows if r["target_met"] is False]
    lines.append(
        f"Targets met: {sum(r['target_met'] is True for r in rows)}; missed: {len(missed)}"
        + ("" if not missed else " (" + ", ".join(f"{r['op']} {'x'.join(map(str, r['shape']))} {r['dtype']}" for r in missed) + ")")
    )
    lines.append("")
    lines.append("Numbers taken while other jobs share the CPU are noisy; the per-round ratios cancel most of it.")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"tiny shapes ({QUICK_SHAPES}), 2 rounds, 1 call per sample: a smoke test")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--out", default=str(RESULTS_DIR), help="directory for ops.md and ops.json")
    ap.add_argument("--ops", default="", help="comma-separated op names (default: all): " + ", ".join(_OP_NAMES))
    ap.add_argument("--shapes", default="", help=f"comma-separated BxS (batch x side), default {DEFAULT_SHAPES}")
    ap.add_argument("--dtypes", default="float32,uint8")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per case (default 7; quick 2)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up calls per contender (default 2; quick 1)")
    ap.add_argument("--min-sample-s", type=float, default=None, help="minimum seconds per sample (default 0.1; quick 0)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.rounds = args.rounds if args.rounds is not None else (2 if args.quick else 7)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.min_sample_s = args.min_sample_s if args.min_sample_s is not None else (0.0 if args.quick else 0.1)
    args.shapes = args.shapes or (QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    return args


_OP_NAMES = (
    "copy",
    "Cutout",
    "RandomErasing",
    "Mixup",
    "CutMix",
    "AutoAugment",
    "RandAugment",
    "TrivialAugmentWide",
    "GridMask",
    "AugMix",
    "AttentiveCutMix",
    "ResizeMix",
    "SaliencyMix",
    "FMix",
    "KeepCutout",
    "KeepRandomErasing",
    "KeepCutMix",
    "KeepPaste(identity)",
    "KeepAutoAugment",
    "KeepRandAugment",
)


def _parse_shapes(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        try:
            b, s = item.lower().split("x")
            out.append((int(b), int(s)))
        except ValueError:
            raise SystemExit(f"--shapes: expected BxS items like 256x32, got {item!r}") from None
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    specs = _specs()
    names = [n.strip() for n in args.ops.split(",") if n.strip()] or list(specs)
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise SystemExit(f"--ops: unknown op(s) {unknown}; known: {', '.join(specs)}")
    dtypes = {"float32": torch.float32, "uint8": torch.uint8}
    try:
        dts = [dtypes[d.strip()] for d in args.dtypes.split(",")]
    except KeyError as e:
        raise SystemExit(f"--dtypes: unknown dtype {e}; use float32 and/or uint8") from None
    info = machine_info(device)
    rows = []
    for batch, size in _parse_shapes(args.shapes):
        for dt in dts:
            for name in names:
                row = run_case(specs[name], batch, size, dt, device, args)
                rows.append(row)
                ips = row["images_per_s"]
                print(
                    f"{name:20s} {batch}x3x{size}x{size} {row['dtype']:8s} keepmix {fmt_rate(ips['keepmix']['median']):>6s}"
                    f"  loop {fmt_rate(ips['loop']['median']) if 'loop' in ips else 'n/a':>6s}"
                    f"  kornia {fmt_rate(ips['kornia']['median']) if 'kornia' in ips else 'n/a':>6s}  {row['target']}",
                    flush=True,
                )
    command = "python benchmarks/bench_ops.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = to_markdown(rows, info, args, command.strip())
    data = {"machine": info, "args": vars(args), "rows": rows}
    md_path, _ = write_results(args.out, "ops", md, data)
    print(f"wrote {md_path} and ops.json")
    return rows


if __name__ == "__main__":
    main()
