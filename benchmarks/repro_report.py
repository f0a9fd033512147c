"""Writing a reproduction grid's results: the markdown page (settings, the table, the
comparisons, the sentences, how to rerun), its JSON and CSV. Part of ``benchmarks/reproduce.py``.

Run on its own, it rebuilds a committed results page from committed run summaries, without
training, keeping the page's own record of where and when its cells trained::

    python benchmarks/repro_report.py benchmarks/results/inside/reproduce_inside.json \
        --runs benchmarks/results/inside/runs
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from repro_grid import REPO, cell_name
from repro_stats import ALPHA, Comparison, Row, RunRecord, aggregate, control_sentences, grid_comparisons, grid_spreads, read_run, t975

# What the grids' own pages record about the runs directories their cells were trained in (an
# origin, :func:`repro_stats.run_origin`): machine and code version.
KNOWN_ORIGINS = {
    "/root/keepmix-repro/runs": "AMD EPYC, 2 cores, keepmix 5c36bed (2026-11-22): section 3.1's grid",
    "/root/keepmix-repro/runs-early": "AMD EPYC, 2 cores, keepmix 5c36bed (2026-11-22): section 3.3's grid",
    "/work/main/runs/reproduce-cpu": "Intel Xeon, 2 cores, keepmix d614b33..90d3ad9 (2026-12-01/02): section 5.2's new rows",
    "/work/main/runs/reproduce-inside": "Intel Xeon, 2 cores, keepmix of 2026-12-01/02 (report at e1f3471): section 3.5's grid",
}


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


def _interval(ci: tuple[float, float] | None) -> str:
    return "—" if ci is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def _p(p: float | None) -> str:
    return "—" if p is None else f"{p:.3f}"


def render_comparisons(comps: Sequence[Comparison]) -> str:
    """The comparisons table: each difference with its test, raw and adjusted p and intervals, and
    the paired-by-seed differences beside the difference of the means."""
    if not comps:
        return ""
    out = io.StringIO()
    w = out.write
    w(
        "\n## Comparisons\n\n"
        "| comparison | test | difference of means | raw 95% interval | p | Holm p | adjusted 95% interval | "
        "paired by seed: differences -> mean (paired t p) |\n|---|---|---|---|---|---|---|---|\n"
    )
    for c in comps:
        name = f"{c.label} vs {c.base_label}" + (" (**primary**)" if c.primary else "")
        diff = "—" if c.diff is None else f"{c.diff:+.2f}" + ("" if c.se is None else f" ± {c.se:.2f}")
        test = c.test + ("" if c.df is None else f", {c.df:.1f} df") if c.test else c.note or "—"
        holm = "not adjusted (primary)" if c.primary else _p(c.p_holm) + ("" if c.p_holm is None else f" (of {c.family_size})")
        pr = "—"
        if c.paired is not None:
            d = ", ".join(f"{x:+.2f}" for x in c.paired.diffs)
            pr = f"{d} -> {c.paired.mean:+.2f}" + ("" if c.paired.p is None else f" (p = {c.paired.p:.3f})")
        w(f"| {name} | {test} | {diff} | {_interval(c.ci)} | {_p(c.p)} | {holm} | {_interval(c.ci_adj)} | {pr} |\n")
    return out.getvalue()


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
    rebuilt = meta.get("rebuilt")
    if rebuilt:
        w(
            f"- rebuilt without training: `{rebuilt['command']}` on {rebuilt['date']}, keepmix commit {rebuilt['commit']}; "
            "the lines above and the settings are the grid's own record of its runs\n"
        )
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
    spreads = grid_spreads(rows)
    comps = grid_comparisons(rows)
    w(
        "- gain: mean minus the base method's mean, ± its standard error. The seed-to-seed standard deviation is "
        "pooled over the methods of one origin (the code version and machine a run came from, read from its run "
        "summary: runs of different origins are never pooled, and a comparison across origins gets no test), and "
        f"only where Bartlett's test does not reject equal variances at {ALPHA:g}; where it does, each comparison "
        "uses Welch's t on its two methods' own stds. Per origin:\n"
    )
    for origin, (spread, check) in spreads.items():
        pooled = (
            "no method has two finished seeds, so no spread"
            if spread is None and check is None
            else "not pooled: Welch's t per comparison"
            if spread is None
            else f"s = {spread.sd:.2f} points with {spread.df} degrees of freedom, so t(0.975) = {t975(spread.df):.2f}"
        )
        test = "" if check is None else f"; {check.describe()}"
        known = KNOWN_ORIGINS.get(origin)
        w(f"  - `{origin or 'unrecorded'}`" + (f" ({known})" if known else "") + f": {pooled}{test}\n")
    w(
        "- multiplicity: within each origin one comparison is the grid's primary (named in "
        "`repro_stats.PRIMARY`) and keeps its raw p; the others are Holm-corrected together, and their adjusted "
        'interval is Bonferroni\'s over those comparisons (simultaneous 95%). "Within the seed spread" below means '
        f"that p (raw for the primary, Holm's for the rest) is at least {ALPHA:g}. Paired differences are by seed, "
        "over the seeds both methods share.\n"
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
    w(render_comparisons(comps))
    w("\n## Does ours show the paper's gain?\n\n")
    keep = [r for r in rows if r.base != "none" and r.verdict]
    other = [r for r in rows if r.base == "none" and r.verdict]
    for r in keep:
        w(f"- {r.verdict}\n")
    against_control = control_sentences(rows, comps)
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
    rebuilt_cells = meta.get("reconstructed") or {}
    if rebuilt_cells:
        w(
            "\nCells whose trainer files were not kept: their run summaries were rebuilt from a results CSV row "
            "(test accuracy and times only; no per-epoch metrics, no config): "
            + "; ".join(f"{c} from {src}" for c, src in rebuilt_cells.items())
            + ".\n"
        )
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


def collect_from(runs_dirs: Sequence[Path], methods: Sequence[str], seeds: Sequence[int]) -> list[RunRecord]:
    """Like :func:`repro_stats.collect` over several runs directories: each cell is taken from the
    first directory that holds it finished."""
    out = []
    for m in methods:
        for s in seeds:
            for d in runs_dirs:
                rec = read_run(Path(d) / cell_name(m, s), m, s)
                if rec is not None:
                    out.append(rec)
                    break
    return out


def rebuild(page_json: Path, runs_dirs: Sequence[Path], out_dir: Path | None = None, command: str = "") -> list[Path]:
    """Rewrite a results page (its .md, .json, .csv) from run summaries, without training. The
    page's methods, seeds, settings and record of where its cells trained (command, date,
    machine, commit) come from ``page_json``; the numbers from ``runs_dirs``."""
    old = json.loads(Path(page_json).read_text())["meta"]
    methods, seeds = old["methods"], old["seeds"]
    records = collect_from(runs_dirs, methods, seeds)
    rows = aggregate(records, methods)
    done = {(r.method, r.seed) for r in records}
    meta = {k: v for k, v in old.items() if k not in ("rebuilt", "reconstructed")}
    meta["rebuilt"] = {
        "command": command,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
    }
    meta["reconstructed"] = {cell_name(r.method, r.seed): r.reconstructed_from for r in records if r.reconstructed_from}
    meta["missing"] = [cell_name(m, s) for s in seeds for m in methods if (m, s) not in done]
    meta["total_train_time_s"] = sum(r.train_time_s for r in records) if records else None
    meta["total_wall_time_s"] = sum(r.wall_time_s for r in records) if records else None
    out = Path(out_dir) if out_dir is not None else Path(page_json).parent
    return write_outputs(out, meta["scale"], rows, records, meta)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of :func:`rebuild`."""
    p = argparse.ArgumentParser(prog="python benchmarks/repro_report.py", description=rebuild.__doc__)
    p.add_argument("page", type=Path, help="the page's reproduce_<scale>.json (its meta is kept)")
    p.add_argument("--runs", type=Path, nargs="+", required=True, help="runs directories, searched in order for each cell")
    p.add_argument("--out", type=Path, default=None, help="where to write (default: beside the page)")
    args = p.parse_args(argv)
    command = "python benchmarks/repro_report.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    for path in rebuild(args.page, args.runs, args.out, command):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
