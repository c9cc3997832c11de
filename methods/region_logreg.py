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

from bench.method import RegionMethod, SupportSet, register_method
from bench.methods._region import RegionEmbedder, RegionFeatures, region_reads


@dataclass(frozen=True)
class RegionLogRegConfig(RegionFeatures):
    C: float = 1.0
    max_iter: int = 1000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.C <= 0:
            raise ValueError(f"C must be > 0, got {self.C}")


@register_method("region-logreg", description="logistic regression on mask-pooled raw + residual region features")
class RegionLogReg(RegionMethod):
    """Linear probe over defect regions: StandardScaler + LogisticRegression fitted on the support regions."""

    Config = RegionLogRegConfig

    @classmethod
    def reads(cls, config: Any) -> set[str]:
        return region_reads(config)

    def fit(self, support: SupportSet) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.embed = RegionEmbedder(self, self.config.weights(), self.config.ring)
        x = self.embed(support.regions).numpy().astype(np.float64)
        seed = int(self.ctx.rng("logreg").integers(2**31 - 1))
        self.model = make_pipeline(
            StandardScaler(), LogisticRegression(C=self.config.C, max_iter=self.config.max_iter, random_state=seed)
        )
        with self.ctx.timer("finetune"):
            self.model.fit(x, np.asarray(support.labels))
        self.n_classes = support.n_classes

    def predict_regions(self, query_paths: Sequence[str], regions: Sequence[Any]) -> np.ndarray:
        proba = self.model.predict_proba(self.embed(regions).numpy().astype(np.float64))
        out = np.zeros((len(proba), self.n_classes))
        out[:, self.model.classes_] = proba
        return out
