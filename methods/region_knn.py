"""Region k-NN: the support regions nearest to a query region by cosine similarity (training-free).

The region-level ``knn`` (k = 1 by default): regions are embedded as in :mod:`bench.methods._region`; the score of
class c is the number of the k nearest support regions in c plus 10⁻³ × the best similarity to c (ties broken, and
k = 1 ranks every class by its nearest support region).

Shapes: support (C·n, E), queries (Q, E) → similarities (Q, C·n) → scores (Q, C).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bench.method import SupportSet, register_method
from bench.methods._region import PooledRegionMethod, RegionFeatures
from bench.methods.baselines import knn_scores


@dataclass(frozen=True)
class RegionKNNConfig(RegionFeatures):
    k: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")


@register_method("region-knn", description="k-NN (k=1, cosine) over mask-pooled support regions (training-free)")
class RegionKNN(PooledRegionMethod):
    """Cosine k-nearest-neighbour classifier of defect regions."""

    Config = RegionKNNConfig

    def fit(self, support: SupportSet) -> None:
        self.embed = self.embedder()
        self.x = F.normalize(self.embed(support.regions), dim=1)
        self.y = torch.tensor(support.labels)
        self.n_classes = support.n_classes

    def predict_regions(self, query_paths: Sequence[str], regions: Sequence[Any]) -> np.ndarray:
        sim = F.normalize(self.embed(regions), dim=1) @ self.x.T  # (Q, S)
        return knn_scores(sim, self.y, self.n_classes, self.config.k)
