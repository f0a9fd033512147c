"""Step-time overhead of RecursiveMix (with its consistency loss) over CutMix.

Both run the full training step -- augmentation, forward, loss, backward, SGD step -- on the
same model, batch and device, interleaved (A B B A ...) so that drift on a shared machine
hits both alike. Prints the ratio and writes benchmarks/results/recursive.md.

    python benchmarks/bench_recursive.py                      # small net, CPU, 1 thread
    python benchmarks/bench_recursive.py --model resnet18 --device cuda --batch 128
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from timing import cpu_model, sync  # noqa: E402  (benchmarks/ is the script's folder)

from keepmix.mixing import CutMix
from keepmix.models import build_model
from keepmix.recursive import RecursiveMix
from keepmix.targets import soft_target_cross_entropy

RESULTS = Path(__file__).resolve().parent / "results" / "recursive.md"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="small", help="keepmix model name (small, resnet18, ...)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per method per repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--amp", action="store_true", help="bfloat16 autocast (float16 on CUDA)")
    ap.add_argument("--no-write", action="store_true", help="do not write the results file")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    k = 10
    model = build_model(args.model, num_classes=k).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator(device=device).manual_seed(0)
    batches = [
        (
            torch.rand(args.batch, 3, args.size, args.size, device=device, generator=g),
            torch.randint(0, k, (args.batch,), device=device, generator=g),
        )
        for _ in range(4)
    ]
    cutmix = CutMix(alpha=1.0, p=1.0, num_classes=k)
    rm = RecursiveMix(num_classes=k, alpha=0.5, omega=0.5)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp)

    def step_cutmix(i: int) -> None:
        x, y = batches[i % len(batches)]
        xm, ym = cutmix(x, y, generator=g)
        with autocast():
            loss = soft_target_cross_entropy(model(xm), ym)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def step_recursive(i: int) -> None:
        x, y = batches[i % len(batches)]
        xm, ym = rm(x, y, generator=g)
        params = rm.last_params  # this call's params, for the consistency loss
        with autocast():
            feats = model.forward_features(xm)
            logits = model.classify(feats)
            loss = soft_target_cross_entropy(logits, ym) + rm.consistency_loss(feats, head=model.fc, params=params)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rm.update(xm, ym, logits)

    def timed(fn, n: int, offset: int) -> float:
        sync(device)
        t0 = time.perf_counter()
        for i in range(n):
            fn(offset + i)
        sync(device)
        return (time.perf_counter() - t0) / n

    for i in range(args.warmup):  # also gives RecursiveMix its history
        step_cutmix(i)
        step_recursive(i)

    cut_t, rec_t = [], []
    for r in range(args.repeats):
        order = [(step_cutmix, cut_t), (step_recursive, rec_t)]
        if r % 2:
            order.reverse()
        for fn, acc in order:
            acc.append(timed(fn, args.steps, r * args.steps))
    ratios = [b / a for a, b in zip(cut_t, rec_t, strict=True)]

    # Augmentation alone (no model), for scale.
    x, y = batches[0]

    def aug_time(fn, n: int = 20) -> float:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync(device)
        return (time.perf_counter() - t0) / n

    aug_cut = aug_time(lambda: cutmix(x, y, generator=g))
    aug_rec = aug_time(lambda: rm(x, y, generator=g))

    # Everything RecursiveMix adds, timed without the model (much less noisy than the
    # difference of two full steps): mix, RoIAlign + head + loss forward and backward on a
    # feature map of the model's shape, and the history update.
    with torch.no_grad():
        feat_shape = model.forward_features(x).shape
    feats = torch.randn(feat_shape, device=device, generator=g).requires_grad_(True)
    logits_fixed = torch.randn(args.batch, k, device=device, generator=g)

    def rm_extra() -> None:
        xm, ym = rm(x, y, generator=g)
        rm.consistency_loss(feats, head=model.fc, params=rm.last_params).backward()
        rm.update(xm, ym, logits_fixed)

    extra_rec = aug_time(rm_extra)
    opt.zero_grad(set_to_none=True)
    est = (statistics.median(cut_t) - aug_cut + extra_rec) / statistics.median(cut_t)

    med = statistics.median(ratios)
    print(f"CutMix step     median {statistics.median(cut_t) * 1e3:8.2f} ms  (min {min(cut_t) * 1e3:.2f}, max {max(cut_t) * 1e3:.2f})")
    print(f"RecursiveMix    median {statistics.median(rec_t) * 1e3:8.2f} ms  (min {min(rec_t) * 1e3:.2f}, max {max(rec_t) * 1e3:.2f})")
    print(f"ratio RecursiveMix / CutMix: median {med:.3f}  (min {min(ratios):.3f}, max {max(ratios):.3f}) target <= 1.05")
    print(f"augmentation alone: CutMix {aug_cut * 1e3:.3f} ms, RecursiveMix(x, y) {aug_rec * 1e3:.3f} ms")
    print(f"RecursiveMix extra work (mix + consistency loss fwd/bwd + update): {extra_rec * 1e3:.3f} ms -> estimated ratio {est:.4f}")
    if args.no_write:
        return

    dev_desc = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{cpu_model()}, {os.cpu_count()} logical cores visible, torch threads {args.threads}"
    )
    lines = [
        "# RecursiveMix vs CutMix: training-step time",
        "",
        f"- command: `python {' '.join(['benchmarks/bench_recursive.py'] + sys.argv[1:])}`",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {dev_desc}; {platform.platform()}; torch {torch.__version__}",
        f"- model `{args.model}`, batch {args.batch} x 3 x {args.size} x {args.size}, device {device}, AMP {args.amp}",
        f"- {args.repeats} repeats x {args.steps} steps per method, interleaved (order alternates per repeat), "
        f"after {args.warmup} warm-up steps each",
        "- step = augmentation + forward + loss + backward + SGD step; RecursiveMix includes RoIAlign, the",
        "  shared-fc consistency loss and the history update (the copy of the mixed batch).",
        "",
        "| repeat | CutMix (ms/step) | RecursiveMix (ms/step) | ratio |",
        "|---|---|---|---|",
    ]
    for r, (a, b) in enumerate(zip(cut_t, rec_t, strict=True)):
        lines.append(f"| {r} | {a * 1e3:.2f} | {b * 1e3:.2f} | {b / a:.3f} |")
    lines += [
        "",
        f"**Ratio RecursiveMix / CutMix: median {med:.3f}** (min {min(ratios):.3f}, max {max(ratios):.3f}); target <= 1.05.",
        "",
        f"Augmentation alone (no model): CutMix {aug_cut * 1e3:.3f} ms, RecursiveMix(x, y) {aug_rec * 1e3:.3f} ms per batch.",
        "",
        f"Everything RecursiveMix adds, timed without the model (mix + RoIAlign/head/loss forward and backward on a "
        f"{tuple(feat_shape)} feature map + history update): {extra_rec * 1e3:.3f} ms per step. "
        f"Estimated ratio from it, (CutMix step - CutMix aug + RecursiveMix extra) / CutMix step: **{est:.4f}** "
        "(less noisy than the ratio of two full steps on a shared machine).",
        "",
    ]
    if device.type == "cpu":
        lines += [
            "Note: measured on a development machine whose 2 cores were shared with other engineers' jobs;",
            "absolute times are noisy, the interleaved ratio less so. To be rerun on a quiet machine (and on a GPU).",
            "",
        ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
