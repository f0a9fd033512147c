"""Reproduce the papers' method comparisons at a scale this machine can run.

Trains a grid of augmentation methods x seeds with keepmix's training harness
(:func:`keepmix.train.train`) and writes a table of final test accuracy (mean ± std over
seeds), each method's gain over its base method next to the paper's gain, training time per
run, and one plain sentence per comparison saying whether ours shows the paper's gain.

    python benchmarks/reproduce.py --scale tiny                 # seconds: a smoke test
    python benchmarks/reproduce.py --scale cpu --jobs 2         # ~2 h on 2 CPU cores
    python benchmarks/reproduce.py --scale early --jobs 2       # ~1.5 h: where the early head sits (ResNet-20)
    python benchmarks/reproduce.py --scale gpu                  # ~25 min on one H100
    python benchmarks/reproduce.py --scale cpu --estimate       # time a few steps per method, print the estimate
    python benchmarks/reproduce.py --scale cpu --report-only    # rebuild the table from finished runs
    python benchmarks/reproduce.py --scale gpu --time-limit 9   # stop cleanly after 9 min; rerun to go on
    python benchmarks/reproduce.py --scale inside --seeds 0 1 2 # whole boxes: the saliency's own effect

Each grid cell (method, seed) trains in its own run directory ``<runs-dir>/<method>-seed<s>/``
(config.yaml, metrics.jsonl, checkpoint.pt, final.json). A rerun skips cells whose
final.json exists and resumes cells that left a checkpoint (bitwise, as the harness
guarantees), so an interrupted grid continues where it stopped. Results go to
``<out>/reproduce_<scale>.md`` / ``.json`` / ``.csv`` (also after a partial grid: cells
without a finished run are listed as missing). Cells run seed-major (every method for seed
0, then seed 1, ...), so a grid stopped half-way already compares every method. ``--methods``
picks the cells to train; the table always covers the scale's whole grid, so training a few
new rows keeps the others (copy committed run summaries from ``benchmarks/results/
reproduce_<scale>_runs/`` into the runs directory first). Attentive CutMix's teacher is the
crop+flip cell of the same seed (its ``checkpoint.pt``): the runner trains that cell first and
starts the Attentive CutMix cell once it has finished (teacher cells train first).

The code: :mod:`repro_grid` (methods, scales, one cell's config), :mod:`repro_runner`
(training the cells), :mod:`repro_stats` (aggregation, pooled spread, scipy's t quantiles,
verdicts), :mod:`repro_report` (markdown / JSON / CSV); this file is the command line.

Exit status: 0 all cells done; 1 some cell failed (e.g. a NaN loss; the others still ran);
2 bad options or a run directory made with other settings; 3 stopped before the end by
--time-limit or a signal (the running cell wrote a checkpoint: rerun the same command).

The accuracy is the test accuracy after the last epoch (not the best epoch: choosing the
best epoch on the test set would flatter every method).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

# The grid, the runner, the statistics and the report live in their own modules; everything
# is re-exported here (``reproduce.X``) for the scripts and tests that import this one.
from repro_grid import (  # noqa: E402,F401
    GRID,
    GRID_BY_KEY,
    REPO,
    SCALES,
    GridError,
    GridMethod,
    Scale,
    cell_config,
    cell_name,
    default_runs_dir,
    teacher_cell,
)
from repro_report import (  # noqa: E402,F401
    _torch_threads,
    git_commit,
    machine_description,
    render_markdown,
    write_outputs,
)
from repro_runner import (  # noqa: E402,F401
    EXIT_INTERRUPTED,
    SHARED_CIFAR10,
    _cell_main,
    cell_status,
    default_data,
    estimate,
    load_splits,
    order_with_teachers,
    run_cell,
    run_grid,
    teacher_problem,
)
from repro_stats import (  # noqa: E402,F401
    EARLY_CONTROL,
    Row,
    RunRecord,
    Spread,
    aggregate,
    collect,
    control_sentences,
    difference,
    mean_std,
    pooled_spread,
    read_run,
    t975,
    verdict,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/reproduce.py",
        description=__doc__.split("\n\n")[0] + " Methods: " + ", ".join(GRID_BY_KEY) + ".",
    )
    p.add_argument(
        "--scale",
        choices=sorted(SCALES),
        default="cpu",
        help="grid size: tiny (seconds), cpu (~2 h), early (early-head placement on ResNet-20, ~1.5 h), "
        "gpu (~25 min on an H100); default cpu",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: the scale's, 0 1)")
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        metavar="METHOD",
        help="the grid's methods to train (default: the scale's; a method with a teacher also trains its "
        "teacher cell); the table always covers the scale's whole grid, listing cells without a "
        f"finished run as missing; choices: {', '.join(GRID_BY_KEY)}",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where reproduce_<scale>.md/.json/.csv go (default: benchmarks/results)")
    p.add_argument("--runs-dir", type=Path, default=None, help="run directories (default: runs/reproduce-<scale>)")
    p.add_argument(
        "--data",
        default=None,
        help="CIFAR-10 ImageFolder tarball or folder (train/ and test/); default: $KEEPMIX_CIFAR10_JPEG, "
        "else ../shared/data/cifar10-jpeg.tar.gz, else the official download",
    )
    p.add_argument("--model", default=None, help="override the scale's model (a keepmix model name, e.g. resnet20)")
    p.add_argument("--device", default=None, help="override the scale's device (cpu, cuda, cuda:N)")
    p.add_argument(
        "--jobs", type=int, default=1, help="cells trained at a time (default 1, in this process; >1: subprocesses, cores split among them)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per cell (default: cores // jobs); lets two grids share a machine, one core each",
    )
    p.add_argument("--epochs", type=int, default=None, help="override the scale's epochs")
    p.add_argument("--train-subset", type=int, default=None, help="override the scale's train subset (0 = all)")
    p.add_argument("--test-subset", type=int, default=None, help="override the scale's test subset (0 = all)")
    p.add_argument("--batch-size", type=int, default=None, help="override the scale's batch size")
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="MINUTES",
        help="stop after this many minutes: the running cell checkpoints, the table is written from the "
        "finished cells, exit status 3; rerunning the command resumes (for sessions with a per-command limit)",
    )
    p.add_argument("--estimate", action="store_true", help="time a few steps per method, print the grid's estimate, exit")
    p.add_argument("--report-only", action="store_true", help="do not train: write the table from finished runs")
    p.add_argument("--run-cell", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.run_cell:
        return _cell_main(args.run_cell)
    scale = SCALES[args.scale]
    seeds = tuple(args.seeds) if args.seeds else scale.seeds
    methods = tuple(args.methods) if args.methods else scale.methods
    unknown = [m for m in methods if m not in GRID_BY_KEY]
    if unknown:
        print(f"reproduce: error: unknown method(s) {', '.join(unknown)}; choices: {', '.join(GRID_BY_KEY)}", file=sys.stderr)
        return 2
    methods = tuple(m for m in GRID_BY_KEY if m in methods)  # grid order, no duplicates
    if args.jobs < 1:
        print("reproduce: error: --jobs must be >= 1", file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < 1:
        print(f"reproduce: error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    overrides: dict[str, Any] = {}
    for opt, fld in (
        ("model", "model"),
        ("device", "device"),
        ("epochs", "epochs"),
        ("train_subset", "train_subset"),
        ("test_subset", "test_subset"),
        ("batch_size", "batch_size"),
    ):
        if getattr(args, opt) is not None:
            overrides[fld] = getattr(args, opt)
    runs_dir = args.runs_dir or default_runs_dir(args.scale)
    data = args.data or default_data()
    from keepmix.train.config import ConfigError

    # Seed-major: a grid stopped half-way has every method for the first seed(s). Teacher cells
    # (Attentive CutMix's crop+flip runs) train first.
    cells = order_with_teachers([(m, s) for s in seeds for m in methods])
    # The table covers the scale's whole grid (and any other method asked for): training a
    # subset of its cells must not drop the other rows of the scale's results page.
    report_methods = tuple(m for m in GRID_BY_KEY if m in methods or m in scale.methods or any(c[0] == m for c in cells))
    try:
        configs = {c: cell_config(scale, *c, overrides, runs_dir=runs_dir) for c in cells}
    except (ConfigError, GridError) as e:
        print(f"reproduce: error: {e}", file=sys.stderr)
        return 2
    device = next(iter(configs.values())).device
    if args.threads is not None and device == "cpu":
        configs = {c: cfg.replace(threads=args.threads) for c, cfg in configs.items()}
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print(
                f"reproduce: error: the {args.scale} scale trains on {device} but CUDA is not available here; "
                "pass --device cpu to run its settings on the CPU (slowly), or use --scale cpu",
                file=sys.stderr,
            )
            return 2
    if args.estimate:
        est = estimate(scale, methods, seeds, overrides, data, jobs=args.jobs, threads=args.threads)
        print(
            f"estimated grid time: {est['total_s'] / 3600:.2f} h for {len(methods)} methods x {len(seeds)} seeds "
            f"with --jobs {args.jobs} ({est['steps']} timed steps per method)"
            + (f"; NOT counting the failed method(s) {', '.join(est['failed'])}" if est["failed"] else "")
        )
        return 1 if est["failed"] else 0
    outcome: dict = {}
    interrupted = False
    if not args.report_only:
        deadline = time.time() + 60 * args.time_limit if args.time_limit else None
        try:
            outcome = run_grid(cells, configs, runs_dir, data, jobs=args.jobs, deadline=deadline, threads=args.threads)
        except GridError as e:
            print(f"reproduce: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            interrupted = True
        interrupted = interrupted or any(v in ("interrupted", "not started") for v in outcome.values())
    records = collect(runs_dir, report_methods, seeds)
    rows = aggregate(records, report_methods)
    done = {(r.method, r.seed) for r in records}
    command = "python benchmarks/reproduce.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    meta = {
        "scale": args.scale,
        "command": command.strip(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "machine": machine_description(device),
        "jobs": args.jobs,
        "threads": (
            args.threads
            or (max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else (next(iter(configs.values())).threads or _torch_threads()))
        ),
        "runs_dir": str(runs_dir),
        "description": scale.description + (f" (overridden: {overrides})" if overrides else ""),
        "expected_time": scale.expected_time,
        "seeds": list(seeds),
        "methods": list(report_methods),
        "trained_methods": list(methods),
        "settings": next(iter(configs.values())).to_dict(),
        "method_fields": {m: dict(GRID_BY_KEY[m].fields) for m in report_methods},
        "missing": [cell_name(m, s) for s in seeds for m in report_methods if (m, s) not in done],
        "failed": {cell_name(*c): why for c, why in outcome.items() if why.startswith("failed")},
        "total_train_time_s": sum(r.train_time_s for r in records) if records else None,
        "total_wall_time_s": sum(r.wall_time_s for r in records) if records else None,
    }
    paths = write_outputs(args.out, args.scale, rows, records, meta)
    for p in paths:
        print(f"wrote {p}")
    if interrupted:
        print(
            "reproduce: the grid stopped before the end (time limit or signal); the table holds the finished "
            "cells; rerun the same command to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    return 1 if meta["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
