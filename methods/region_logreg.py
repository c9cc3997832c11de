"""Region linear probe: logistic regression on mask-pooled raw + residual region features (training-free in the
sense of the field: no backbone training, a convex fit on the support only).

Tian et al., "Rethinking Few-Shot Image Classification: a Good Embedding Is All You Need?", ECCV 2020 (the linear
probe), on regions: the embedding of :mod:`bench.methods._region` (raw and residual features inside the mask, the
context ring, the whole image's residual), standardised on the support, scikit-learn ``LogisticRegression`` (L2,
lbfgs) with ``random_state`` from the run seed's ``logreg`` stream; scores = class probabilities.

Shapes: support (C·n, E) → probabilities of queries (Q, C).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from bench.method import SupportSet, register_method
from bench.methods._region import PooledRegionMethod, RegionFeatures
from bench.methods.baselines import fit_probe, probe_scores


@dataclass(frozen=True)
class RegionLogRegConfig(RegionFeatures):
    C: float = 1.0
    max_iter: int = 1000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.C <= 0:
            raise ValueError(f"C must be > 0, got {self.C}")


@register_method("region-logreg", description="logistic regression on mask-pooled raw + residual region features")
class RegionLogReg(PooledRegionMethod):
    """Linear probe over defect regions: StandardScaler + LogisticRegression fitted on the support regions."""

    Config = RegionLogRegConfig

    def fit(self, support: SupportSet) -> None:
        self.embed = self.embedder()
        self.model = fit_probe(self, self.embed(support.regions), support.labels, self.config.C, self.config.max_iter)
        self.n_classes = support.n_classes

    def predict_regions(self, query_paths: Sequence[str], regions: Sequence[Any]) -> np.ndarray:
        return probe_scores(self.model, self.embed(regions), self.n_classes)
