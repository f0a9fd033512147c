"""The interop suite: keepmix against the real torchvision, timm and Lightning.

Run by ``scripts/test-interop.sh`` in its own venv (torch 2.14.1, torchvision 0.29.1, timm
1.0.31, lightning). The main suite's environment (torch 2.13.0) has neither torchvision nor
timm: there this folder is not collected at all (``collect_ignore_glob``), so ``python -m
pytest`` stays the main suite. The parent ``tests/conftest.py`` gives the CIFAR-10 fixtures.
"""

from __future__ import annotations

import pytest
import torch
from interop_helpers import _COUNTS, SIZES, from_pil, to_pil
from PIL import Image


def _peers_import() -> bool:
    try:
        import timm  # noqa: F401
        import torchvision  # noqa: F401
    except Exception:  # not installed, or a build that does not load beside this torch
        return False
    return True


if not _peers_import():
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session")
def sized_images(cifar_uint8: torch.Tensor) -> dict[str, tuple[torch.Tensor, list[Image.Image]]]:
    """Real CIFAR-10 test images at each of :data:`SIZES`: ``name -> ((B, 3, H, W) uint8, PIL)``."""
    out = {}
    for name, (h, w) in SIZES.items():
        pil = to_pil(cifar_uint8[: _COUNTS[name]])
        if (h, w) != (32, 32):
            pil = [im.resize((w, h), Image.Resampling.BICUBIC) for im in pil]
        out[name] = (from_pil(pil), pil)
    return out
