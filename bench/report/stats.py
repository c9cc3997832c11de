"""Statistics for result tables (docs/method-notes.md §12.3 and §12.5), in the style of
rliable (Agarwal et al., "Deep Reinforcement Learning at the Edge of the Statistical Precipice", NeurIPS 2021).

* :func:`t_interval`: mean and Student-t confidence interval across seeds within one category
  (sample std, ddof = 1; scipy's t quantile, e.g. t₀.₉₇₅,₄ = 2.776 for 5 seeds).
* :func:`stratified_bootstrap_mean`: the dataset score (unweighted mean over categories of the per-category
  means) with a percentile interval from a bootstrap that resamples seeds *within* each category
  (the unit of variance is one (category, seed) run; categories are the strata and are never resampled).
* :func:`prob_improvement`: P(A > B) on a random (category, seed) unit, paired, ties counted ½.

Intervals and probabilities are given only where they can mean something (:data:`MIN_DRAWS`, :data:`RULE`): an
interval from at least 3 draws (seeds) in every category, a probability from at least 3 paired runs; below that the
bounds and the probability are NaN and tables say ``n/a``, never a number made from one run.

Every random draw takes an explicit, seeded :class:`numpy.random.Generator`, so tables are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence, Union

import numpy as np
import pandas as pd
from scipy import stats

from bench.report.defaults import DEFAULT_BOOT, DEFAULT_BOOT_SEED

MIN_DRAWS = 3
"""Fewest draws behind an interval (seeds in every category) and behind a probability of improvement (paired runs).

