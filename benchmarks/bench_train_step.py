"""Training-step cost of KeepAugment's saliency (full, low resolution, early head, both) and
of RecursiveMix, measured with keepmix's own training step.

Every contender is a real :class:`keepmix.train.loop.Trainer` (model, method, optimiser,
scheduler, AMP exactly as ``keepmix train`` builds them) and one timed step is
``Trainer._step``: the method's ``prepare`` (policy on uint8, normalise, saliency pass and
region op for the Keep variants), the forward (with the early head when the model has one),
the loss, backward and SGD step. All contenders of a group share the model architecture,
initial weights (same seed), batch size and the very same uint8 batches, and are timed
interleaved round by round (``benchmarks/timing.py``); the reported ratios are per-round
ratios, so machine drift cancels.

Groups (per model):

* cutout: Cutout; Cutout + early head (trained, loss weight 0.3); KeepCutout with full,
  low-resolution (downscale 2), early-head and low-resolution + early-head saliency;
* autoaugment: the same with AutoAugment / KeepAutoAugment;
* cutmix: CutMix, KeepCutMix (full saliency), RecursiveMix (with its consistency loss).

Baselines: a Keep variant's ratio is taken against the plain method *without* an early
head (what the paper compares against, and what a user switching from Cutout pays). The
early-head variants must also train the head (the saliency is taken through it), so their
ratio against "method + early head" is reported too: that isolates the saliency pass.

Where a target is missed, a torch.profiler table of that variant's step (phases and top ops
by self CPU time) is written next to the number. Writes ``<out>/train_step.md`` + ``.json``.

    python benchmarks/bench_train_step.py                          # resnet18,resnet110, batch 128
    python benchmarks/bench_train_step.py --models resnet18 --groups cutout --repeats 7
    python benchmarks/bench_train_step.py --quick --models small --out /tmp/b   # smoke test
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import Stats, interleaved, machine_info, machine_line, paired_ratio, sync, write_results  # noqa: E402

from keepmix.data import CIFAR10_MEAN, CIFAR10_STD, Split  # noqa: E402
from keepmix.train.config import TrainConfig  # noqa: E402
from keepmix.train.data import TrainData  # noqa: E402
from keepmix.train.loop import Trainer  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NUM_CLASSES = 10
CLASSES = [f"c{i}" for i in range(NUM_CLASSES)]

# Targets of the evidence issue (step time relative to the plain method).
SALIENCY_TARGETS = {"full": 1.6, "lowres": 1.15, "early": 1.15, "lowres+early": 1.06}
RECURSIVEMIX_TARGET = 1.05


@dataclass(frozen=True)
class Variant:
    """One contender: a label, the config fields it changes, and what it is compared with."""

    label: str
    fields: dict
    baseline: str | None = None  # label of the variant it is divided by (None: it is a baseline)
    target: float | None = None
    head_baseline: str | None = None  # for early-head variants: the baseline that trains the head too


def _keep_group(plain: str, keep: str, name: str, keep_name: str) -> list[Variant]:
    out = [
        Variant(name, {"method": plain}),
        Variant(f"{name} + early head", {"method": plain, "early_head": True}, baseline=name),
    ]
    for mode, target in SALIENCY_TARGETS.items():
        early = "early" in mode
        out.append(
            Variant(
                f"{keep_name} ({mode})",
                {"method": keep, "saliency": mode, "early_head": early},
                baseline=name,
                target=target,
                head_baseline=f"{name} + early head" if early else None,
            )
        )
    return out


GROUPS: dict[str, list[Variant]] = {
    "cutout": _keep_group("cutout", "keepcutout", "Cutout", "KeepCutout"),
    "autoaugment": _keep_group("autoaugment", "keepautoaugment", "AutoAugment", "KeepAutoAugment"),
    "cutmix": [
        Variant("CutMix", {"method": "cutmix"}),
        Variant("KeepCutMix (full)", {"method": "keepcutmix", "saliency": "full"}, baseline="CutMix", target=SALIENCY_TARGETS["full"]),
        Variant("RecursiveMix", {"method": "recursivemix"}, baseline="CutMix", target=RECURSIVEMIX_TARGET),
    ],
}


def synthetic_data(n: int, size: int, seed: int) -> TrainData:
    """Uniform random uint8 images and labels: the step's cost does not depend on content."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    split = Split(images, labels, list(CLASSES))
    return TrainData(train=split, test=split, classes=list(CLASSES), mean=CIFAR10_MEAN, std=CIFAR10_STD)


