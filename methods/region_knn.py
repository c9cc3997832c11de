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

from bench.method import RegionMethod, SupportSet, register_method
from bench.methods._region import RegionEmbedder, RegionFeatures, region_reads


@dataclass(frozen=True)
class RegionKNNConfig(RegionFeatures):
    k: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")


@register_method("region-knn", description="k-NN (k=1, cosine) over mask-pooled support regions (training-free)")
class RegionKNN(RegionMethod):
    """Cosine k-nearest-neighbour classifier of defect regions."""

    Config = RegionKNNConfig

    @classmethod
    def reads(cls, config: Any) -> set[str]:
        return region_reads(config)

    def fit(self, support: SupportSet) -> None:
        self.embed = RegionEmbedder(self, self.config.weights(), self.config.ring)
        self.x = F.normalize(self.embed(support.regions), dim=1)
        self.y = torch.tensor(support.labels)
        self.n_classes = support.n_classes

    def predict_regions(self, query_paths: Sequence[str], regions: Sequence[Any]) -> np.ndarray:
        sim = F.normalize(self.embed(regions), dim=1) @ self.x.T  # (Q, S)
        top = sim.topk(min(self.config.k, sim.shape[1]), dim=1).indices
        votes = torch.zeros(len(sim), self.n_classes).scatter_add_(1, self.y[top], torch.ones(top.shape))
        best = torch.full((len(sim), self.n_classes), -1.0)
        best = best.scatter_reduce(1, self.y.expand(len(sim), -1), sim, reduce="amax", include_self=True)
        return (votes + 1e-3 * best).numpy()
