"""Writing a reproduction grid's results: the markdown page (settings, the table, the
sentences, how to rerun), its JSON and CSV. Part of ``benchmarks/reproduce.py``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from repro_grid import REPO
from repro_stats import Row, RunRecord, control_sentences, pooled_spread, t975


def _fmt(x: float | None, spec: str = ".2f", none: str = "—") -> str:
    return none if x is None else format(x, spec)


def _fmt_time(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 10:
        return f"{s:.1f} s"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def machine_description(device: str) -> str:
    """CPU model and cores, or the GPU's name, plus torch's version."""
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} logical cores"
    if device.startswith("cuda") and torch.cuda.is_available():
        text += f"; GPU {torch.cuda.get_device_name(0)}"
    return f"{text}; {platform.platform()}; torch {torch.__version__}"


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def render_markdown(rows: Sequence[Row], meta: Mapping[str, Any]) -> str:
    """The results page: settings, the table, one sentence per comparison, how to rerun."""
    s = meta["settings"]
    out = io.StringIO()
    w = out.write
    w(f"# Reproduction of the papers' comparisons: {meta['scale']} scale\n\n")
    w(f"- command: `{meta['command']}`\n")
    w(f"- date: {meta['date']}; keepmix commit {meta['commit']}\n")
    w(f"- machine: {meta['machine']}\n")
    w(f"- runs: {meta['jobs']} at a time, {meta.get('threads', '?')} CPU thread(s) each; run directories in `{meta['runs_dir']}`\n")
    w(f"- settings: {meta['description']}\n")
    keys = (
        "model",
        "train_subset",
        "test_subset",
        "epochs",
        "batch_size",
        "lr",
        "warmup_epochs",
        "momentum",
        "nesterov",
        "weight_decay",
        "label_smoothing",
        "crop_padding",
        "flip",
        "amp",
        "amp_dtype",
        "channels_last",
        "device",
        "eval_every",
        "keep_quantile",
        "cutout_length",
        "keep_paste_size",
        "cutmix_p",
        "cutmix_alpha",
        "mixup_alpha",
        "autoaugment_policy",
        "recursivemix_alpha",
    )
    w("  - " + ", ".join(f"{k}={s[k]}" for k in keys if k in s) + "\n")
    per_method = meta.get("method_fields") or {}
    if per_method:
        w("  - per method: " + "; ".join(f"{m}: " + ", ".join(f"{k}={v}" for k, v in f.items()) for m, f in per_method.items()) + "\n")
    w(
        f"  - seeds {meta['seeds']}; the seed sets the initial weights, the data order, the augmentation draws and "
        "(when train_subset > 0) which class-balanced subset is used. SGD with cosine decay after a linear warm-up; "
        "every other field keeps keepmix's TrainConfig default.\n"
    )
    w("- accuracy: top-1 on the test set after the last epoch (not the best epoch); mean ± sample std over seeds.\n")
    spread = pooled_spread((r.n, r.acc_std) for r in rows)
    pooled = (
        "no method has two finished seeds yet, so no spread"
        if spread is None
        else f"s = {spread.sd:.2f} points with {spread.df} degrees of freedom, so t(0.975) = {t975(spread.df):.2f}"
    )
    w(
        "- gain: mean minus the base method's mean, ± its standard error s·sqrt(1/n1 + 1/n2), where s is the "
        "seed-to-seed standard deviation pooled over every method of this grid (one set-up, so one noise level; "
        f'a 2-seed method\'s own std is too uncertain to test with): {pooled}. "Within the seed spread" below '
        'means |difference| <= t(0.975) standard errors (a 95% two-sided t test); "beyond" means outside it.\n'
    )
    w(
        "- train time: the training steps of one run (augmentation, saliency, forward, backward, update), without "
        "evaluation; x base = that time over the base method's. The paper's cost ratio (KeepAugment Table: ResNet-18 "
        "Cutout 19, KeepCutout 38, +low-res 24, +early 23) stands beside ours.\n"
    )
    w(
        "- paper's gain: accuracy points as published, in the paper's (much larger) setting noted in the last column; "
        "at this scale only the direction and rough size are comparable.\n\n"
    )

    w(
        "| method | base | test acc % (mean ± std, n) | gain over base (ours) | paper's gain | train time / run | "
        "time x base (ours / paper) | paper's setting |\n"
    )
    w("|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        acc = "no finished run" if r.acc_mean is None else f"{r.acc_mean:.2f} ± {_fmt(r.acc_std, '.2f', 'n/a')} (n={r.n})"
        gain = "—" if r.gain is None else f"{r.gain:+.2f} ± {_fmt(r.gain_se, '.2f', 'n/a')}"
        paper = "—" if r.paper_gain is None else f"{r.paper_gain:+.2f}"
        ratio = "—" if r.time_ratio is None and r.paper_cost is None else f"{_fmt(r.time_ratio)} / {_fmt(r.paper_cost)}"
        w(
            f"| {r.label} | {r.base_label or '—'} | {acc} | {gain} | {paper} | {_fmt_time(r.time_mean_s)} | "
            f"{ratio} | {r.paper_note or '—'} |\n"
        )
    w("\n## Does ours show the paper's gain?\n\n")
    keep = [r for r in rows if r.base != "none" and r.verdict]
    other = [r for r in rows if r.base == "none" and r.verdict]
    for r in keep:
        w(f"- {r.verdict}\n")
    against_control = control_sentences(rows)
    if against_control:
        w(
            "\nAgainst the controls (the same quantile rule on a constant map, which only ever cuts boxes the border "
            "clips; Cutout training the same early head): what the saliency itself adds.\n\n"
        )
        for sentence in against_control:
            w(f"- {sentence}\n")
    if other:
        w("\nThe plain methods against crop+flip only:\n\n")
        for r in other:
            w(f"- {r.verdict}\n")
    missing = meta.get("missing") or []
    if missing:
        w(f"\nCells without a finished run (not in the table): {', '.join(missing)}.\n")
    w("\n## Rerunning\n\n")
    rerun = " ".join(part for part in meta["command"].split() if part != "--report-only")
    w(
        f"`{rerun}` ({meta['expected_time']}; this grid's cells took {_fmt_time(meta.get('total_train_time_s'))} "
        f"of training in total, {_fmt_time(meta.get('total_wall_time_s'))} of run time summed over cells). "
        "Finished cells are skipped and interrupted ones resume from their checkpoint; "
        "`--report-only` rebuilds this page from the run directories. With the same seeds on the same device and "
        "thread count a rerun gives the same numbers; across machines expect differences of the size of the std column.\n"
    )
    return out.getvalue()


def write_outputs(out_dir: Path, scale: str, rows: Sequence[Row], records: Sequence[RunRecord], meta: Mapping[str, Any]) -> list[Path]:
    """reproduce_<scale>.md / .json / .csv in ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / f"reproduce_{scale}.md"
    md.write_text(render_markdown(rows, meta))
    js = out_dir / f"reproduce_{scale}.json"
    js.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows], "runs": [asdict(r) for r in records]}, indent=2) + "\n")
    cs = out_dir / f"reproduce_{scale}.csv"
    with open(cs, "w", newline="") as f:
        names = [fld for fld in RunRecord.__dataclass_fields__]
        wr = csv.DictWriter(f, fieldnames=names)
        wr.writeheader()
        for r in records:
            wr.writerow(asdict(r))
    return [md, js, cs]