def build_trainer(model: str, variant: Variant, data: TrainData, args, run_dir: Path) -> Trainer:
    """A Trainer exactly as ``keepmix train`` builds it, for ``variant``'s method."""
    fields = dict(
        model=model,
        batch_size=args.batch,
        device=args.device,
        threads=args.threads,
        epochs=1,
        seed=args.seed,
        progress=False,
        pictures=False,
        out_dir=str(run_dir),
        name="bench",
    )
    fields.update(variant.fields)
    if fields.get("early_head") and args.early_block:
        fields["early_block"] = args.early_block
    trainer = Trainer(TrainConfig(**fields), data=data, run_dir=run_dir / variant.label.replace(" ", "_"), log=lambda m: None)
    trainer.model.train()
    return trainer


def _step_fn(trainer: Trainer, batches: list, steps: int) -> Callable[[], None]:
    state = {"i": 0}

    def run() -> None:
        for _ in range(steps):
            images, labels = batches[state["i"] % len(batches)]
            state["i"] += 1
            trainer._step(images, labels)

    return run


@contextmanager
def _annotated(trainer: Trainer):
    """Label the step's phases for the profiler: prepare (augmentation, incl. the saliency pass),
    the saliency pass alone; the rest of the step is forward + loss + backward + SGD."""
    from torch.profiler import record_function

    method = trainer.method
    prepare, saliency = method.prepare, method.saliency

    def prepare_wrapped(*a, **k):
        with record_function("phase: method.prepare (augmentation + saliency)"):
            return prepare(*a, **k)

    def saliency_wrapped(*a, **k):
        with record_function("phase: saliency pass"):
            return saliency(*a, **k)

    method.prepare = prepare_wrapped
    if saliency is not None:
        method.saliency = saliency_wrapped
    try:
        yield
    finally:
        del method.prepare
        if saliency is not None:
            method.saliency = saliency


def profile_step(trainer: Trainer, batches: list, steps: int, device: torch.device, rows: int = 12) -> str:
    """Phase totals and the top ops by self CPU time over ``steps`` steps, as text."""
    from torch.profiler import ProfilerActivity, profile, record_function

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    run = _step_fn(trainer, batches, steps)
    with _annotated(trainer):
        with profile(activities=acts) as prof:
            with record_function("phase: whole step(s)"):
                run()
                sync(device)
    events = prof.key_averages()
    phases = [e for e in events if e.key.startswith("phase: ")]
    total = max((e.cpu_time_total for e in phases if e.key == "phase: whole step(s)"), default=0.0)
    lines = [f"{'phase':58s} {'CPU total (ms/step)':>20s} {'share':>7s}"]
    for e in sorted(phases, key=lambda e: -e.cpu_time_total):
        share = e.cpu_time_total / total if total else 0.0
        lines.append(f"{e.key[7:]:58s} {e.cpu_time_total / 1e3 / steps:20.2f} {share:7.1%}")
    lines.append("")
    lines.append(events.table(sort_by="self_cpu_time_total", row_limit=rows))
    return "\n".join(lines)


