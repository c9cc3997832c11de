"""k-means on pooled PatchCore features or residuals: the cheapest learned-nothing discovery baseline (docs/tasks.md,
"Anomaly class discovery": the cheap methods a leaderboard needs).

Each image is the spatial mean of its (D, h, w) PatchCore feature grid (``features="raw"``) or of its residuals
f − NN_bank(f) (``features="residual"``, the classification paper's Eq. 2: what the category's normal images do not
explain), L2-normalised; k-means (scikit-learn, k-means++, ``n_init`` restarts, seeded from the run seed's
``method/kmeans`` stream) groups the N vectors into K clusters. The whole image is pooled, so a small defect weighs
little against the part's normal appearance: Anomaly Clustering and the crop-based methods address exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bench.discovery.contract import Discoverer, DiscoverySet, register_discoverer


@dataclass(frozen=True)
class KMeansConfig:
    features: str = "raw"  # "raw" | "residual"
    n_init: int = 10
    normalise: bool = True

    def __post_init__(self) -> None:
        if self.features not in ("raw", "residual"):
            raise ValueError(f"features must be 'raw' or 'residual', got {self.features!r}")
        if self.n_init < 1:
            raise ValueError(f"n_init must be at least 1, got {self.n_init}")


def kmeans(x: np.ndarray, k: int, seed: int, n_init: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """k-means++ with ``n_init`` restarts: (labels (N,), centres (k, D)). ``seed`` drives every random choice."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(x)
    return km.labels_.astype(np.int64), km.cluster_centers_


@register_discoverer("kmeans", description="k-means on pooled PatchCore features")
@register_discoverer("kmeans-residual", overrides={"features": "residual"},
                     description="k-means on pooled PatchCore residuals f - NN_bank(f)")  # fmt: skip
class KMeansDiscoverer(Discoverer):
    """k-means on pooled features (module docstring).

    Shapes: features (N, D, h, w) → pooled (N, D) → ids (N,).
    """

    Config = KMeansConfig

    @classmethod
    def reads(cls, config: KMeansConfig) -> set[str]:
        return {"patch", "bank"} if config.features == "residual" else {"patch"}

    def fit_predict(self, data: DiscoverySet) -> np.ndarray:
        store = self.ctx.features
        with self.ctx.timer("features"):
            grid = store.patch_features(data.paths) if self.config.features == "raw" else store.residuals(data.paths, self.ctx.bank())
        x = grid.mean(dim=(2, 3))
        if self.config.normalise:
            x = torch.nn.functional.normalize(x, dim=1)
        seed = int(self.ctx.rng("kmeans").integers(2**31 - 1))
        labels, _ = kmeans(x.numpy().astype(np.float64), data.k, seed, self.config.n_init)
        return labels
