"""Prototypical baseline: nearest class mean of pooled PatchCore features (no training).

Snell et al., "Prototypical Networks for Few-shot Learning", NeurIPS 2017, used here training-free as in
easyfsl's ``PrototypicalNetworks`` on a frozen backbone: each image is the spatial mean (or max) of its
(D, 28, 28) PatchCore feature grid; a class prototype is the mean of its n support vectors; a query gets
the negative squared Euclidean distance (or the cosine similarity) to each prototype as its score.

``features="raw"`` pools the PatchCore patch features f; ``features="residual"`` pools the residuals
f − NN_bank(f) (paper Eq. 2), which remove what normal images of the category already explain. This baseline
shows how much the learned classifiers add on top of the features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from bench.method import Method, SupportSet, register_method


@dataclass(frozen=True)
class ProtoNetConfig:
    features: str = "raw"  # "raw" | "residual"
    pool: str = "mean"  # "mean" | "max"
    distance: str = "euclidean"  # "euclidean" | "cosine"

    def __post_init__(self) -> None:
        if self.features not in ("raw", "residual"):
            raise ValueError(f"features must be 'raw' or 'residual', got {self.features!r}")
        if self.pool not in ("mean", "max"):
            raise ValueError(f"pool must be 'mean' or 'max', got {self.pool!r}")
        if self.distance not in ("euclidean", "cosine"):
            raise ValueError(f"distance must be 'euclidean' or 'cosine', got {self.distance!r}")


def pooled_features(method: Method, paths: Sequence[str], kind: str, pool: str) -> torch.Tensor:
    """(N, D) spatially pooled raw or residual PatchCore features (cached by the feature store)."""
    store = method.ctx.features
    with method.ctx.timer("features"):
        grid = store.patch_features(paths) if kind == "raw" else store.residuals(paths, method.ctx.bank())
    return grid.mean(dim=(2, 3)) if pool == "mean" else grid.amax(dim=(2, 3))


@register_method("protonet", description="nearest class mean of pooled PatchCore features (training-free)")
@register_method(
    "protonet-residual",
    overrides={"features": "residual"},
    description="nearest class mean of pooled PatchCore residuals f - NN(f) (training-free)",
)
class ProtoNet(Method):
    """Training-free nearest-prototype classifier."""

    Config = ProtoNetConfig

    def _embed(self, paths: Sequence[str]) -> torch.Tensor:
        x = pooled_features(self, paths, self.config.features, self.config.pool)
        return torch.nn.functional.normalize(x, dim=1) if self.config.distance == "cosine" else x

    def fit(self, support: SupportSet) -> None:
        x = self._embed(support.paths)
        y = torch.tensor(support.labels)
        self.prototypes = torch.stack([x[y == c].mean(0) for c in range(support.n_classes)])  # (C, D)

    def predict(self, query_paths: Sequence[str]) -> np.ndarray:
        q = self._embed(query_paths)  # (Q, D)
        if self.config.distance == "cosine":
            return (q @ torch.nn.functional.normalize(self.prototypes, dim=1).T).numpy()
        return (-torch.cdist(q, self.prototypes) ** 2).numpy()
