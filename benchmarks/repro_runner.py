"""Training the cells of a reproduction grid: one cell in-process or as a subprocess, the
whole grid resumably (finished cells are skipped, interrupted ones resume from their
checkpoint), and the time estimate from a few steps per method. Part of
``benchmarks/reproduce.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from repro_grid import _RUN_ONLY_FIELDS, REPO, GridError, Scale, cell_config, cell_name, teacher_cell

SHARED_CIFAR10 = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
#: The script a --run-cell subprocess runs.
REPRODUCE = Path(__file__).resolve().parent / "reproduce.py"


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


def run_cell(cell_dir: Path, config, data_pair: tuple[Any, Any] | None = None, deadline: float | None = None) -> dict[str, Any]:
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
            raise GridError(
                f"{cell_dir} was run with other settings ({', '.join(diff)} differ); use another --runs-dir or delete that directory"
            )
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
                return train(None, resume=cell_dir, data=data, log=log, on_step=on_step)
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


def order_with_teachers(cells: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """``cells`` with every teacher cell (:func:`repro_grid.teacher_cell`) first, then the rest
    in their order, no duplicates: the teachers are plain runs every dependent cell waits on
    (and the crop+flip row of the table), so they train before anything else."""
    teachers = [t for t in dict.fromkeys(teacher_cell(*c) for c in cells) if t is not None]
    return teachers + [c for c in dict.fromkeys(cells) if c not in teachers]


def teacher_problem(runs_dir: Path, cell: tuple[str, int]) -> str | None:
    """Why ``cell``'s teacher cannot serve yet: None when it has none or it is ready (a finished
    run with its checkpoint), 'waiting' while it is not finished, else the reason."""
    teacher = teacher_cell(*cell)
    if teacher is None:
        return None
    tdir = runs_dir / cell_name(*teacher)
    status = cell_status(tdir)
    if status == "done" and (tdir / "checkpoint.pt").is_file():
        return None
    if status == "done":
        return (
            f"its teacher cell {cell_name(*teacher)} has a final.json but no checkpoint.pt (a copied run summary?); "
            f"delete {tdir} so that the grid trains the teacher again"
        )
    if status == "failed":
        return f"its teacher cell {cell_name(*teacher)} failed"
    return "waiting"


def run_grid(
    cells: Sequence[tuple[str, int]],
    configs: Mapping[tuple[str, int], Any],
    runs_dir: Path,
    data: str | None,
    jobs: int = 1,
    deadline: float | None = None,
    say: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
    threads: int | None = None,
) -> dict[tuple[str, int], str]:
    """Train every cell that is not done, in the order given; returns cell -> outcome.

    Outcomes: 'done', 'failed: reason' (the grid goes on), 'interrupted' (the deadline or
    SIGINT/SIGTERM: the cell wrote a checkpoint, the grid stops; a rerun resumes it).
    ``jobs`` = 1 trains in this process (the dataset is decoded once); ``jobs`` > 1 runs that
    many cells at a time as subprocesses, each with ``threads`` (default cores // jobs: on a
    small CPU net two single-thread processes beat one two-thread process). A cell with a teacher
    (Attentive CutMix) starts only once its teacher cell has finished: list the teacher first
    (:func:`order_with_teachers`).
    """
    from keepmix.train.loop import RunInterrupted

    outcome: dict[tuple[str, int], str] = {}
    todo = []
    for cell in cells:
        why = teacher_problem(runs_dir, cell)
        if why not in (None, "waiting"):
            raise GridError(f"{cell_name(*cell)} cannot run: {why}")
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
        say(
            f"[{i}/{len(todo)}] {cell_name(*cell)}: test acc {final['test_acc']:.2f}%, "
            f"{final['wall_time_s']:.0f} s (grid {time.perf_counter() - t0:.0f} s)"
        )

    if jobs <= 1:
        splits = load_splits(data)
        for i, cell in enumerate(todo, 1):
            if deadline is not None and time.time() > deadline:
                say(f"time limit reached: {len(todo) - i + 1} cell(s) not started; rerun to continue")
                outcome.update({c: "not started" for c in todo[i - 1 :]})
                break
            cdir = runs_dir / cell_name(*cell)
            why = teacher_problem(runs_dir, cell)
            if why is not None:
                outcome[cell] = f"failed: {'its teacher cell has not finished' if why == 'waiting' else why}"
                say(f"[{i}/{len(todo)}] {cell_name(*cell)} not run: {outcome[cell]}")
                continue
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

    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
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
                # The first pending cell whose teacher (if any) is ready; a cell whose teacher
                # failed (or is not in this grid and never will be) fails without training.
                ready = None
                for cand in list(pending):
                    why = teacher_problem(runs_dir, cand)
                    if why is None:
                        ready = cand
                        break
                    teacher = teacher_cell(*cand)
                    if why != "waiting" or not any(c == teacher for c, _ in running) and teacher not in pending:
                        pending.remove(cand)
                        outcome[cand] = f"failed: {'its teacher cell did not finish' if why == 'waiting' else why}"
                        say(f"{cell_name(*cand)} not run: {outcome[cand]}")
                if ready is None:
                    break
                pending.remove(ready)
                cell = ready
                cdir = runs_dir / cell_name(*cell)
                cdir.mkdir(parents=True, exist_ok=True)
                cfg = configs[cell].to_dict()
                if cfg["device"] == "cpu":
                    cfg["threads"] = threads
                spec = {"config": cfg, "data": data, "deadline": deadline}
                (cdir / "cell.json").write_text(json.dumps(spec, indent=2) + "\n")
                err = open(cdir / "stderr.log", "a")
                proc = subprocess.Popen(
                    [sys.executable, str(REPRODUCE), "--run-cell", str(cdir)], stdout=err, stderr=subprocess.STDOUT, cwd=str(REPO)
                )
                err.close()
                running.append((cell, proc))
                say(f"started {cell_name(*cell)} (pid {proc.pid})")
            if stopping and not running or not running and not pending:
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


def estimate(
    scale: Scale,
    methods: Sequence[str],
    seeds: Sequence[int],
    overrides: Mapping[str, Any],
    data: str | None,
    steps: int = 8,
    jobs: int = 1,
    say: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
    threads: int | None = None,
) -> dict[str, Any]:
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
            if cfg.device == "cpu" and (jobs > 1 or threads):
                cfg = cfg.replace(threads=threads or max(1, (os.cpu_count() or 1) // jobs))
            probe = cfg.replace(
                epochs=2,
                max_steps_per_epoch=steps,
                test_subset=min(500, len(splits[1].labels) // 10 * 10),
                eval_every=1,
                warmup_epochs=0.0,
                checkpoint_every=100,
            )
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