def run_group(model: str, group: str, args, device: torch.device, workdir: Path) -> list[dict]:
    variants = GROUPS[group]
    data = synthetic_data(args.batch * args.num_batches, 32, args.seed)
    trainers = {v.label: build_trainer(model, v, data, args, workdir) for v in variants}
    first = trainers[variants[0].label]
    batches = [first.loader.batch(0, i) for i in range(args.num_batches)]  # identical for every variant
    contenders = {label: _step_fn(t, batches, args.steps) for label, t in trainers.items()}
    samples = interleaved(contenders, args.repeats, device, warmup=args.warmup, calls={k: 1 for k in contenders})
    per_step = {k: [s / args.steps for s in v] for k, v in samples.items()}
    rows = []
    for v in variants:
        ms = Stats.of(per_step[v.label]).map(lambda s: s * 1e3)
        row = {
            "model": model,
            "group": group,
            "variant": v.label,
            "config": v.fields,
            "ms_per_step": ms.to_dict(),
            "baseline": v.baseline,
            "ratio": None,
            "target": v.target,
            "target_met": None,
            "head_baseline": v.head_baseline,
            "ratio_vs_head_baseline": None,
            "profile": None,
        }
        if v.baseline is not None:
            ratio = paired_ratio(per_step[v.label], per_step[v.baseline])
            row["ratio"] = ratio.to_dict()
            if v.target is not None:
                row["target_met"] = ratio.median <= v.target
        if v.head_baseline is not None:
            row["ratio_vs_head_baseline"] = paired_ratio(per_step[v.label], per_step[v.head_baseline]).to_dict()
        want_profile = args.profile == "always" or (args.profile == "missed" and row["target_met"] is False)
        if want_profile:
            row["profile"] = profile_step(trainers[v.label], batches, args.steps, device)
        rows.append(row)
        r = row["ratio"]
        print(
            f"{model:10s} {v.label:34s} {ms.median:9.1f} ms/step"
            + (f"  x{r['median']:.3f} vs {v.baseline}" if r else "")
            + (f"  target <= {v.target:g}: {'met' if row['target_met'] else 'MISSED'}" if v.target else ""),
            flush=True,
        )
    return rows


def _fmt_ratio(d: dict | None) -> str:
    if d is None:
        return "—"
    return f"{d['median']:.3f} ({d['min']:.3f}–{d['max']:.3f})"


