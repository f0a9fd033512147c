"""keepmix's policies against torchvision v2 where users run them: one PIL image or one
(C, H, W) uint8 image inside a Dataset, and a batched uint8 call on the CPU against
torchvision's PIL RandAugment in a loop (issue 20, item 7).

Run with the real torchvision (it does not import beside the main environment's torch)::

    PYTHONPATH=/work/main /work/venv-interop/bin/python benchmarks/bench_policies_pil.py

One thread; each case is timed side by side in one run (median of repeats), and the ratios
(keepmix time / torchvision time, < 1 is faster) go to benchmarks/results/policies_pil.{md,json}
with the load average.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import keepmix

RESULTS = Path(__file__).resolve().parent / "results"


def _time(fn, repeats: int, number: int) -> float:
    """Median seconds per call over ``repeats`` runs of ``number`` calls."""
    fn()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        runs.append((time.perf_counter() - t0) / number)
    return statistics.median(runs)


def main() -> None:
    from torchvision.transforms import v2

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    rows = []
    policies = {
        "RandAugment": (keepmix.RandAugment(), v2.RandAugment()),
        "AutoAugment": (keepmix.AutoAugment("imagenet"), v2.AutoAugment()),
        "TrivialAugmentWide": (keepmix.TrivialAugmentWide(), v2.TrivialAugmentWide()),
    }
    for size in (32, 224):
        arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        pil = Image.fromarray(arr)
        chw = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
        number = 200 if size == 32 else 40
        for name, (ours, theirs) in policies.items():
            for kind, inp in (("PIL image", pil), ("(C, H, W) uint8", chw)):
                k = _time(lambda: ours(inp), 5, number)  # noqa: B023
                t = _time(lambda: theirs(inp), 5, number)  # noqa: B023
                case = f"{name}, one {kind}, {size} px"
                rows.append({"case": case, "keepmix_us": k * 1e6, "torchvision_us": t * 1e6, "ratio": k / t})
    # A batched uint8 call at 224 px against torchvision's PIL RandAugment in a loop, per image.
    b = 64
    batch = torch.from_numpy(rng.integers(0, 256, (b, 3, 224, 224), dtype=np.uint8))
    pils = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in batch[:16]]
    ours, theirs = keepmix.RandAugment(), v2.RandAugment()
    k = _time(lambda: ours(batch), 3, 2) / b
    t = _time(lambda: [theirs(im) for im in pils], 3, 2) / len(pils)
    rows.append(
        {
            "case": f"RandAugment, batch of {b} uint8 at 224 px (per image) vs PIL loop",
            "keepmix_us": k * 1e6,
            "torchvision_us": t * 1e6,
            "ratio": k / t,
        }
    )

    meta = {
        "load_average": os.getloadavg(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": __import__("torchvision").__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "policies_pil.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# keepmix policies vs torchvision v2 where users run them",
        "",
        "`PYTHONPATH=/work/main /work/venv-interop/bin/python benchmarks/bench_policies_pil.py`, one thread, "
        f"torch {meta['torch']}, torchvision {meta['torchvision']}, load average {', '.join(f'{v:.2f}' for v in meta['load_average'])} "
        f"on {meta['cpus']} CPUs (a shared machine: the ratios, measured side by side, are what to read).",
        "",
        "| case | keepmix (µs) | torchvision (µs) | ratio |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['case']} | {r['keepmix_us']:.0f} | {r['torchvision_us']:.0f} | {r['ratio']:.2f}x |" for r in rows]
    (RESULTS / "policies_pil.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
