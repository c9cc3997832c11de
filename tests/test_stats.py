"""bench.report.stats: t-interval, category-stratified bootstrap, probability of improvement."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from bench.report.stats import prob_improvement, stratified_bootstrap_mean, t_interval

SEED_VALUES = {"bottle": [60.0, 62.5, 58.0, 65.0, 61.0], "cable": [30.0, 35.0, 28.0, 33.0, 31.0], "grid": [40.0, 44.0, 39.0, 47.0, 41.0]}


def test_t_interval_matches_scipy() -> None:
    v = np.array([0.5, 0.6, 0.55, 0.7, 0.65])
    iv = t_interval(v)
    half = sps.t.ppf(0.975, df=4) * v.std(ddof=1) / np.sqrt(5)
    assert sps.t.ppf(0.975, df=4) == pytest.approx(2.776, abs=1e-3)  # docs/method-notes.md §12.3
    assert iv.mean == pytest.approx(v.mean())
    assert (iv.low, iv.high) == pytest.approx((v.mean() - half, v.mean() + half))
    lo, hi = sps.t.interval(0.95, df=4, loc=v.mean(), scale=sps.sem(v))
    assert (iv.low, iv.high) == pytest.approx((lo, hi))
    assert iv.n == 5


def test_t_interval_degenerate() -> None:
    assert np.isnan(t_interval([]).mean)
    one = t_interval([0.4, np.nan])
    assert one.mean == 0.4 and np.isnan(one.low) and one.n == 1


def test_bootstrap_deterministic_and_contains_mean() -> None:
    a = stratified_bootstrap_mean(SEED_VALUES, n_boot=5000, rng=np.random.default_rng(7))
    b = stratified_bootstrap_mean(SEED_VALUES, n_boot=5000, rng=np.random.default_rng(7))
    c = stratified_bootstrap_mean(SEED_VALUES, n_boot=5000, rng=np.random.default_rng(8))
    assert (a.low, a.high) == (b.low, b.high)
    assert (a.low, a.high) != (c.low, c.high)
    expect = np.mean([np.mean(v) for v in SEED_VALUES.values()])
    assert a.mean == pytest.approx(expect)
    assert a.low < a.mean < a.high
    assert a.n == 15 and "10,000" not in a.method and "5,000 resamples" in a.method
    assert stratified_bootstrap_mean(SEED_VALUES).low == stratified_bootstrap_mean(SEED_VALUES).low  # default seed


def test_bootstrap_input_shapes_agree() -> None:
    wide = pd.DataFrame(SEED_VALUES).T  # categories × seeds
    long = pd.DataFrame([{"category": c, "value": x} for c, v in SEED_VALUES.items() for x in v])
    res = [stratified_bootstrap_mean(d, n_boot=2000, rng=3) for d in (SEED_VALUES, wide, long, wide.to_numpy())]
    assert len({(r.mean, r.low, r.high) for r in res}) == 1


def test_bootstrap_resamples_within_categories_only() -> None:
    # One category: the stratified bootstrap is the plain percentile bootstrap of the mean; compare widths with scipy's.
    v = np.array(SEED_VALUES["bottle"])
    mine = stratified_bootstrap_mean({"bottle": v}, n_boot=20000, rng=1)
    ref = sps.bootstrap((v,), np.mean, n_resamples=20000, method="percentile", rng=np.random.default_rng(2)).confidence_interval
    assert mine.high - mine.low == pytest.approx(ref.high - ref.low, rel=0.1)
    # Categories are strata, never resampled: with no spread within categories the interval collapses to the mean.
    flat = {"a": [10.0] * 5, "b": [90.0] * 5}
    iv = stratified_bootstrap_mean(flat, n_boot=1000, rng=0)
    assert iv.low == iv.high == iv.mean == 50.0


def test_bootstrap_missing_runs() -> None:
    wide = pd.DataFrame(SEED_VALUES).T
    wide.iloc[1, 2] = np.nan
    iv = stratified_bootstrap_mean(wide, n_boot=1000, rng=0)
    assert iv.n == 14
    cable = [x for i, x in enumerate(SEED_VALUES["cable"]) if i != 2]
    assert iv.mean == pytest.approx(np.mean([np.mean(SEED_VALUES["bottle"]), np.mean(cable), np.mean(SEED_VALUES["grid"])]))
    single = stratified_bootstrap_mean({"a": [1.0, 2.0], "b": [3.0]}, n_boot=100, rng=0)
    assert single.mean == pytest.approx(2.25) and np.isnan(single.low)


def test_prob_improvement() -> None:
    a = np.array([0.5, 0.6, 0.7, 0.4])
    assert prob_improvement(a, a) == 0.5
    assert prob_improvement(a + 0.1, a) == 1.0
    assert prob_improvement(a, a + 0.1) == 0.0
    assert prob_improvement([1, 0, 0.5], [0, 1, 0.5]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        prob_improvement([1, 2], [1])


def test_prob_improvement_paired_series_weights_categories() -> None:
    idx = pd.MultiIndex.from_tuples([("bottle", 1), ("bottle", 2), ("bottle", 3), ("bottle", 4), ("cable", 1)], names=["category", "seed"])
    a = pd.Series([1.0, 1.0, 1.0, 1.0, 0.0], index=idx)
    b = pd.Series([0.0, 0.0, 0.0, 0.0, 1.0], index=idx)
    assert prob_improvement(a, b) == pytest.approx(0.5)  # bottle: 1, cable: 0, categories weigh equally
    assert prob_improvement(a.to_numpy(), b.to_numpy()) == pytest.approx(0.8)  # plain units
    assert prob_improvement(a, b.drop(("cable", 1))) == 1.0  # pairs only where both ran
    assert np.isnan(prob_improvement(pd.Series(dtype=float), pd.Series(dtype=float)))
