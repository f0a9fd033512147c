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

Each grid cell (method, seed) trains in its own run directory ``<runs-dir>/<method>-seed<s>/``
(config.yaml, metrics.jsonl, checkpoint.pt, final.json). A rerun skips cells whose
final.json exists and resumes cells that left a checkpoint (bitwise, as the harness
guarantees), so an interrupted grid continues where it stopped. Results go to
``<out>/reproduce_<scale>.md`` / ``.json`` / ``.csv`` (also after a partial grid: cells
without a finished run are listed as missing). Cells run seed-major (every method for seed
0, then seed 1, ...), so a grid stopped half-way already compares every method.

Exit status: 0 all cells done; 1 some cell failed (e.g. a NaN loss; the others still ran);
2 bad options or a run directory made with other settings; 3 stopped before the end by
--time-limit or a signal (the running cell wrote a checkpoint: rerun the same command).

The accuracy is the test accuracy after the last epoch (not the best epoch: choosing the
best epoch on the test set would flatter every method).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import functools
import io
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
SHARED_CIFAR10 = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


class GridError(RuntimeError):
    """A grid that cannot run as asked (bad option, a run directory made with other settings)."""


# --------------------------------------------------------------------------------------------
# The grid: methods, their base method, and the paper's gain (SPEC.md)
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


