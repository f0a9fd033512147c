"""The README's code runs exactly as printed.

* The usage blocks (``python`` blocks not marked as a recipe) run in order in one namespace,
  as pasted: they define their own stand-in loader and train.
* Each recipe block follows a ``<!-- recipe: PATH -->`` marker and must equal the file at
  PATH, which tests/test_integrations.py runs; so the README and the tested code cannot drift.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
_BLOCK = re.compile(r"(?:<!-- recipe: (?P<path>\S+) -->\n+)?```python\n(?P<code>.*?)```", flags=re.S)


def _blocks() -> list[tuple[str | None, str]]:
    return [(m.group("path"), m.group("code")) for m in _BLOCK.finditer(README.read_text())]


def test_readme_usage_blocks_run_as_pasted():
    usage = [code for path, code in _blocks() if path is None]
    assert len(usage) >= 3, "the README shows the training loop, the parameters and RecursiveMix"
    ns: dict = {}
    for i, code in enumerate(usage):
        exec(compile(code, f"README-block-{i}", "exec"), ns)
    assert torch.isfinite(ns["loss"]).all()
    assert ns["rm"].has_history
    assert len(ns["opt"].state) > 0, "the first block trained: SGD took steps"
    assert ns["targets"].shape == (8, 10) and ns["pasted"].dtype == torch.uint8


def test_readme_recipes_are_the_tested_files():
    recipes = [(path, code) for path, code in _blocks() if path is not None]
    assert {p for p, _ in recipes} >= {
        "examples/recipes/timm_style.py",
        "examples/recipes/torchvision_collate.py",
        "examples/recipes/lightning_module.py",
    }
    for path, code in recipes:
        assert code == (ROOT / path).read_text(), f"the README's copy of {path} differs from the file"
