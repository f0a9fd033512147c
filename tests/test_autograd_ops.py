"""Autograd across every public op: each op is either differentiable with respect to the
images (the graph is kept and the gradient is the true one) or refuses ``requires_grad``
images with a message that says so. Silently detaching, or an internal autograd error, is a
bug of the op.

The region and mixing ops are differentiable (their pastes take ``torch.where`` when an
input needs a gradient); the PIL-exact policies, AugMix and KeepPaste around a policy refuse
``requires_grad`` images (``Op.differentiable``).
"""

from __future__ import annotations

import pytest
import torch
from contract import K
from test_contract import FACTORIES

SEEDS = (0, 1, 2, 3)

#: The ops that refuse requires_grad images; every other public op is differentiable.
REFUSE = {"AutoAugment", "RandAugment", "TrivialAugmentWide", "KeepPaste", "KeepAutoAugment", "KeepRandAugment", "AugMix"}


def _batch(seed: int):
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.rand(4, 3, 16, 16, generator=g)
    y = torch.randint(0, K, (4,), generator=g)
    s = torch.rand(4, 16, 16, generator=g)
    return x, y, s


def _images(out):
    return out[0] if isinstance(out, tuple) else out


def _outcome(name: str, seed: int) -> str:
    """'grad' (graph kept), 'refused' (a clear error naming requires_grad), or what went wrong."""
    op = FACTORIES[name]()
    x, y, s = _batch(seed)
    x = x.requires_grad_(True)
    try:
        out = _images(op(x, y, saliency=s, generator=torch.Generator().manual_seed(seed)))
    except (TypeError, ValueError) as e:
        return "refused" if "requires_grad" in str(e) else f"error unrelated to requires_grad: {e}"
    except RuntimeError as e:
        return f"internal error: {e}"
    return "grad" if out.requires_grad else "detached"


def _directional_check(name: str, seed: int) -> None:
    """The autograd gradient agrees with a central difference of the op at fixed params."""
    op = FACTORIES[name]()
    x, y, s = _batch(seed)
    params = op.sample_params(x, y, saliency=s, generator=torch.Generator().manual_seed(seed))

    def f(images):
        return _images(op.transform(images, y if op.mixes_labels else None, params))

    v = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    d = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((f(xg) * v).sum(), xg)
    eps = 1e-3
    with torch.no_grad():
        numeric = ((f(x + eps * d) - f(x - eps * d)) * v).sum() / (2 * eps)
    analytic = (grad * d).sum()
    assert torch.isfinite(grad).all()
    assert analytic.item() == pytest.approx(numeric.item(), rel=2e-2, abs=2e-2)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_op_is_differentiable_or_refuses_requires_grad(name):
    outcomes = {_outcome(name, seed) for seed in SEEDS}
    assert outcomes == ({"refused"} if name in REFUSE else {"grad"}), f"{name}: {sorted(outcomes)}"
    if outcomes == {"grad"}:
        for seed in SEEDS:
            _directional_check(name, seed)


def test_the_refusing_list_names_only_public_ops():
    assert REFUSE <= set(FACTORIES)
