"""A bit-exact, fast ``torch.where`` for same-dtype tensors.

The CPU ``where`` kernel is scalar; selecting on the values' bits (``b ^ ((a ^ b) & mask)``)
is vectorised and several times faster on small images (benchmarks/results/kernel_choices.md,
K1), and exact for every value, NaN and -0.0 included. Every op that keeps pixels outside a region and
replaces those inside (paste, fill, warps' fill, point ops with thresholds) uses it.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["select"]

_SAME_WIDTH_INT = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def select(cond: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``torch.where(cond, a, b)`` for integer or float ``a`` and ``b`` of one dtype, bit for bit.

    Computed as ``b ^ ((a ^ b) & mask)`` on the values' bits (``mask`` all ones where ``cond``):
    the CPU ``where`` kernel is scalar, and this is several times faster on small batches
    (kernel_choices.md, K1); the result is exact for every value, NaN and -0.0 included.
    Inputs that need a gradient take ``torch.where`` (the bit trick has none).
    """
    if a.dtype != b.dtype or a.dtype == torch.bool or a.is_complex() or a.requires_grad or b.requires_grad:
        return torch.where(cond, a, b)
    it = _SAME_WIDTH_INT.get(a.dtype, a.dtype)
    ai, bi = a.view(it), b.view(it)
    mask = cond.to(it).neg_()  # 0 or all ones (uint8: 255)
    out = torch.bitwise_xor(ai, bi)
    # In place when the mask does not enlarge ``out`` (the usual case: a (B, 1, H, W) mask).
    out = out.bitwise_and_(mask) if _fits(mask.shape, out.shape) else out & mask
    return out.bitwise_xor_(bi).view(a.dtype)


def _fits(small: tuple[int, ...], big: tuple[int, ...]) -> bool:
    """Whether ``small`` broadcasts to ``big`` without enlarging it (plain Python: the
    symbolic-shape machinery of ``torch.broadcast_shapes`` costs more than the op here)."""
    if len(small) > len(big):
        return False
    return all(s == 1 or s == g for s, g in zip(reversed(small), reversed(big), strict=False))  # right-aligned: big may have more dims
