"""Approximate greedy coreset (PatchCore, Roth et al., CVPR 2022): determinism, farthest-point property, skips."""

from __future__ import annotations

import numpy as np
import pytest

from bench.features.coreset import (
    approximate_greedy_coreset,
    coreset_rng,
    coreset_size,
    greedy_farthest_points,
    naive_greedy_farthest_points,
    project,
    random_projection,
)


def _points(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.5, 3.0, d)
    return (rng.standard_normal((n, d)) * scale + rng.normal(0, 5, d)).astype(np.float32)


@pytest.mark.parametrize("block_size", [7, 64, 1024])
@pytest.mark.parametrize("n,d,k", [(600, 16, 100), (257, 128, 60)])
def test_lazy_blocked_selection_equals_naive(n: int, d: int, k: int, block_size: int) -> None:
    z = _points(n, d, seed=n + d)
    starts = np.random.default_rng(1).choice(n, 10, replace=False)
    fast = greedy_farthest_points(z, k, starts, block_size=block_size)
    naive = naive_greedy_farthest_points(z.astype(np.float64), k, starts)
    np.testing.assert_array_equal(fast, naive)


def test_farthest_point_property() -> None:
    """Every chosen point is (one of) the farthest from the start-point init / the points chosen before it."""
    z = _points(400, 8, seed=3).astype(np.float64)
    starts = np.array([5, 17, 99])
    sel = greedy_farthest_points(z.astype(np.float32), 50, starts, block_size=32)
    assert len(set(sel.tolist())) == 50
    min_d = np.linalg.norm(z[:, None] - z[starts][None], axis=2).mean(1)
    for i in sel:
        assert min_d[i] >= min_d.max() * (1 - 1e-5)
        min_d = np.minimum(min_d, np.linalg.norm(z - z[i], axis=1))
    assert min_d[sel].max() < 1e-6  # chosen points are never chosen again


def test_same_seed_same_coreset_other_seed_other_coreset() -> None:
    x = _points(3000, 64, seed=7)
    a = approximate_greedy_coreset(x, 0.1, coreset_rng(1), min_points=0)
    b = approximate_greedy_coreset(x, 0.1, coreset_rng(1), min_points=0)
    c = approximate_greedy_coreset(x, 0.1, coreset_rng(2), min_points=0)
    assert a.shape == (300,) and a.dtype == np.int64
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # the coreset stream is independent of other streams of the same seed
    assert not np.array_equal(coreset_rng(1).random(4), np.random.default_rng(1).random(4))


def test_chunked_input_equals_array_input() -> None:
    x = _points(2000, 32, seed=11)
    chunks = [x[i : i + 784] for i in range(0, len(x), 784)]
    a = approximate_greedy_coreset(x, 0.2, coreset_rng(5), min_points=0)
    b = approximate_greedy_coreset(chunks, 0.2, coreset_rng(5), min_points=0)
    np.testing.assert_array_equal(a, b)


def test_reference_semantics_projection_then_starts() -> None:
    """The projection is drawn first, then the start points; selection runs in the projected space."""
    x = _points(1500, 256, seed=2)
    rng = coreset_rng(9)
    p = random_projection(rng, 256, 128)
    starts = rng.choice(1500, 10, replace=False)
    expected = naive_greedy_farthest_points(project(x, p).astype(np.float64), 150, starts)
    got = approximate_greedy_coreset(x, 0.1, coreset_rng(9), min_points=0)
    np.testing.assert_array_equal(got, expected)


def test_projection_follows_torch_linear_default_init() -> None:
    p = random_projection(np.random.default_rng(0), 1024, 128)
    bound = 1 / np.sqrt(1024)
    assert p.shape == (1024, 128) and p.dtype == np.float32
    assert np.abs(p).max() <= bound
    assert abs(p.std() - bound / np.sqrt(3)) < 0.01 * bound


def test_small_banks_are_not_subsampled() -> None:
    assert coreset_size(500, 0.1, min_points=1000) == 500
    assert coreset_size(5000, 0.1, min_points=1000) == 1000
    assert coreset_size(50_000, 0.1, min_points=1000) == 5000
    assert coreset_size(50_000, 1.0) == 50_000
    with pytest.raises(ValueError):
        coreset_size(10, 0.0)
    x = _points(800, 16)
    np.testing.assert_array_equal(approximate_greedy_coreset(x, 0.1, coreset_rng(0)), np.arange(800))
    assert len(approximate_greedy_coreset(_points(4000, 16), 0.1, coreset_rng(0), min_points=1000)) == 1000