def to_markdown(rows: list[dict], info: dict, args, command: str) -> str:
    lines = [
        "# Training-step cost: KeepAugment saliency variants and RecursiveMix",
        "",
        f"- command: `{command}`",
        f"- date: {info['date']}",
        f"- machine: {machine_line(info)}",
        f"- device {args.device}; batch {args.batch} x 3 x 32 x 32 (synthetic uniform uint8 images, 10 classes; "
        f"crop + flip by keepmix's loader); {args.repeats} rounds x {args.steps} steps per variant, variants interleaved "
        f"(rotating start) after {args.warmup} warm-up call(s) of {args.steps} step(s)",
        "- one step = `Trainer._step` of keepmix.train (what `keepmix train` runs): method.prepare (policy on uint8, "
        "normalise, saliency pass, region op), forward (+ early head when the model has one, loss weight 0.3), "
        "soft-target cross-entropy, backward, SGD step, LR schedule; AMP as `amp=auto` (on for CUDA only)",
        "- ratio = median (min–max) over rounds of (variant step time / baseline step time) from the same round",
        "- baseline: the plain method **without** an early head (the paper's comparison: what switching from "
        "Cutout to KeepCutout costs). Early-head variants also train the head, so the ratio against "
        '"method + early head" (same model, head trained, no saliency) is given too: it isolates the saliency pass.',
        (
            f"- early head: after the first {args.early_block} block(s) of the first stage (`--early-block "
            f"{args.early_block}`, the models' `early_block`): the saliency pass crosses only the stem and those blocks."
            if args.early_block
            else "- early head: after the first stage (keepmix models' default `early_stage=1`): the saliency backward then "
            "crosses only the stem and one stage (for CIFAR ResNet-18, about a quarter of the forward FLOPs); a later "
            "stage would cost more; a head one block in is cheaper but its saliency agrees about half as well with the "
            "full map's (benchmarks/RESULTS.md section 1, `saliency_agreement.py`)."
        ),
        "- low resolution: saliency on a copy downscaled by 2 (bicubic, antialiased), mapped back bilinearly.",
        "",
        "| model | variant | ms/step (min–max) | vs baseline | target | met? | vs method + early head |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ms = r["ms_per_step"]
        met = "—" if r["target_met"] is None else ("yes" if r["target_met"] else "**NO**")
        target = f"<= {r['target']:g}" if r["target"] is not None else "—"
        base = f"{_fmt_ratio(r['ratio'])} vs {r['baseline']}" if r["ratio"] else "baseline"
        lines.append(
            f"| {r['model']} | {r['variant']} | {ms['median']:.1f} ({ms['min']:.1f}–{ms['max']:.1f}) | {base} | "
            f"{target} | {met} | {_fmt_ratio(r['ratio_vs_head_baseline'])} |"
        )
    lines += [
        "",
        "Reference points: the paper reports 2.0x (naive), 1.26x (low resolution), 1.21x (early head) for "
        "ResNet-18; a plain PyTorch version of the same passes measured 1.94x naive, 1.59x with only the input "
        "gradient, 1.16x low resolution, 1.22x early head, 1.06x both (ResNet-18, batch 64, this CPU type).",
        "",
    ]
    profiled = [r for r in rows if r["profile"]]
    if profiled:
        lines += ["## Profiles", ""]
        for r in profiled:
            why = "target missed" if r["target_met"] is False else "requested"
            lines += [
                f"### {r['model']} — {r['variant']} ({why}: ratio {_fmt_ratio(r['ratio'])}, target "
                f"{'<= ' + format(r['target'], 'g') if r['target'] else '—'})",
                "",
                f"torch.profiler over {args.steps} step(s); phases are labelled ranges (the rest of the step is "
                "forward + loss + backward + SGD), then the top ops by self CPU time.",
                "",
                "```",
                r["profile"].rstrip(),
                "```",
                "",
            ]
    lines.append("Numbers taken while other jobs share the CPU are noisy; the per-round ratios cancel most of it.")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18,resnet110", help="comma-separated keepmix model names")
    ap.add_argument("--groups", default=",".join(GROUPS), help="comma-separated groups: " + ", ".join(GROUPS))
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 128; quick 8)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per variant per round (default 1)")
    ap.add_argument("--repeats", type=int, default=None, help="rounds (default 5; quick 2)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up calls (of --steps steps) per variant")
    ap.add_argument("--num-batches", type=int, default=4, help="distinct batches cycled through")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument(
        "--profile",
        default="missed",
        choices=("missed", "always", "never"),
        help="write a torch.profiler table for variants that miss their target (default), all, or none",
    )
    ap.add_argument("--out", default=str(RESULTS_DIR), help="directory for train_step.md and train_step.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--early-block",
        type=int,
        default=0,
        help="put the early head after this many blocks of the first stage (0: after the whole stage); "
        "results go to train_step_early_block<N>.md",
    )
    ap.add_argument("--stem", default=None, help="results file name without extension (default train_step, or train_step_early_block<N>)")
    ap.add_argument("--quick", action="store_true", help="batch 8, 1 step, 2 rounds: a smoke test")
    args = ap.parse_args(argv)
    args.batch = args.batch or (8 if args.quick else 128)
    args.steps = args.steps or 1
    args.repeats = args.repeats or (2 if args.quick else 5)
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise SystemExit(f"--groups: unknown group(s) {unknown}; known: {', '.join(GROUPS)}")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    info = machine_info(device)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="keepmix-bench-") as tmp:
        for model in models:
            for group in groups:
                rows += run_group(model, group, args, device, Path(tmp))
    command = "python benchmarks/bench_train_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = to_markdown(rows, info, args, command.strip())
    stem = args.stem or (f"train_step_early_block{args.early_block}" if args.early_block else "train_step")
    md_path, _ = write_results(args.out, stem, md, {"machine": info, "args": vars(args), "rows": rows})
    print(f"wrote {md_path} and {stem}.json")
    return rows


if __name__ == "__main__":
    main()
