"""Helpers shared by the interop tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# The sizes the policy ops are compared at: CIFAR's own 32 px, ImageNet's 224 (CIFAR images
# upscaled with PIL's bicubic) and one non-square size (rows != columns catches a swapped axis).
SIZES = {"32": (32, 32), "224": (224, 224), "36x52": (36, 52)}
_COUNTS = {"32": 12, "224": 1, "36x52": 4}


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) uint8 -> B RGB PIL images."""
    return [Image.fromarray(img.permute(1, 2, 0).contiguous().numpy()) for img in images]


def from_pil(images: list[Image.Image]) -> torch.Tensor:
    """B RGB PIL images -> (B, 3, H, W) uint8."""
    return torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])).permute(0, 3, 1, 2).contiguous()


# Two-sample tests of "drawn from the same distribution" at fixed seeds (p > P_MIN).
P_MIN = 1e-3


def ks_p(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov p-value (conservative on discrete data)."""
    from scipy.stats import ks_2samp

    return float(ks_2samp(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)).pvalue)


def chi2_p(a, b, min_count: int = 10) -> float:
    """Two-sample chi-square p-value on the counts of discrete values (hashable items).

    Categories with fewer than ``min_count`` items in both samples together are pooled into
    one (the chi-square approximation needs expected counts of about 5 or more); a category
    that only one sample has still counts, so a value outside the other's support fails."""
    from collections import Counter

    from scipy.stats import chi2_contingency

    ca, cb = Counter(a), Counter(b)
    keys = sorted(set(ca) | set(cb), key=repr)
    big = [k for k in keys if ca[k] + cb[k] >= min_count]
    rows = [[ca[k] for k in big], [cb[k] for k in big]]
    rest = (sum(ca[k] for k in keys if k not in big), sum(cb[k] for k in keys if k not in big))
    if sum(rest) > 0:
        rows[0].append(rest[0])
        rows[1].append(rest[1])
    if len(rows[0]) < 2:
        return 1.0  # one category: nothing to compare
    return float(chi2_contingency(np.array(rows)).pvalue)
