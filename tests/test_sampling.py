"""Tests of keepmix.sampling: ranges, reproducibility, distributions (fixed seeds, generous bounds)."""

from __future__ import annotations

import math

import pytest
import torch

from keepmix import sampling


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_uniform_range_and_shape():
    u = sampling.uniform((1000, 3), -2.0, 5.0, generator=gen())
    assert u.shape == (1000, 3) and u.dtype == torch.float32
    assert (u >= -2).all() and (u < 5).all()
    assert abs(u.mean().item() - 1.5) < 0.2


def test_log_uniform_range_and_log_mean():
    r = sampling.log_uniform(20000, 0.3, 1 / 0.3, generator=gen(1))
    assert (r >= 0.3 * (1 - 1e-6)).all() and (r <= (1 / 0.3) * (1 + 1e-6)).all()
    # log r is uniform on [log .3, -log .3]: mean 0, half the mass below ratio 1.
    assert abs(r.log().mean().item()) < 0.03
    assert abs((r < 1).float().mean().item() - 0.5) < 0.02


def test_log_uniform_rejects_non_positive():
    with pytest.raises(ValueError, match="low"):
        sampling.log_uniform(3, 0.0, 1.0)


def test_randint_scalar_and_tensor_bounds():
    r = sampling.randint(2, 7, 5000, generator=gen(2))
    assert r.dtype == torch.int64 and r.min() == 2 and r.max() == 6
    low = torch.tensor([0, 5, 10, 3])
    high = torch.tensor([1, 8, 30, 4])
    r = sampling.randint(low, high, (2000, 4), generator=gen(3))
    assert (r >= low).all() and (r < high).all()
    assert torch.equal(r[:, 0], torch.zeros(2000, dtype=torch.int64))
    # every value of [5, 8) is hit, roughly equally often
    counts = torch.bincount(r[:, 1] - 5, minlength=3).float() / 2000
    assert (counts - 1 / 3).abs().max() < 0.05


def test_randint_bad_bounds():
    with pytest.raises(ValueError, match="high > low"):
        sampling.randint(3, 3, 4)
    with pytest.raises(ValueError, match="high > low"):
        sampling.randint(torch.tensor([0, 2]), torch.tensor([1, 2]), 2)


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_bernoulli_rejects_bad_probability(p):
    with pytest.raises(ValueError, match="probability"):
        sampling.bernoulli(p, 3)


@pytest.mark.parametrize("p,expected", [(0.0, 0.0), (1.0, 1.0), (0.3, 0.3)])
def test_bernoulli_rate(p, expected):
    b = sampling.bernoulli(p, 20000, generator=gen(4))
    assert b.dtype == torch.bool
    assert abs(b.float().mean().item() - expected) < 0.015


@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0])
def test_beta_moments(alpha):
    n = 40000
    x = sampling.beta(alpha, alpha, n, generator=gen(5))
    assert x.dtype == torch.float32 and (x >= 0).all() and (x <= 1).all()
    x = x.double()
    mean, var = 0.5, 1.0 / (4 * (2 * alpha + 1))
    se_mean = math.sqrt(var / n)
    assert abs(x.mean().item() - mean) < 5 * se_mean
    assert abs(x.var().item() - var) / var < 0.05


def test_beta_asymmetric_mean():
    x = sampling.beta(2.0, 5.0, 40000, generator=gen(6))
    assert abs(x.mean().item() - 2 / 7) < 0.005


def test_permutation_is_a_permutation():
    p = sampling.permutation(100, generator=gen(7))
    assert p.dtype == torch.int64
    assert torch.equal(p.sort().values, torch.arange(100))
    assert not torch.equal(p, torch.arange(100))


@pytest.mark.parametrize(
    "draw",
    [
        lambda g: sampling.uniform(50, generator=g),
        lambda g: sampling.log_uniform(50, 0.5, 2.0, generator=g),
        lambda g: sampling.randint(torch.zeros(50, dtype=torch.long), torch.arange(1, 51), 50, generator=g),
        lambda g: sampling.bernoulli(0.5, 50, generator=g),
        lambda g: sampling.beta(0.4, 0.4, 50, generator=g),
        lambda g: sampling.permutation(50, generator=g),
        lambda g: sampling.sample_where(torch.ones(50, 40, dtype=torch.bool), generator=g)[0],
        lambda g: sampling.selection_keys(50, 0.6, "below", generator=g),
    ],
)
def test_same_seed_same_draws(draw):
    a, b, c = draw(gen(11)), draw(gen(11)), draw(gen(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_selection_keys_shape_and_range():
    from keepmix.functional.selection import num_draws

    for q, side in ((0.6, "below"), (0.6, "above"), (0.05, "below"), (0.999, "below")):
        k = num_draws(q, side)
        passing = q if side == "below" else 1 - q
        # enough tries that all of them miss the passing share with probability <= 1e-9 (8..1024)
        assert 8 <= k <= 1024 and (k == 1024 or k == 8 or (1 - passing) ** k <= 1e-9 < (1 - passing) ** (k - 1))
        keys = sampling.selection_keys(7, q, side, generator=gen(13))
        assert keys.shape == (7, k + 1) and keys.dtype == torch.float64
        assert bool(((keys >= 0) & (keys < 1)).all())
        # one uniform float64 draw of that shape from the generator
        assert torch.equal(keys, torch.rand((7, k + 1), generator=gen(13), dtype=torch.float64))
    assert num_draws(0.6, "below") == 23  # ceil(log 1e-9 / log 0.4)


def test_sample_where_draws_one_key_per_row():
    mask = torch.rand(30, 9, generator=gen(14)) < 0.4
    idx, found = sampling.sample_where(mask, gen(15))
    u = torch.rand(30, generator=gen(15), dtype=torch.float64)
    count = mask.sum(1)
    for i in range(30):
        true_at = mask[i].nonzero()[:, 0].tolist()
        assert bool(found[i]) == bool(true_at)
        expected = true_at[min(int(float(u[i]) * len(true_at)), len(true_at) - 1)] if true_at else 0
        assert int(idx[i]) == expected, (i, int(count[i]))


def test_generator_type_checked():
    with pytest.raises(TypeError, match="generator"):
        sampling.uniform(3, generator=1234)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_generator_gives_same_values_on_cuda():
    a = sampling.beta(0.5, 0.5, 64, generator=gen(8))
    b = sampling.beta(0.5, 0.5, 64, device="cuda", generator=gen(8))
    assert b.device.type == "cuda" and torch.equal(a, b.cpu())
    p = sampling.permutation(64, device="cuda", generator=gen(9))
    assert torch.equal(p.cpu(), sampling.permutation(64, generator=gen(9)))
