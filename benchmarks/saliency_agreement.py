"""How faithful are the cheap saliency maps? Agreement of KeepCutout's choices with the full map.

KeepAugment's two cheap saliencies (a low-resolution copy, an early head) only need to rank
regions the way the full-resolution map of the same network does: selective-cut lets a box be
cut when its importance is below the q-quantile of all candidate positions. For trained runs
this script scores every Cutout box position (16 x 16, centred on every pixel, as KeepCutout
draws them) on held-out test images with each saliency and reports, against the full map:

* ``precision``: of the positions a cheap map lets KeepCutout cut (score below its own
  q-quantile), the fraction the full map lets it cut too. A map that ranks at random scores
  about q (0.6); a perfect one 1.0.
* ``important cut``: the fraction of those positions that the full map ranks in its top 20 %
  (the most important regions, which KeepCutout exists to protect; random: about 0.2).
* ``spearman``: rank correlation of the candidate scores with the full map's (mean over images).

A random map (uniform noise) is scored the same way as the chance level, and each run's full
network and early head are evaluated for top-1 accuracy on the same images. The map of each
run is taken through its own trained network and head, the same way training takes it
(eval-mode BatchNorm, the true label's logit).

    python benchmarks/saliency_agreement.py --runs-dir runs/reproduce-early
    python benchmarks/saliency_agreement.py --runs RUN_DIR [RUN_DIR ...] --images 2000
    python benchmarks/saliency_agreement.py --quick --runs RUN_DIR --out /tmp/b   # smoke test

Writes ``<out>/saliency_agreement.md`` + ``.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reproduce import default_data, load_splits  # noqa: E402
from timing import machine_info, machine_line, write_results  # noqa: E402

from keepmix.functional.regions import candidate_positions, candidate_scores, masked_quantile, summed_area_table  # noqa: E402
from keepmix.saliency import Saliency  # noqa: E402
from keepmix.train.checkpoint import load_trained_model  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
IMPORTANT_TOP = 0.2  # "important": the full map's top 20 % of positions


#: The two candidate sets scored: every centre (what KeepCutout ranks: boxes near the border are
#: clipped, so their area, not the image, decides much of the ranking) and the whole boxes only
#: (every box of full size: the ranking is then the map's content alone).
POSITIONS = {"all": "center", "whole": "inside"}


def region_scores(saliency: Tensor, box: int, placement: str) -> Tensor:
    """(B, N) float64 importance of every ``box`` x ``box`` candidate: centred on every pixel and
    clipped at the border (``"center"``, as Cutout places it) or every whole box (``"inside"``)."""
    b, h, w = saliency.shape
    cand = candidate_positions((box, box), h, w, placement, batch_size=b, device=saliency.device)
    return candidate_scores(summed_area_table(saliency), cand)


def _ranks(x: Tensor) -> Tensor:
    # Ties (a map that is exactly zero over several boxes) are rare in float64 region sums of a
    # gradient map; ordinal ranks are enough for a mean correlation.
    return x.argsort(dim=1).argsort(dim=1).double()


def agreement(approx: Tensor, full: Tensor, q: float) -> dict[str, list[float]]:
    """Per-image precision, important-cut rate and Spearman correlation of ``approx`` scores
    against ``full`` scores, both (B, N)."""
    tau_a = masked_quantile(approx, None, q)[:, None]
    tau_f = masked_quantile(full, None, q)[:, None]
    top_f = masked_quantile(full, None, 1.0 - IMPORTANT_TOP)[:, None]
    cut_a, cut_f, important = approx < tau_a, full < tau_f, full > top_f
    n_cut = cut_a.sum(1).clamp(min=1).double()
    ra, rf = _ranks(approx), _ranks(full)
    ra, rf = ra - ra.mean(1, keepdim=True), rf - rf.mean(1, keepdim=True)
    rho = (ra * rf).sum(1) / (ra.norm(dim=1) * rf.norm(dim=1)).clamp(min=1e-12)
    return {
        "precision": ((cut_a & cut_f).sum(1) / n_cut).tolist(),
        "important_cut": ((cut_a & important).sum(1) / n_cut).tolist(),
        "spearman": rho.tolist(),
    }


def mean_cut_area(scores: Tensor, area: Tensor, q: float) -> list[float]:
    """Per image, the mean area of the positions selective-cut may cut (score below the
    q-quantile): KeepCutout draws uniformly among them, so this is its expected cut area."""
    cut = scores < masked_quantile(scores, None, q)[:, None]
    return ((area * cut).sum(1) / cut.sum(1).clamp(min=1)).tolist()


def evaluate_run(
    run: Path, images: Tensor, labels: Tensor, mean: Sequence[float], std: Sequence[float], q: float, box: int, batch: int, seed: int
) -> dict:
    """Accuracies and agreement of every cheap saliency of one trained run with its full map."""
    model, config = load_trained_model(run, num_classes=int(labels.max()) + 1)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    maps: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
        "full": Saliency(model),
        f"low-res (1/{config.saliency_downscale:g})": Saliency(model, downscale=config.saliency_downscale),
    }
    if config.early_head:
        maps["early head"] = Saliency(model.early_logits, model=model)
    g = torch.Generator().manual_seed(seed)
    maps["random (chance)"] = lambda x, y: torch.rand(x.shape[0], *x.shape[2:], generator=g)
    per: dict[str, dict[str, dict[str, list[float]]]] = {
        k: {pos: {"precision": [], "important_cut": [], "spearman": []} for pos in POSITIONS} for k in maps if k != "full"
    }
    areas: dict[str, list[float]] = {"Cutout (no rule)": [], **{k: [] for k in maps}, "uniform (control)": []}
    correct, correct_early = 0, 0
    for i in range(0, len(labels), batch):
        x = (images[i : i + batch].float() / 255.0 - m) / s
        y = labels[i : i + batch]
        with torch.no_grad():
            correct += int((model(x).argmax(1) == y).sum())
            if config.early_head:
                correct_early += int((model.early_logits(x).argmax(1) == y).sum())
        sal = {k: fn(x, y).double() for k, fn in maps.items()}
        area = region_scores(torch.ones_like(sal["full"]), box, "center")  # clipped box areas
        areas["Cutout (no rule)"].extend(area.mean(1).tolist())
        areas["uniform (control)"].extend(mean_cut_area(area, area, q))
        for k in maps:
            areas[k].extend(mean_cut_area(region_scores(sal[k], box, "center"), area, q))
        for pos, placement in POSITIONS.items():
            full = region_scores(sal["full"], box, placement)
            for k in per:
                for metric, values in agreement(region_scores(sal[k], box, placement), full, q).items():
                    per[k][pos][metric].extend(values)
    n = len(labels)
    where = "after the whole first stage" if not config.early_block else f"after block {config.early_block} of the first stage"
    return {
        "run": str(run),
        "name": Path(run).name,
        "model": config.model,
        "method": config.method,
        "saliency": config.saliency,
        "early_head": config.early_head,
        "early_placement": where if config.early_head else None,
        "seed": config.seed,
        "images": n,
        "test_acc": 100.0 * correct / n,
        "early_head_acc": 100.0 * correct_early / n if config.early_head else None,
        "agreement": {
            k: {pos: {metric: statistics.fmean(v) for metric, v in d.items()} for pos, d in by_pos.items()} for k, by_pos in per.items()
        },
        "cut_area": {k: statistics.fmean(v) for k, v in areas.items()},
    }


def find_runs(runs_dir: Path) -> list[Path]:
    """Run directories under ``runs_dir`` that have a checkpoint (early-head runs first)."""
    runs = sorted(p.parent for p in Path(runs_dir).glob("*/checkpoint.pt"))
    return sorted(runs, key=lambda p: ("early" not in p.name, p.name))


def render(results: Sequence[Mapping], meta: Mapping) -> str:
    lines = [
        "# Saliency agreement: how often the cheap maps let KeepCutout cut what the full map would",
        "",
        f"- command: `{meta['command']}`",
        f"- machine: {meta['machine']}",
        f"- {meta['images']} CIFAR-10 test images (the first of a fixed random order), Cutout box {meta['box']} x "
        f"{meta['box']} centred on every pixel, q = {meta['q']}; the reference is each run's own full-resolution map.",
        "- precision: of the positions the map lets KeepCutout cut (below its own q-quantile), the share the full "
        f"map lets it cut too (perfect 1.00). important cut: the share of them in the full map's top {IMPORTANT_TOP:.0%} "
        "(lower is better). spearman: rank correlation of the region scores with the full map's. Means over images. "
        "The random map's row is the chance level of each column.",
        "- all positions: every centre, boxes clipped at the border, exactly what KeepCutout ranks; a clipped box has "
        "less area, so geometry alone gets most of the way (see the random map). whole boxes: only the "
        f"{meta['whole_positions']} positions whose box lies inside the image: the ranking then depends on the map's "
        "content alone, which is where the approximations differ.",
        "",
        "| run | model | early head | test acc % | early-head acc % | map | precision, all positions | "
        "precision, whole boxes | important cut, whole boxes | spearman, whole boxes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for k, a in r["agreement"].items():
            early_acc = "—" if r["early_head_acc"] is None else f"{r['early_head_acc']:.2f}"
            lines.append(
                f"| {r['name']} | {r['model']} | {r['early_placement'] or '—'} | {r['test_acc']:.2f} | "
                f"{early_acc} | {k} | {a['all']['precision']:.3f} | {a['whole']['precision']:.3f} | "
                f"{a['whole']['important_cut']:.3f} | {a['whole']['spearman']:.3f} |"
            )
    keys = list(dict.fromkeys(k for r in results for k in r["cut_area"]))
    lines += [
        "",
        "## The area KeepCutout cuts",
        "",
        f"Mean area (pixels, of {meta['box'] ** 2} for a whole box) of the {meta['box']} x {meta['box']} boxes each map "
        "lets KeepCutout cut, i.e. its expected cut area (it draws uniformly among them); Cutout (no rule) draws among "
        "all positions, and the uniform control's rule admits only boxes clipped by the border.",
        "",
        "| run | model | " + " | ".join(keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for r in results:
        cells = [f"{r['cut_area'][k]:.1f}" if k in r["cut_area"] else "—" for k in keys]
        lines.append(f"| {r['name']} | {r['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/saliency_agreement.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", type=Path, default=None, help="run directories (with checkpoint.pt)")
    p.add_argument("--runs-dir", type=Path, default=None, help="every run directory with a checkpoint under this one")
    p.add_argument("--data", default=None, help="CIFAR-10 ImageFolder tarball or folder (default as reproduce.py)")
    p.add_argument("--images", type=int, default=2000, help="test images to score (default 2000)")
    p.add_argument("--q", type=float, default=0.6, help="KeepCutout's quantile (default 0.6, the paper's)")
    p.add_argument("--box", type=int, default=16, help="Cutout box side (default 16, CIFAR's)")
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="40 images: a smoke test")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = list(args.runs or []) + (find_runs(args.runs_dir) if args.runs_dir else [])
    if not runs:
        p.error("give --runs or --runs-dir (with at least one run that has a checkpoint.pt)")
    if not 0.0 < args.q < 1.0:
        p.error(f"--q must be in (0, 1), got {args.q}")
    n = 40 if args.quick else args.images
    if n < 1:
        p.error(f"--images must be >= 1, got {n}")
    from keepmix.data import CIFAR10_MEAN, CIFAR10_STD

    _, test = load_splits(args.data or default_data())
    pick = torch.randperm(len(test.labels), generator=torch.Generator().manual_seed(args.seed))[:n]
    images, labels = test.images[pick], test.labels[pick]
    results = []
    for run in runs:
        r = evaluate_run(run, images, labels, CIFAR10_MEAN, CIFAR10_STD, args.q, args.box, args.batch, args.seed)
        results.append(r)
        print(
            f"{r['name']}: acc {r['test_acc']:.2f}"
            + ("" if r["early_head_acc"] is None else f", early head {r['early_head_acc']:.2f}")
            + "; whole-box precision "
            + ", ".join(f"{k} {a['whole']['precision']:.3f}" for k, a in r["agreement"].items()),
            flush=True,
        )
    meta = {
        "command": "python benchmarks/saliency_agreement.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_line(machine_info("cpu")),
        "images": len(labels),
        "q": args.q,
        "box": args.box,
        "whole_positions": (images.shape[-2] - args.box + 1) * (images.shape[-1] - args.box + 1),
    }
    md, js = write_results(args.out, "saliency_agreement", render(results, meta), {"meta": meta, "results": results})
    print(f"wrote {md}\nwrote {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