With one draw there is no spread at all. With two, a percentile bootstrap can only return the two values (the
means of the resamples {a, a}, {a, b}, {b, b}): the "interval" is the range of the data, with no coverage to speak
of; a t-interval has one degree of freedom (t₀.₉₇₅,₁ = 12.7), and P(A > B) from one or two pairs can only be 0, ¼,
½, ¾ or 1. From three on the t quantile is 4.30, a bootstrap has 10 distinct resample means per category and a
probability at least 6 levels: coarse, and captions name n, but an estimate rather than the draws themselves."""
RULE = (f"intervals only where every category has ≥ {MIN_DRAWS} seeds, probabilities only from ≥ {MIN_DRAWS} paired "
        "runs (fewer draws give back the draws themselves, not an estimate)")  # fmt: skip
"""The rule of :data:`MIN_DRAWS` as a caption states it."""
NA = "n/a"
"""What an interval or a probability cell says where the rule's draws are missing (never ``[–, –]``)."""
Groups = Union[Mapping[object, Sequence[float]], pd.DataFrame, np.ndarray, Sequence[Sequence[float]]]


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval.

    Attributes:
        mean: the point estimate.
        low, high: interval bounds (NaN when it cannot be computed, e.g. one seed).
        n: number of units behind the estimate.
        method: how the interval was computed, for captions.
    """

    mean: float
    low: float
    high: float
    n: int
    method: str

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    a = np.asarray(values, dtype=float).ravel()
    return a[np.isfinite(a)]


def t_interval(values: Sequence[float] | np.ndarray, conf: float = 0.95) -> Interval:
    """Mean ± Student-t interval (sample std, ddof = 1); NaNs are ignored.

    Args:
        values: one value per seed.
        conf: confidence level.

    Returns:
        The interval; bounds are NaN for fewer than :data:`MIN_DRAWS` values, everything NaN for none.
    """
    a = _finite(values)
    n = len(a)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, "t-interval")
    m = float(a.mean())
    if n < MIN_DRAWS:
        return Interval(m, float("nan"), float("nan"), n, "t-interval")
    half = float(stats.t.ppf(0.5 + conf / 2, df=n - 1) * a.std(ddof=1) / np.sqrt(n))
    return Interval(m, m - half, m + half, n, f"{conf:.0%} t-interval across seeds (n={n}, ddof=1)")


def bounds(low: float, high: float, number: Callable[[float], str]) -> str:
    """``[low, high]`` with ``number`` formatting each bound; :data:`NA` when the interval is missing (fewer draws than
    :data:`MIN_DRAWS`)."""
    return f"[{number(low)}, {number(high)}]" if np.isfinite(low) and np.isfinite(high) else NA


def _strata(data: Groups) -> list[np.ndarray]:
    """Turn the accepted input shapes into a list of per-category arrays of seed values (NaN dropped)."""
    if isinstance(data, pd.DataFrame):
        if {"category", "value"} <= set(data.columns):  # long format
            groups = [_finite(g["value"].to_numpy()) for _, g in data.groupby("category", sort=True)]
        else:  # wide: one row per category, one column per seed
            groups = [_finite(row) for row in data.to_numpy(dtype=float)]
    elif isinstance(data, Mapping):
        groups = [_finite(v) for _, v in sorted(data.items(), key=lambda kv: str(kv[0]))]
    else:
        arr = np.asarray(data, dtype=object)
        if arr.ndim == 2:
            groups = [_finite(np.asarray(row, dtype=float)) for row in np.asarray(data, dtype=float)]
        else:
            groups = [_finite(g) for g in data]
    return [g for g in groups if len(g)]


def stratified_bootstrap_mean(
    data: Groups,
    n_boot: int = DEFAULT_BOOT,
    rng: np.random.Generator | int | None = None,
    conf: float = 0.95,
) -> Interval:
    """Mean over categories of the per-category seed means, with a category-stratified bootstrap interval.

    Each repetition resamples, independently in every category, that category's seeds with replacement
    and recomputes the unweighted mean over categories; the interval is the percentile interval of those
    ``n_boot`` means. Categories with no values are dropped (callers report coverage separately); when
    a category has fewer than :data:`MIN_DRAWS` values the bounds are NaN (a lone seed carries no spread to
    resample, and two give back their own range).

    Args:
        data: per-category seed values: a mapping category → values, a (categories × seeds) array or wide
            DataFrame (NaN = missing run), or a long DataFrame with columns ``category`` and ``value``.
        n_boot: bootstrap repetitions.
        rng: a Generator, or a seed for one (default seed 0): the result is deterministic.
        conf: confidence level.
    """
    groups = _strata(data)
    n_units = int(sum(len(g) for g in groups))
    if not groups:
        return Interval(float("nan"), float("nan"), float("nan"), 0, "stratified bootstrap")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(DEFAULT_BOOT_SEED if rng is None else rng)
    point = float(np.mean([g.mean() for g in groups]))
    total = np.zeros(n_boot)
    for g in groups:
        idx = gen.integers(0, len(g), size=(n_boot, len(g)))
        total += g[idx].mean(axis=1)
    total /= len(groups)
    lo, hi = np.quantile(total, [(1 - conf) / 2, 1 - (1 - conf) / 2])
    if min(len(g) for g in groups) < MIN_DRAWS:  # one or two seeds: no honest interval (see MIN_DRAWS)
        lo = hi = float("nan")
    method = (
        f"{conf:.0%} percentile CI, category-stratified bootstrap over seeds, {n_boot:,} resamples "
        f"({len(groups)} categories, {n_units} runs)"
    )
    return Interval(point, float(lo), float(hi), n_units, method)


def prob_improvement(
    a: Sequence[float] | np.ndarray | pd.Series,
    b: Sequence[float] | np.ndarray | pd.Series,
    categories: Sequence[object] | None = None,
    min_pairs: int = MIN_DRAWS,
) -> float:
    """P(A > B) on a random paired (category, seed) unit; ties count ½.

    Args:
        a, b: paired scores. Plain sequences must have equal length (unit i of ``a`` pairs with unit i of
            ``b``); two pandas Series are paired on their index (inner join), and when that index has a
            ``category`` level it is used as ``categories``.
        categories: the category of each unit. When given, categories weigh equally (the mean over
            categories of the within-category probability), matching the category-mean dataset score.

    Returns:
        The probability in [0, 1], NaN when there is no pair.
    """
    if isinstance(a, pd.Series) and isinstance(b, pd.Series):
        joined = pd.concat({"a": a, "b": b}, axis=1, join="inner").dropna()
        if categories is None and "category" in (joined.index.names or []):
            categories = list(joined.index.get_level_values("category"))
        x, y = joined["a"].to_numpy(float), joined["b"].to_numpy(float)
    else:
        x, y = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
        if x.shape != y.shape:
            raise ValueError(f"paired scores need equal shapes, got {x.shape} and {y.shape}")
    if len(x) == 0 or len(x) < min_pairs:
        return float("nan")
    wins = (x > y).astype(float) + 0.5 * (x == y)
    if categories is None:
        return float(wins.mean())
    cats = np.asarray(categories, dtype=object)
    if len(cats) != len(wins):
        raise ValueError("categories must give one category per paired unit")
    return float(pd.Series(wins).groupby(cats).mean().mean())
