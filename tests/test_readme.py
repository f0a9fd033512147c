"""The README's usage examples run as written (on a tiny synthetic batch)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_examples_run_and_train():
    blocks = _python_blocks()
    assert len(blocks) >= 2, "the README should show the training-loop and RecursiveMix examples"
    g = torch.Generator().manual_seed(0)
    images_u8 = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=g)
    images = (images_u8.float() / 255 - 0.5) / 0.25
    labels = torch.tensor([0, 1, 2, 3])
    ns: dict = {"loader": [(images_u8, images, labels)] * 2}
    exec(compile(blocks[0], "README-block-0", "exec"), ns)
    ns.update(images=images, labels=labels)
    for i, block in enumerate(blocks[1:], start=1):
        exec(compile(block, f"README-block-{i}", "exec"), ns)
    assert torch.isfinite(ns["loss"]).all()
    assert ns["rm"].has_history
    # The first block trained: SGD took steps (its momentum buffers exist).
    assert len(ns["opt"].state) > 0