GRID: tuple[GridMethod, ...] = (
    GridMethod("none", "crop+flip only", {"method": "none"}),
    GridMethod("cutout", "Cutout", {"method": "cutout"}, "none", -0.08,
               "CIFAR-100 PyramidNet-200, error 16.45 -> 16.53"),
    GridMethod("keepcutout", "KeepCutout (full)", {"method": "keepcutout", "saliency": "full"}, "cutout", 0.5,
               "CIFAR-10 ResNet-18, 95.6 -> 96.1", 38 / 19),
    # The control: the same quantile rule on a constant map. A box's importance is then its
    # area, so only boxes clipped by the border are cut (Cutout made weaker, no image content):
    # KeepCutout's gain over this row is what the saliency itself adds.
    GridMethod("keepcutout_uniform", "KeepCutout (uniform map: control)", {"method": "keepcutout", "saliency": "uniform"},
               "cutout", None, "control, not in the paper: the quantile rule with no saliency"),
    GridMethod("keepcutout_lowres", "KeepCutout (low-res)", {"method": "keepcutout", "saliency": "lowres"}, "cutout", 0.6,
               "CIFAR-10 ResNet-18, 95.6 -> 96.2", 24 / 19),
    # The early-head variants also train the head (loss weight 0.3 on the first stage's
    # features), which changes the network whatever the saliency does: this control trains it
    # with plain Cutout, so the early variants can be read against it.
    GridMethod("cutout_earlyhead", "Cutout + early head (control)", {"method": "cutout", "early_head": True},
               "cutout", None, "control, not in the paper: the early head's auxiliary loss alone, no saliency"),
    GridMethod("keepcutout_early", "KeepCutout (early)",
               {"method": "keepcutout", "saliency": "early", "early_head": True}, "cutout", 0.4,
               "CIFAR-10 ResNet-18, 95.6 -> 96.0", 23 / 19),
    # The head one block into the first stage: the placement that meets the step-cost
    # target (benchmarks/RESULTS.md section 1). Needs a model whose first stage has several
    # blocks (the ResNets, WRN), so it is not in the small net's cpu grid.
    GridMethod("keepcutout_early1", "KeepCutout (early, block 1)",
               {"method": "keepcutout", "saliency": "early", "early_head": True, "early_block": 1}, "cutout", 0.4,
               "the paper's early head (95.6 -> 96.0) sits after the whole first stage; ours after its first block"),
    GridMethod("cutmix", "CutMix", {"method": "cutmix"}, "none", 2.22,
               "CIFAR-100 PyramidNet-200, error 16.45 -> 14.23"),
    GridMethod("keepcutmix", "KeepCutMix", {"method": "keepcutmix", "saliency": "full"}, "cutmix", 0.4,
               "ImageNet ResNet-50, 78.6 -> 79.0"),
    GridMethod("autoaugment", "AutoAugment", {"method": "autoaugment"}, "none", None,
               "SPEC gives no AutoAugment-vs-baseline pair"),
    GridMethod("keepautoaugment", "KeepAutoAugment", {"method": "keepautoaugment", "saliency": "full"}, "autoaugment", 0.5,
               "CIFAR-10 WRN-28-10, 97.3 -> 97.8"),
    GridMethod("mixup", "Mixup", {"method": "mixup"}, "none", 0.82,
               "CIFAR-100 PyramidNet-200, error 16.45 -> 15.63"),
    # omega 0.1: the paper's CIFAR-10 setting (0.5 is its ImageNet default).
    GridMethod("recursivemix", "RecursiveMix", {"method": "recursivemix", "recursivemix_omega": 0.1}, "none", 2.88,
               "ImageNet ResNet-50, 76.32 -> 79.20; CIFAR-10 PyramidNet-200 reaches 97.65%"),
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


_COMMON = dict(dataset="cifar10", momentum=0.9, nesterov=True, weight_decay=5e-4, label_smoothing=0.0,
               crop_padding=4, flip=True, keep_quantile=0.6, keep_paste_size=16, cutout_length=16,
               progress=False, pictures=False, checkpoint_every=1)

SCALES: dict[str, Scale] = {
    # Seconds: the end-to-end test of this script. A few dozen images, one epoch.
    "tiny": Scale(
        "tiny",
        dict(_COMMON, model="small", train_subset=40, test_subset=20, epochs=1, batch_size=8, lr=0.05,
             warmup_epochs=0.0, eval_every=1, log_every=5, device="cpu", amp="off", channels_last="off", threads=1),
        seeds=(0, 1), methods=("none", "cutout", "keepcutout"),
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
        dict(_COMMON, model="small", train_subset=5000, test_subset=0, epochs=20, batch_size=64, lr=0.05,
             warmup_epochs=1.0, eval_every=None, log_every=20, device="cpu", amp="off", channels_last="off"),
        seeds=(0, 1), methods=tuple(m.key for m in GRID if m.key != "keepcutout_early1"),
        description="small CPU net (0.66M params), 5,000-image class-balanced CIFAR-10 subset, full 10k test set, 20 epochs",
        expected_time="about 2 h with --jobs 2 on 2 cores",
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
        dict(_COMMON, model="resnet20", train_subset=5000, test_subset=0, epochs=20, batch_size=64, lr=0.05,
             warmup_epochs=1.0, eval_every=None, log_every=20, device="cpu", amp="off", channels_last="off"),
        seeds=(0, 1, 2), methods=("cutout", "keepcutout", "keepcutout_uniform", "cutout_earlyhead", "keepcutout_early",
                               "keepcutout_early1"),
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
        dict(_COMMON, model="resnet18", train_subset=0, test_subset=0, epochs=13, batch_size=512, lr=0.4,
             warmup_epochs=2.0, eval_every=5, log_every=50, device="cuda", amp="on", amp_dtype="bfloat16",
             channels_last="on"),
        seeds=(0, 1), methods=tuple(m.key for m in GRID),  # keepcutout_early1 included: ResNet-18 has blocks
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


def cell_config(scale: Scale, method: str, seed: int, overrides: Mapping[str, Any] | None = None):
    """The validated TrainConfig of one cell: scale fields, then the method's, then overrides."""
    from keepmix.train.config import config_from_dict

    if method not in GRID_BY_KEY:
        raise GridError(f"unknown method {method!r}; the grid's methods are: {', '.join(GRID_BY_KEY)}")
    values = {**scale.fields, **GRID_BY_KEY[method].fields, **(overrides or {})}
    values.update(name=cell_name(method, seed), seed=seed)
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


@functools.lru_cache(maxsize=None)
def _model_problem(model: str, early_head: bool, early_block: int) -> str | None:
    """Why a model with these early-head options cannot be built (None: it can)."""
    from keepmix.models import build_model

    try:
        build_model(model, num_classes=10, early_head=early_head, **({"early_block": early_block} if early_block else {}))
    except (ValueError, TypeError, KeyError) as e:
        return str(e)
    return None


# --------------------------------------------------------------------------------------------
# Running cells
# --------------------------------------------------------------------------------------------
def _config_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    keys = (set(a) | set(b)) - _RUN_ONLY_FIELDS
    return sorted(k for k in keys if a.get(k) != b.get(k))


def cell_status(cell_dir: Path) -> str:
    """'done' (final.json), 'partial' (a checkpoint to resume), 'failed' or 'todo'."""
    if (cell_dir / "final.json").is_file():
        return "done"
    if (cell_dir / "checkpoint.pt").is_file():
        return "partial"
    if (cell_dir / "failed.json").is_file():
        return "failed"
    return "todo"


#: Exit status of a --run-cell subprocess stopped by the grid's deadline (a checkpoint was written).
EXIT_INTERRUPTED = 3


def run_cell(cell_dir: Path, config, data_pair: tuple[Any, Any] | None = None,
             deadline: float | None = None) -> dict[str, Any]:
    """Train one cell into ``cell_dir`` (resuming its checkpoint if any); returns final.json.

    ``data_pair`` = (train split, test split) loaded once by the caller; None loads
    ``config.dataset`` here. ``deadline`` (a ``time.time()`` value): past it the run stops
    after the current step, writes its checkpoint and raises the harness's ``RunInterrupted``
    (so does SIGINT/SIGTERM). A cell whose saved config differs from ``config`` in a field
    that changes results raises :class:`GridError` instead of mixing two settings.
    """
    from keepmix.train.config import load_config
    from keepmix.train.data import prepare_data
    from keepmix.train.loop import FINAL_NAME, FinishedRunError, RunInterrupted, train

    cell_dir = Path(cell_dir)
    final_path = cell_dir / FINAL_NAME
    saved = cell_dir / "config.yaml"
    if saved.is_file():
        diff = _config_diff(load_config(saved).to_dict(), config.to_dict())
        if diff:
            raise GridError(f"{cell_dir} was run with other settings ({', '.join(diff)} differ); "
                            "use another --runs-dir or delete that directory")
    if final_path.is_file():
        return json.loads(final_path.read_text())
    cell_dir.mkdir(parents=True, exist_ok=True)
    (cell_dir / "failed.json").unlink(missing_ok=True)
    data = prepare_data(*data_pair, config) if data_pair is not None else None
    log_file = open(cell_dir / "train.log", "a")

    def log(msg: str) -> None:
        log_file.write(msg.rstrip("\n") + "\n")
        log_file.flush()

    def on_step(trainer: Any, step: int) -> None:
        if deadline is not None and time.time() > deadline:
            trainer.request_stop()

    try:
        if (cell_dir / "checkpoint.pt").is_file():
            try:
                return train(None, resume=cell_dir, data=data, log=log, on_step=on_step)  # type: ignore[arg-type]
            except FinishedRunError:
                # Finished but killed before final.json was written: train it again.
                for name in ("checkpoint.pt", "metrics.jsonl"):
                    (cell_dir / name).unlink(missing_ok=True)
        return train(config, data=data, run_dir=cell_dir, log=log, on_step=on_step)
    except RunInterrupted:
        raise  # not a failure: the checkpoint resumes it
    except Exception as e:
        (cell_dir / "failed.json").write_text(json.dumps({"error": f"{type(e).__name__}: {e}"}, indent=2) + "\n")
        raise
    finally:
        log_file.close()


def load_splits(data: str | None):
    """(train, test) of CIFAR-10 from ``data`` (an ImageFolder tarball/folder) or the default source."""
    from keepmix.data import get_dataset

    if data:
        os.environ["KEEPMIX_CIFAR10_JPEG"] = str(data)
    train, test = get_dataset("cifar10")
    return train, test


def default_data() -> str | None:
    """$KEEPMIX_CIFAR10_JPEG, else the shared tarball beside the checkout, else None (download)."""
    env = os.environ.get("KEEPMIX_CIFAR10_JPEG")
    if env:
        return env
    return str(SHARED_CIFAR10) if SHARED_CIFAR10.is_file() else None


def _cell_main(cell_dir: str) -> int:
    """Subprocess entry point (--run-cell): train the cell described by its cell.json."""
    from keepmix.train.config import config_from_dict
    from keepmix.train.loop import RunInterrupted

    cell_dir_p = Path(cell_dir)
    spec = json.loads((cell_dir_p / "cell.json").read_text())
    config = config_from_dict(spec["config"], where=str(cell_dir_p / "cell.json"))
    if spec.get("data"):
        os.environ["KEEPMIX_CIFAR10_JPEG"] = spec["data"]
    try:
        run_cell(cell_dir_p, config, deadline=spec.get("deadline"))
    except RunInterrupted as e:
        print(f"{cell_dir}: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        print(f"{cell_dir}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


def run_grid(
    cells: Sequence[tuple[str, int]],
    configs: Mapping[tuple[str, int], Any],
    runs_dir: Path,
    data: str | None,
    jobs: int = 1,
    deadline: float | None = None,
    say: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
) -> dict[tuple[str, int], str]:
    """Train every cell that is not done, in the order given; returns cell -> outcome.

    Outcomes: 'done', 'failed: reason' (the grid goes on), 'interrupted' (the deadline or
    SIGINT/SIGTERM: the cell wrote a checkpoint, the grid stops; a rerun resumes it).
    ``jobs`` = 1 trains in this process (the dataset is decoded once); ``jobs`` > 1 runs that
    many cells at a time as subprocesses, each with ``threads`` = cores // jobs (on a small
    CPU net two single-thread processes beat one two-thread process).
    """
    from keepmix.train.loop import RunInterrupted

    outcome: dict[tuple[str, int], str] = {}
    todo = []
    for cell in cells:
        cdir = runs_dir / cell_name(*cell)
        if cell_status(cdir) == "done":
            run_cell(cdir, configs[cell])  # checks the saved settings match
            outcome[cell] = "done"
        else:
            todo.append(cell)
    if not todo:
        return outcome
    say(f"{len(outcome)} of {len(cells)} cells already done; training {len(todo)} in {runs_dir}")
    t0 = time.perf_counter()

    def report(i: int, cell: tuple[str, int]) -> None:
        final = json.loads((runs_dir / cell_name(*cell) / "final.json").read_text())
        say(f"[{i}/{len(todo)}] {cell_name(*cell)}: test acc {final['test_acc']:.2f}%, "
            f"{final['wall_time_s']:.0f} s (grid {time.perf_counter() - t0:.0f} s)")

    if jobs <= 1:
        splits = load_splits(data)
        for i, cell in enumerate(todo, 1):
            if deadline is not None and time.time() > deadline:
                say(f"time limit reached: {len(todo) - i + 1} cell(s) not started; rerun to continue")
                outcome.update({c: "not started" for c in todo[i - 1:]})
                break
            cdir = runs_dir / cell_name(*cell)
            say(f"[{i}/{len(todo)}] {cell_name(*cell)} ({cell_status(cdir)}) ...")
            try:
                run_cell(cdir, configs[cell], splits, deadline)
                outcome[cell] = "done"
                report(i, cell)
            except GridError:
                raise
            except RunInterrupted as e:
                outcome[cell] = "interrupted"
                say(f"[{i}/{len(todo)}] {cell_name(*cell)} stopped ({e}); rerun the same command to resume")
                outcome.update({c: "not started" for c in todo[i:]})
                break
            except Exception as e:  # one failed cell (e.g. a NaN loss) must not lose the grid
                outcome[cell] = f"failed: {type(e).__name__}: {e}"
                say(f"[{i}/{len(todo)}] {cell_name(*cell)} FAILED: {e}")
        return outcome

    threads = max(1, (os.cpu_count() or 1) // jobs)
    pending = list(todo)
    running: list[tuple[tuple[str, int], subprocess.Popen]] = []
    done_count = 0
    stopping = False
    try:
        while pending or running:
            if deadline is not None and time.time() > deadline and pending and not stopping:
                say(f"time limit reached: {len(pending)} cell(s) not started; rerun to continue")
                stopping = True
            while pending and not stopping and len(running) < jobs:
                cell = pending.pop(0)
                cdir = runs_dir / cell_name(*cell)
                cdir.mkdir(parents=True, exist_ok=True)
                cfg = configs[cell].to_dict()
                if cfg["device"] == "cpu":
                    cfg["threads"] = threads
                spec = {"config": cfg, "data": data, "deadline": deadline}
                (cdir / "cell.json").write_text(json.dumps(spec, indent=2) + "\n")
                err = open(cdir / "stderr.log", "a")
                proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--run-cell", str(cdir)],
                                        stdout=err, stderr=subprocess.STDOUT, cwd=str(REPO))
                err.close()
                running.append((cell, proc))
                say(f"started {cell_name(*cell)} (pid {proc.pid})")
            if stopping and not running:
                outcome.update({c: "not started" for c in pending})
                break
            time.sleep(0.5)
            for cell, proc in list(running):
                if proc.poll() is None:
                    continue
                running.remove((cell, proc))
                done_count += 1
                cdir = runs_dir / cell_name(*cell)
                if proc.returncode == 0 and cell_status(cdir) == "done":
                    outcome[cell] = "done"
                    report(done_count, cell)
                elif proc.returncode == EXIT_INTERRUPTED:
                    outcome[cell] = "interrupted"
                    stopping = True
                    say(f"[{done_count}/{len(todo)}] {cell_name(*cell)} stopped at the time limit; rerun to resume")
                else:
                    log = cdir / "stderr.log"
                    tail = log.read_text().strip().splitlines()[-1:] if log.is_file() else []
                    outcome[cell] = f"failed: exit {proc.returncode}: {' '.join(tail)}"
                    say(f"[{done_count}/{len(todo)}] {cell_name(*cell)} FAILED ({outcome[cell]}); see {log}")
    except KeyboardInterrupt:
        # Ctrl-C reaches the children too (same process group): let them write their checkpoints.
        say("interrupted: waiting for the running cells to write their checkpoints")
        for cell, proc in running:
            proc.wait()
            outcome[cell] = "interrupted"
        raise
    return outcome


# --------------------------------------------------------------------------------------------
# Collecting and aggregating
# --------------------------------------------------------------------------------------------
@dataclass
class RunRecord:
    """One finished cell."""

    method: str
    seed: int
    test_acc: float
    best_test_acc: float | None
    train_time_s: float  # training steps only (sum of the epochs' step time), no evaluation
    wall_time_s: float  # the whole run: training, evaluation, checkpoints
    epochs: int
    steps: int
    images_per_s: float | None
    run_dir: str


def read_run(cell_dir: Path, method: str, seed: int) -> RunRecord | None:
    """The record of a finished cell (final.json + metrics.jsonl), or None if it is not done."""
    final_path = cell_dir / "final.json"
    if not final_path.is_file():
        return None
    final = json.loads(final_path.read_text())
    metrics = []
    mpath = cell_dir / "metrics.jsonl"
    if mpath.is_file():
        metrics = [json.loads(ln) for ln in mpath.read_text().splitlines() if ln.strip()]
    train_time = sum(float(r.get("epoch_time_s", 0.0)) for r in metrics) or float(final["wall_time_s"])
    rates = [float(r["images_per_s"]) for r in metrics if "images_per_s" in r]
    return RunRecord(
        method=method, seed=seed, test_acc=float(final["test_acc"]),
        best_test_acc=None if final.get("best_test_acc") is None else float(final["best_test_acc"]),
        train_time_s=train_time, wall_time_s=float(final["wall_time_s"]), epochs=int(final["epochs"]),
        steps=int(final.get("steps", 0)), images_per_s=statistics.fmean(rates) if rates else None,
        run_dir=str(cell_dir),
    )


def collect(runs_dir: Path, methods: Sequence[str], seeds: Sequence[int]) -> list[RunRecord]:
    """Records of every finished cell of the grid (missing cells are simply absent)."""
    out = []
    for m in methods:
        for s in seeds:
            rec = read_run(Path(runs_dir) / cell_name(m, s), m, s)
            if rec is not None:
                out.append(rec)
    return out


@dataclass
class Row:
    """One method's aggregate."""

    method: str
    label: str
    base: str | None
    base_label: str | None
    n: int
    seeds: list[int]
    acc_mean: float | None
    acc_std: float | None  # sample std (n - 1); None below 2 seeds
    gain: float | None  # mean - base mean
    gain_se: float | None  # standard error of that difference, from the grid's pooled spread
    gain_tol: float | None  # half-width of its 95% interval: t(0.975, df) * gain_se
    paper_gain: float | None
    paper_note: str
    time_mean_s: float | None
    time_ratio: float | None  # train time / base's train time
    paper_cost: float | None
    verdict: str = ""


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None where undefined)."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) >= 2 else None)


# Two-sided 95% quantiles of Student's t by degrees of freedom; between entries the lower df's
# (larger, so conservative) value applies.
_T975 = ((1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (5, 2.571), (6, 2.447), (7, 2.365), (8, 2.306),
         (9, 2.262), (10, 2.228), (12, 2.179), (15, 2.131), (20, 2.086), (30, 2.042), (60, 2.000), (120, 1.980),
         (1000, 1.962))


def t975(df: float) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (conservative between table entries)."""
    for d, t in reversed(_T975):
        if df >= d:
            return t
    return _T975[0][1]


@dataclass(frozen=True)
class Spread:
    """The seed-to-seed spread of test accuracy, pooled over every method of a grid."""

    sd: float  # sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1))
    df: int  # sum (n_i - 1)


def pooled_spread(groups: Iterable[tuple[int, float | None]]) -> Spread | None:
    """Pool ``(n, sample std)`` of each method into one spread (None without any repeated seed).

    Every cell of a grid shares the set-up and the seeds drive its noise, so one spread for
    the grid is estimated from all methods together: with 2-3 seeds a method's own std is
    itself very uncertain (two seeds can agree to 0.01 points by chance), and a test built on
    it alone would have one degree of freedom.
    """
    num = den = 0.0
    for n, std in groups:
        if n >= 2 and std is not None:
            num += (n - 1) * std ** 2
            den += n - 1
    return Spread(math.sqrt(num / den), int(den)) if den else None


def difference(mean_a: float, n_a: int, mean_b: float, n_b: int,
               spread: Spread | None) -> tuple[float, float | None, float | None]:
    """``(mean_a - mean_b, its standard error, the half-width of its 95% interval)``:
    ``se = sd * sqrt(1/n_a + 1/n_b)`` with the grid's pooled ``sd``, and the interval
    ``t(0.975, df) * se`` (2.18 standard errors for the 13-method, 2-seed CPU grid; a normal
    "2 se" rule would ignore how few seeds there are). None without a spread."""
    diff = mean_a - mean_b
    if spread is None:
        return diff, None, None
    se = spread.sd * math.sqrt(1.0 / n_a + 1.0 / n_b)
    return diff, se, t975(spread.df) * se


def verdict(label: str, base_label: str | None, gain: float | None, se: float | None,
            paper: float | None, n: int, n_base: int, tol: float | None = None) -> str:
    """One plain sentence: does ours show the paper's gain over the base?

    "Beyond the spread" means ``|gain| > tol``, the half-width of the 95% interval of the
    difference of the two means (:func:`difference`; ``2 se`` when not given); below that the
    seeds cannot tell the difference from zero.
    """
    if base_label is None:
        return ""
    if gain is None:
        return f"{label}: cannot compare with {base_label}: one of them has no finished run."
    if se is None:
        return (f"{label}: {gain:+.2f} points over {base_label} from {min(n, n_base)} seed(s); "
                "no spread can be estimated from one seed, so no conclusion.")
    tol = 2 * se if tol is None else tol
    ours = f"{gain:+.2f} ± {se:.2f}"
    if paper is None:
        if abs(gain) <= tol:
            return f"{label}: {ours} points over {base_label}, within the seed spread of zero (no paper number to compare)."
        return f"{label}: {ours} points over {base_label}, beyond the seed spread (no paper number to compare)."
    p = f"{paper:+.2f}"
    if gain > tol and paper > 0 or gain < -tol and paper < 0:
        size = ""
        if abs(gain - paper) > tol:
            size = ", larger than the paper's" if abs(gain) > abs(paper) else ", though smaller than the paper's"
        return f"{label}: ours shows the paper's effect over {base_label}: {ours} points vs the paper's {p}{size}."
    if gain > tol or gain < -tol:
        return (f"{label}: ours does NOT show the paper's gain: {ours} points over {base_label}, "
                f"the opposite direction to the paper's {p}, beyond the seed spread.")
    also = ("the paper's " + p + " is also within it, so more seeds (or a longer schedule) are needed to tell"
            if abs(gain - paper) <= tol else "the paper's " + p + " lies outside it")
    return (f"{label}: ours does NOT show the paper's gain: {ours} points over {base_label} "
            f"is within the seed spread of zero; {also}.")


CONTROL = "keepcutout_uniform"
EARLY_CONTROL = "cutout_earlyhead"


def _against(r: Row, ctrl: Row, spread: Spread | None, name: str, same: str, better: str, worse: str) -> str:
    diff, se, tol = difference(r.acc_mean, r.n, ctrl.acc_mean, ctrl.n, spread)
    if se is None:
        return f"{r.label}: {diff:+.2f} points over {name} from one seed per method; no spread, no conclusion."
    what = same if abs(diff) <= tol else better if diff > 0 else worse
    return f"{r.label}: {diff:+.2f} ± {se:.2f} points over {name}, {what}."


def control_sentences(rows: Sequence[Row]) -> list[str]:
    """KeepCutout variants against the controls: the uniform map (what the saliency adds beyond
    the quantile rule's geometry) and, for early-head variants, Cutout + early head instead
    (their network also trains the head's auxiliary loss, which the uniform control does not,
    so only that control isolates their saliency). Empty without the controls."""
    by = {r.method: r for r in rows}
    ctrl, early_ctrl = by.get(CONTROL), by.get(EARLY_CONTROL)
    spread = pooled_spread((r.n, r.acc_std) for r in rows)
    out = []
    for r in rows:
        fields = GRID_BY_KEY[r.method].fields
        if r.method == CONTROL or fields.get("method") != "keepcutout" or r.acc_mean is None:
            continue
        if not fields.get("early_head") and ctrl is not None and ctrl.acc_mean is not None:
            out.append(_against(
                r, ctrl, spread, "the uniform-map control",
                "within the seed spread of zero: at this scale the saliency map adds nothing measurable beyond the "
                "rule's choice of border-clipped boxes",
                "beyond the seed spread: the saliency map itself adds accuracy",
                "below the control beyond the seed spread: this saliency steers the cut to worse regions than area alone"))
        if fields.get("early_head") and early_ctrl is not None and early_ctrl.acc_mean is not None:
            out.append(_against(
                r, early_ctrl, spread, "Cutout + early head",
                "within the seed spread of zero: the early head's saliency adds nothing measurable to a network that "
                "trains the same head",
                "beyond the seed spread: the early head's saliency adds accuracy beyond its auxiliary loss",
                "below it beyond the seed spread: the early head's saliency steers the cut to worse regions"))
    return out


def aggregate(records: Iterable[RunRecord], methods: Sequence[str]) -> list[Row]:
    """One :class:`Row` per method in ``methods`` (grid order), with gains over the base."""
    by_method: dict[str, list[RunRecord]] = {m: [] for m in methods}
    for r in records:
        by_method.setdefault(r.method, []).append(r)
    stats = {}
    for m, recs in by_method.items():
        accs = [r.test_acc for r in recs]
        mean, std = mean_std(accs)
        t_mean = statistics.fmean([r.train_time_s for r in recs]) if recs else None
        stats[m] = (len(recs), mean, std, t_mean, sorted(r.seed for r in recs))
    spread = pooled_spread((st[0], st[2]) for st in stats.values())
    rows = []
    for m in methods:
        g = GRID_BY_KEY[m]
        n, mean, std, t_mean, seeds = stats[m]
        base = g.base if g.base in by_method else None
        gain = se = tol = ratio = None
        n_base = 0
        if base is not None:
            n_base, b_mean, b_std, b_t, _ = stats[base]
            if mean is not None and b_mean is not None:
                gain, se, tol = difference(mean, n, b_mean, n_base, spread)
            if t_mean is not None and b_t:
                ratio = t_mean / b_t
        base_label = GRID_BY_KEY[g.base].label if g.base is not None else None
        row = Row(m, g.label, g.base, base_label, n, seeds, mean, std, gain, se, tol, g.paper_gain, g.paper_note,
                  t_mean, ratio, g.paper_cost)
        if g.base is not None:
            row.verdict = verdict(g.label, base_label, gain, se, g.paper_gain, n, n_base, tol) if base is not None else \
                f"{g.label}: its base {base_label} was not in this grid, so no comparison."
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
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
    w(f"- runs: {meta['jobs']} at a time, {meta.get('threads', '?')} CPU thread(s) each; "
      f"run directories in `{meta['runs_dir']}`\n")
    w(f"- settings: {meta['description']}\n")
    keys = ("model", "train_subset", "test_subset", "epochs", "batch_size", "lr", "warmup_epochs", "momentum", "nesterov",
            "weight_decay", "label_smoothing", "crop_padding", "flip", "amp", "amp_dtype", "channels_last", "device",
            "eval_every", "keep_quantile", "cutout_length", "keep_paste_size", "cutmix_p", "cutmix_alpha", "mixup_alpha",
            "autoaugment_policy", "recursivemix_alpha")
    w("  - " + ", ".join(f"{k}={s[k]}" for k in keys if k in s) + "\n")
    per_method = meta.get("method_fields") or {}
    if per_method:
        w("  - per method: " + "; ".join(f"{m}: " + ", ".join(f"{k}={v}" for k, v in f.items())
                                          for m, f in per_method.items()) + "\n")
    w(f"  - seeds {meta['seeds']}; the seed sets the initial weights, the data order, the augmentation draws and "
      "(when train_subset > 0) which class-balanced subset is used. SGD with cosine decay after a linear warm-up; "
      "every other field keeps keepmix's TrainConfig default.\n")
    w("- accuracy: top-1 on the test set after the last epoch (not the best epoch); mean ± sample std over seeds.\n")
    spread = pooled_spread((r.n, r.acc_std) for r in rows)
    pooled = ("no method has two finished seeds yet, so no spread" if spread is None else
              f"s = {spread.sd:.2f} points with {spread.df} degrees of freedom, so t(0.975) = {t975(spread.df):.2f}")
    w("- gain: mean minus the base method's mean, ± its standard error s·sqrt(1/n1 + 1/n2), where s is the "
      "seed-to-seed standard deviation pooled over every method of this grid (one set-up, so one noise level; "
      f"a 2-seed method's own std is too uncertain to test with): {pooled}. \"Within the seed spread\" below "
      "means |difference| <= t(0.975) standard errors (a 95% two-sided t test); \"beyond\" means outside it.\n")
    w("- train time: the training steps of one run (augmentation, saliency, forward, backward, update), without "
      "evaluation; x base = that time over the base method's. The paper's cost ratio (KeepAugment Table: ResNet-18 "
      "Cutout 19, KeepCutout 38, +low-res 24, +early 23) stands beside ours.\n")
    w("- paper's gain: accuracy points as published, in the paper's (much larger) setting noted in the last column; "
      "at this scale only the direction and rough size are comparable.\n\n")

    w("| method | base | test acc % (mean ± std, n) | gain over base (ours) | paper's gain | train time / run | "
      "time x base (ours / paper) | paper's setting |\n")
    w("|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        acc = "no finished run" if r.acc_mean is None else \
            f"{r.acc_mean:.2f} ± {_fmt(r.acc_std, '.2f', 'n/a')} (n={r.n})"
        gain = "—" if r.gain is None else f"{r.gain:+.2f} ± {_fmt(r.gain_se, '.2f', 'n/a')}"
        paper = "—" if r.paper_gain is None else f"{r.paper_gain:+.2f}"
        ratio = "—" if r.time_ratio is None and r.paper_cost is None else \
            f"{_fmt(r.time_ratio)} / {_fmt(r.paper_cost)}"
        w(f"| {r.label} | {r.base_label or '—'} | {acc} | {gain} | {paper} | {_fmt_time(r.time_mean_s)} | "
          f"{ratio} | {r.paper_note or '—'} |\n")
    w("\n## Does ours show the paper's gain?\n\n")
    keep = [r for r in rows if r.base != "none" and r.verdict]
    other = [r for r in rows if r.base == "none" and r.verdict]
    for r in keep:
        w(f"- {r.verdict}\n")
    against_control = control_sentences(rows)
    if against_control:
        w("\nAgainst the controls (the same quantile rule on a constant map, which only ever cuts boxes the border "
          "clips; Cutout training the same early head): what the saliency itself adds.\n\n")
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
    w(f"`{rerun}` ({meta['expected_time']}; this grid's cells took {_fmt_time(meta.get('total_train_time_s'))} "
      f"of training in total, {_fmt_time(meta.get('total_wall_time_s'))} of run time summed over cells). "
      "Finished cells are skipped and interrupted ones resume from their checkpoint; "
      "`--report-only` rebuilds this page from the run directories. With the same seeds on the same device and "
      "thread count a rerun gives the same numbers; across machines expect differences of the size of the std column.\n")
    return out.getvalue()


def write_outputs(out_dir: Path, scale: str, rows: Sequence[Row], records: Sequence[RunRecord],
                  meta: Mapping[str, Any]) -> list[Path]:
    """reproduce_<scale>.md / .json / .csv in ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / f"reproduce_{scale}.md"
    md.write_text(render_markdown(rows, meta))
    js = out_dir / f"reproduce_{scale}.json"
    js.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows], "runs": [asdict(r) for r in records]},
                             indent=2) + "\n")
    cs = out_dir / f"reproduce_{scale}.csv"
    with open(cs, "w", newline="") as f:
        names = [fld for fld in RunRecord.__dataclass_fields__]
        wr = csv.DictWriter(f, fieldnames=names)
        wr.writeheader()
        for r in records:
            wr.writerow(asdict(r))
    return [md, js, cs]


# --------------------------------------------------------------------------------------------
# Estimating the time of a grid from a few steps per method
# --------------------------------------------------------------------------------------------
def estimate(scale: Scale, methods: Sequence[str], seeds: Sequence[int], overrides: Mapping[str, Any],
             data: str | None, steps: int = 8, jobs: int = 1,
             say: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> dict[str, Any]:
    """Time ``steps`` training steps of each method (after one warm-up epoch of 2 steps) and
    extrapolate to the grid. Returns per-method seconds per step and per run, and the total."""
    import tempfile

    from keepmix.train.data import prepare_data
    from keepmix.train.loop import train

    splits = load_splits(data)
    per_method = {}
    with tempfile.TemporaryDirectory() as tmp:
        for m in methods:
            cfg = cell_config(scale, m, seeds[0], overrides)
            if cfg.device == "cpu" and jobs > 1:
                cfg = cfg.replace(threads=max(1, (os.cpu_count() or 1) // jobs))
            probe = cfg.replace(epochs=2, max_steps_per_epoch=steps, test_subset=min(500, len(splits[1].labels) // 10 * 10),
                                eval_every=1, warmup_epochs=0.0, checkpoint_every=100)
            try:
                train(probe, data=prepare_data(*splits, probe), run_dir=Path(tmp) / m, log=lambda msg: None)
            except Exception as e:  # report the method, time the others
                per_method[m] = {"error": f"{type(e).__name__}: {e}"}
                say(f"{m}: FAILED ({per_method[m]['error']})")
                continue
            recs = [json.loads(ln) for ln in (Path(tmp) / m / "metrics.jsonl").read_text().splitlines() if ln.strip()]
            step_s = recs[-1]["epoch_time_s"] / steps  # the second epoch: warm caches, cudnn autotuned
            eval_s = recs[-1]["eval_time_s"] / probe.test_subset
            full = prepare_data(*splits, cfg)
            steps_per_epoch = len(full.train.labels) // cfg.batch_size
            n_evals = len([e for e in range(1, cfg.epochs + 1) if e % cfg.eval_every == 0 or e == cfg.epochs])
            run_s = steps_per_epoch * cfg.epochs * step_s + n_evals * eval_s * len(full.test.labels)
            per_method[m] = {"step_s": step_s, "run_s": run_s}
            say(f"{m}: {step_s * 1000:.0f} ms/step -> {run_s / 60:.1f} min per run")
    timed = [v["run_s"] for v in per_method.values() if "run_s" in v]
    total = sum(timed) * len(seeds) / max(1, jobs)
    failed = [m for m, v in per_method.items() if "error" in v]
    return {"per_method": per_method, "total_s": total, "steps": steps, "jobs": jobs, "failed": failed}


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/reproduce.py",
        description=__doc__.split("\n\n")[0] + " Methods: " + ", ".join(GRID_BY_KEY) + ".",
    )
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu", help="grid size: tiny (seconds), cpu (~2 h), early (early-head placement on ResNet-20, ~1.5 h), gpu (~25 min on an H100); default cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: the scale's, 0 1)")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help=f"subset of the grid (default: the scale's); choices: {', '.join(GRID_BY_KEY)}")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where reproduce_<scale>.md/.json/.csv go (default: benchmarks/results)")
    p.add_argument("--runs-dir", type=Path, default=None, help="run directories (default: runs/reproduce-<scale>)")
    p.add_argument("--data", default=None,
                   help="CIFAR-10 ImageFolder tarball or folder (train/ and test/); default: $KEEPMIX_CIFAR10_JPEG, "
                        "else ../shared/data/cifar10-jpeg.tar.gz, else the official download")
    p.add_argument("--model", default=None, help="override the scale's model (a keepmix model name, e.g. resnet20)")
    p.add_argument("--device", default=None, help="override the scale's device (cpu, cuda, cuda:N)")
    p.add_argument("--jobs", type=int, default=1, help="cells trained at a time (default 1, in this process; >1: subprocesses, cores split among them)")
    p.add_argument("--epochs", type=int, default=None, help="override the scale's epochs")
    p.add_argument("--train-subset", type=int, default=None, help="override the scale's train subset (0 = all)")
    p.add_argument("--test-subset", type=int, default=None, help="override the scale's test subset (0 = all)")
    p.add_argument("--batch-size", type=int, default=None, help="override the scale's batch size")
    p.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                   help="stop after this many minutes: the running cell checkpoints, the table is written from the "
                        "finished cells, exit status 3; rerunning the command resumes (for sessions with a per-command limit)")
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
    overrides: dict[str, Any] = {}
    for opt, fld in (("model", "model"), ("device", "device"), ("epochs", "epochs"), ("train_subset", "train_subset"),
                     ("test_subset", "test_subset"), ("batch_size", "batch_size")):
        if getattr(args, opt) is not None:
            overrides[fld] = getattr(args, opt)
    runs_dir = args.runs_dir or (REPO / "runs" / f"reproduce-{args.scale}")
    data = args.data or default_data()
    from keepmix.train.config import ConfigError

    try:
        configs = {(m, s): cell_config(scale, m, s, overrides) for m in methods for s in seeds}
    except (ConfigError, GridError) as e:
        print(f"reproduce: error: {e}", file=sys.stderr)
        return 2
    device = next(iter(configs.values())).device
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print(f"reproduce: error: the {args.scale} scale trains on {device} but CUDA is not available here; "
                  "pass --device cpu to run its settings on the CPU (slowly), or use --scale cpu", file=sys.stderr)
            return 2
    if args.estimate:
        est = estimate(scale, methods, seeds, overrides, data, jobs=args.jobs)
        print(f"estimated grid time: {est['total_s'] / 3600:.2f} h for {len(methods)} methods x {len(seeds)} seeds "
              f"with --jobs {args.jobs} ({est['steps']} timed steps per method)"
              + (f"; NOT counting the failed method(s) {', '.join(est['failed'])}" if est["failed"] else ""))
        return 1 if est["failed"] else 0
    # Seed-major: a grid stopped half-way has every method for the first seed(s).
    cells = [(m, s) for s in seeds for m in methods]
    outcome: dict = {}
    interrupted = False
    if not args.report_only:
        deadline = time.time() + 60 * args.time_limit if args.time_limit else None
        try:
            outcome = run_grid(cells, configs, runs_dir, data, jobs=args.jobs, deadline=deadline)
        except GridError as e:
            print(f"reproduce: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            interrupted = True
        interrupted = interrupted or any(v in ("interrupted", "not started") for v in outcome.values())
    records = collect(runs_dir, methods, seeds)
    rows = aggregate(records, methods)
    done = {(r.method, r.seed) for r in records}
    command = "python benchmarks/reproduce.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    meta = {
        "scale": args.scale,
        "command": command.strip(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "machine": machine_description(device),
        "jobs": args.jobs,
        "threads": (max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1
                    else (next(iter(configs.values())).threads or _torch_threads())),
        "runs_dir": str(runs_dir),
        "description": scale.description + (f" (overridden: {overrides})" if overrides else ""),
        "expected_time": scale.expected_time,
        "seeds": list(seeds),
        "methods": list(methods),
        "settings": next(iter(configs.values())).to_dict(),
        "method_fields": {m: dict(GRID_BY_KEY[m].fields) for m in methods},
        "missing": [cell_name(*c) for c in cells if c not in done],
        "failed": {cell_name(*c): why for c, why in outcome.items() if why.startswith("failed")},
        "total_train_time_s": sum(r.train_time_s for r in records) if records else None,
        "total_wall_time_s": sum(r.wall_time_s for r in records) if records else None,
    }
    paths = write_outputs(args.out, args.scale, rows, records, meta)
    for p in paths:
        print(f"wrote {p}")
    if interrupted:
        print("reproduce: the grid stopped before the end (time limit or signal); the table holds the finished "
              "cells; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 1 if meta["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
