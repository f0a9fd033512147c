"""The README's user-written op (examples/custom_op.py) passes the whole contract."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from contract import check_op

_PATH = Path(__file__).resolve().parents[1] / "examples" / "custom_op.py"
_spec = importlib.util.spec_from_file_location("custom_op", _PATH)
assert _spec is not None and _spec.loader is not None
custom_op = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(custom_op)


def test_the_readme_custom_op_passes_check_op():
    check_op(lambda: custom_op.RandomGrayscale(p=0.5))


def test_the_custom_op_greys_the_images_it_draws_and_only_those():
    op = custom_op.RandomGrayscale(p=0.5)
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    params = op.sample_params(x, generator=torch.Generator().manual_seed(1))
    out = op.transform(x, None, params)
    gray = params.gray
    assert 0 < int(gray.sum()) < 16
    assert torch.equal(out[~gray], x[~gray])
    assert torch.equal(out[gray][:, 0], out[gray][:, 1]) and torch.equal(out[gray][:, 1], out[gray][:, 2])
