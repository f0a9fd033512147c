"""``keepmix train | show | plot``: the command-line entry point.

* ``keepmix train PRESET [--FIELD VALUE ...]`` trains a preset; every field of
  :class:`keepmix.train.TrainConfig` is a flag (``--epochs 5``, ``--no-flip``), applied on
  top of the preset and of ``--config FILE``. ``--resume RUN_DIR`` continues an interrupted
  run with its saved configuration; ``--resume RUN_DIR --epochs N`` extends a run (also a
  finished one) to N epochs. ``--log tensorboard`` also writes TensorBoard event files.
* ``keepmix show`` draws a batch before and after each method, with the saliency map and the
  regions (cut / kept / pasted), into one PNG.
* ``keepmix plot RUN_DIR ...`` draws the accuracy curves of several runs into one PNG.

Exit status: 0 on success, 2 for bad input and for what the user can fix (unknown preset or
option, bad value, missing data or checkpoint, a full disk), always with one line on stderr
and no traceback; 1 when training fails (NaN loss); 130 / 143 after SIGINT / SIGTERM (a
checkpoint was written, or after a second signal the last one is kept).

Under ``torchrun`` every process trains; only rank 0 prints.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "build_parser"]

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults and keeps the description's line breaks."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; unset flags leave the preset's value (SUPPRESS)."""
    from keepmix.train.config import field_defaults, field_help, field_types

    defaults = field_defaults()
    groups: dict[str, argparse._ArgumentGroup] = {}
    sections = {
        "run": ("name", "out_dir", "seed", "device", "threads"),
        "data": ("dataset", "data_dir", "train_subset", "test_subset", "crop_padding", "flip"),
        "model": ("model", "early_head", "early_loss_weight"),
        "optimisation": (
            "epochs",
            "batch_size",
            "lr",
            "momentum",
            "nesterov",
            "weight_decay",
            "no_bn_decay",
            "warmup_epochs",
            "min_lr",
            "label_smoothing",
        ),
        "semi-supervised (UDA)": (
            "semi_labels",
            "semi_balanced",
            "semi_mu",
            "uda_augment",
            "uda_tsa",
            "uda_temperature",
            "uda_threshold",
            "uda_weight",
        ),
        "speed": ("amp", "amp_dtype", "channels_last", "compile"),
        "bookkeeping": ("eval_every", "checkpoint_every", "log_every", "max_steps_per_epoch", "progress", "pictures"),
    }
    section_of = {f: s for s, fs in sections.items() for f in fs}
    for name, tp in field_types().items():
        section = section_of.get(name, "method")
        if section not in groups:
            groups[section] = parser.add_argument_group(f"{section} options (override the preset)")
        help_text, choices = field_help()[name]
        help_text = f"{help_text} [TrainConfig default: {defaults[name]}]"
        kwargs: dict = dict(dest=name, default=argparse.SUPPRESS, help=help_text.replace("%", "%%"))
        if tp is bool and name.startswith("no_"):
            # A negative field gets --no-bn-decay and --bn-decay, not --no-no-bn-decay.
            groups[section].add_argument(_flag(name), dest=name, action="store_true", default=argparse.SUPPRESS, help=kwargs["help"])
            groups[section].add_argument(
                _flag(name[3:]), dest=name, action="store_false", default=argparse.SUPPRESS, help=f"the opposite of {_flag(name)}"
            )
        elif tp is bool:
            groups[section].add_argument(_flag(name), action=argparse.BooleanOptionalAction, **kwargs)
        else:
            groups[section].add_argument(_flag(name), type=tp, metavar=tp.__name__.upper(), choices=choices, **kwargs)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("keepmix")
    except PackageNotFoundError:  # a source tree that was not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``keepmix`` and its three subcommands."""
    parser = argparse.ArgumentParser(
        prog="keepmix",
        description="Information-preserving and mixing data augmentation: train, show, plot.",
        epilog="Run `keepmix COMMAND --help` for the options of each command.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"keepmix {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    t = sub.add_parser(
        "train",
        help="train a preset (any option overridable); writes runs/<name>-<timestamp>/",
        description=(
            "Train a model with an augmentation method. Options are applied in this order: the\n"
            "TrainConfig defaults, the PRESET, the --config file, then every --option given.\n"
            "The run directory gets config.yaml, metrics.jsonl (one JSON line per epoch),\n"
            "checkpoint.pt (each epoch and on SIGINT/SIGTERM), final.json and pictures.\n\n"
            "Example (a quick CPU run on CIFAR-10, about a minute):\n"
            "  keepmix train cifar10-small-keepcutout-quick\n"
            "Under torchrun each process trains on its shard with its own augmentation stream:\n"
            "  torchrun --nproc_per_node 4 -m keepmix train cifar10-resnet18-keepcutout"
        ),
        formatter_class=_Formatter,
    )
    t.add_argument(
        "preset", nargs="?", default=None, help="preset name, e.g. cifar10-resnet18-keepcutout (see --list-presets); optional with --config"
    )
    t.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="YAML (.yaml/.yml) or TOML (.toml) file of option: value pairs, applied over the preset",
    )
    t.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="continue the interrupted run in RUN_DIR (or a checkpoint file) with its saved config; "
        "only --epochs N may be given with it, to extend the run (also a finished one) to N epochs: "
        "the cosine schedule is then re-planned over N epochs from the step reached",
    )
    t.add_argument(
        "--log",
        choices=("jsonl", "tensorboard"),
        default=None,
        help="metrics.jsonl is always written; tensorboard also writes event files into RUN_DIR/tensorboard "
        "(needs the [tensorboard] extra). Default jsonl; a --resume goes on as the run was logged",
    )
    t.add_argument(
        "--list-presets",
        nargs="?",
        const="",
        default=None,
        metavar="FILTER",
        help="print the presets (those containing FILTER, or matching it as a glob) and what they set, then exit",
    )
    _add_config_flags(t)

    s = sub.add_parser(
        "show",
        help="PNG grid of a batch before and after each method, with saliency and regions",
        description=(
            "Draw a batch of images before and after each augmentation method, the saliency map,\n"
            "and the region each method cut (red), kept (green) or pasted (blue), like Figure 1\n"
            "of the KeepAugment paper. The saliency comes from a trained run (--run) or, without\n"
            "one, from a freshly initialised model (which shows the mechanism, not a trained map)."
        ),
        formatter_class=_Formatter,
    )
    s.add_argument(
        "--methods",
        nargs="+",
        default=None,
        metavar="METHOD",
        help="methods to show (default: cutout keepcutout cutmix keepcutmix autoaugment keepautoaugment recursivemix)",
    )
    s.add_argument(
        "--run", metavar="RUN_DIR", default=None, help="take the model (for the saliency), dataset and options from this run's checkpoint"
    )
    s.add_argument("--dataset", default="cifar10", help="dataset name or path (ignored with --run)")
    s.add_argument(
        "--data-dir",
        default="",
        help="where named datasets are looked for / downloaded (ignored with --run); "
        "empty = $KEEPMIX_DATA_DIR or ~/.cache/keepmix/data, as for keepmix train",
    )
    s.add_argument("--model", default="small", help="model for the saliency when no --run is given")
    s.add_argument("--num-images", type=int, default=8, help="number of images (rows) to show")
    s.add_argument("--seed", type=int, default=0, help="seed of the image choice and of the augmentation draws")
    s.add_argument("--out", default="keepmix-show.png", help="output PNG path")
    s.add_argument("--device", default="cpu", help="device for the saliency model (cpu, cuda)")

    p = sub.add_parser(
        "plot",
        help="accuracy curves of several runs in one PNG",
        description="Plot a metric per epoch of several runs (run directories or metrics.jsonl files) into one PNG.",
        formatter_class=_Formatter,
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (holding metrics.jsonl) or metrics.jsonl files")
    p.add_argument("--out", default="keepmix-plot.png", help="output PNG path")
    p.add_argument("--metric", default="test_acc", help="metric to plot: test_acc, train_acc, train_loss, test_loss, lr, images_per_s")
    p.add_argument(
        "--labels", nargs="+", default=None, metavar="LABEL", help="legend label per run (runs sharing a label are averaged in the legend)"
    )
    p.add_argument("--title", default=None, help="figure title")
    return parser


def _error(command: str, msg: str, code: int) -> int:
    """One line on stderr, whatever the message (a YAML parser's is several, with a caret)."""
    parts = [ln.strip() for ln in str(msg).splitlines() if ln.strip().strip("^")]
    print(f"keepmix {command}: error: {' / '.join(parts)}", file=sys.stderr)
    return code


def _config_from_args(args: argparse.Namespace):
    """The run's config: the preset, the --config file, the options; validated once, here."""
    from keepmix.train.config import ConfigError, config_from_dict, field_types, read_config_file
    from keepmix.train.presets import PRESETS, check_preset_name

    if args.preset is None and args.config is None:
        raise ConfigError("give a preset (see `keepmix train --list-presets`), --config FILE, or --resume RUN_DIR")
    values: dict = {}
    if args.preset is not None:
        check_preset_name(args.preset)  # unknown preset: a clear error before anything else
        values.update(PRESETS[args.preset])
    if args.config is not None:
        values.update(read_config_file(args.config))
    values.update({k: getattr(args, k) for k in field_types() if hasattr(args, k)})
    values.setdefault("name", args.preset or Path(args.config).stem)
    return config_from_dict(values, where="the command line")


def _is_main_process() -> bool:
    """Rank 0 under torchrun (RANK is set there), or the only process."""
    return os.environ.get("RANK", "0") == "0"


#: What each command imports from the ``[train]`` extra (module -> its pip package).
_NEEDS = {"train": {"yaml": "pyyaml", "tqdm": "tqdm", "matplotlib": "matplotlib"}, "plot": {"matplotlib": "matplotlib"}}


def _missing_extra(command: str) -> str | None:
    """The one-line error when the ``[train]`` extra is not installed, else None (checked before any work)."""
    import importlib.util

    missing = []
    for module, package in _NEEDS.get(command, {}).items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a module set to None in sys.modules, a broken install
            found = False
        if not found:
            missing.append(package)
    if not missing:
        return None
    return (
        f"keepmix {command} needs the [train] extra ({', '.join(missing)} missing): "
        'pip install "keepmix[train]" (from a clone: pip install -e ".[train]")'
    )


def _list_presets(pattern: str) -> int:
    from keepmix.train.presets import describe_preset, preset_names

    names = preset_names(pattern)
    if not names:
        return _error("train", f"no preset matches {pattern!r}; `keepmix train --list-presets` lists them all", 2)
    for name in names:
        print(f"{name}\n    {describe_preset(name)}")
    return 0


def _tensorboard_choice(args: argparse.Namespace) -> bool | None:
    """None on --resume without --log: the trainer logs as the run was logged (and refuses, as
    TensorBoardLog does, when that needs a missing tensorboard package)."""
    import importlib.util

    from keepmix.train.config import ConfigError

    tensorboard = None if args.log is None and args.resume is not None else args.log == "tensorboard"
    if tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("--log tensorboard needs the tensorboard package: pip install 'keepmix[tensorboard]'")
    return tensorboard


def _run_training(args: argparse.Namespace) -> dict:
    from keepmix.train.config import ConfigError, field_types
    from keepmix.train.loop import train

    tensorboard = _tensorboard_choice(args)
    if args.resume is None:
        return train(_config_from_args(args), tensorboard=bool(tensorboard))
    given = [k for k in field_types() if hasattr(args, k) and k != "epochs"]
    if args.preset or args.config or given:
        got = [x for x in (args.preset, args.config and f"--config {args.config}") if x] + [_flag(k) for k in given]
        raise ConfigError(
            "--resume continues a run with its saved config: do not give a preset, --config "
            f"or options other than --epochs with it (got {', '.join(got)})"
        )
    return train(None, resume=args.resume, epochs=getattr(args, "epochs", None), tensorboard=tensorboard)


def _report(final: dict) -> None:
    from keepmix.train.run_dir import RunDir

    run = RunDir(final["run_dir"]).path.resolve()
    files = RunDir(run)
    print(f"run directory: {run}")
    print(
        f"final test accuracy: {final['test_acc']:.2f}% (best {final['best_test_acc']:.2f}%) "
        f"after {final['epochs']} epochs, {final['wall_time_s']:.0f} s"
    )
    print(f"metrics: {files.metrics}  summary: {files.final}  config: {files.config}")
    if files.tensorboard.is_dir():
        print(f"tensorboard: tensorboard --logdir {files.tensorboard}")
    for pic in final.get("pictures", []):
        print(f"picture: {pic}")


def _cmd_train(args: argparse.Namespace) -> int:
    from keepmix.data import DataError
    from keepmix.train.checkpoint import CheckpointError
    from keepmix.train.config import ConfigError
    from keepmix.train.loop import NonFiniteLossError, RunInterrupted
    from keepmix.train.run_dir import RunDirBusy

    if args.list_presets is not None:
        return _list_presets(args.list_presets)
    missing = _missing_extra("train")
    if missing:
        return _error("train", missing, EXIT_BAD_INPUT)
    main_process = _is_main_process()
    try:
        final = _run_training(args)
    except (ConfigError, CheckpointError, DataError, RunDirBusy) as e:
        return _error("train", str(e), EXIT_BAD_INPUT)
    except UnicodeDecodeError as e:
        return _error("train", f"cannot read {args.config or 'the config file'}: it is not UTF-8 text ({e.reason})", EXIT_BAD_INPUT)
    except OSError as e:  # a read-only folder, a file that vanished
        where = f" ({e.filename})" if e.filename else ""
        return _error("train", f"{e.strerror or e}{where}", EXIT_BAD_INPUT)
    except NonFiniteLossError as e:
        return _error("train", str(e), EXIT_FAILED)
    except RunInterrupted as e:
        if main_process:
            print(f"keepmix train: {e}", file=sys.stderr)
        return 128 + (e.signum or signal.SIGINT)
    except KeyboardInterrupt:  # a second Ctrl-C: stop now; the last checkpoint written stays
        if main_process:
            print("keepmix train: stopped at once by a second interrupt; the last checkpoint written (if any) is intact", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        from keepmix.train.distributed import shutdown_distributed

        shutdown_distributed()
    if main_process:
        _report(final)
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    missing = _missing_extra("plot")
    if missing:
        return _error("plot", missing, EXIT_BAD_INPUT)
    from keepmix.viz import plot_runs

    try:
        out = plot_runs(args.runs, args.out, metric=args.metric, labels=args.labels, title=args.title)
    except (OSError, ValueError, KeyError) as e:
        return _error("plot", str(e).strip('"'), EXIT_BAD_INPUT)
    print(f"wrote {out}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from keepmix.train.show import show

    try:
        out = show(
            methods=args.methods,
            run=args.run,
            dataset=args.dataset,
            data_dir=args.data_dir,
            model=args.model,
            num_images=args.num_images,
            seed=args.seed,
            out=args.out,
            device=args.device,
        )
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        return _error("show", str(e).strip('"'), EXIT_BAD_INPUT)
    print(f"wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``keepmix`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return {"train": _cmd_train, "show": _cmd_show, "plot": _cmd_plot}[args.command](args)
    except BrokenPipeError:
        # Output piped into a reader that stopped early (``keepmix train --list-presets | head``):
        # not an error of ours; silence the interpreter's second complaint at exit too.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
