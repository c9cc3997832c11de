"""Anomaly Clustering (Sohn, Yoon, Li, Lee, Pfister, "Anomaly Clustering: Grouping Images into Coherent Clusters of
Anomaly Types", WACV 2023), as docs/tasks.md ("Anomaly class discovery") summarises it: an image is a bag of patch
embeddings, and the anomalous patches should decide which cluster it joins.

1. Patch embeddings z_p: the PatchCore patch features (D, h, w) of each image, average-pooled to a ``grid`` × ``grid``
   grid (P = grid² patches).
2. Patch weights α_p = softmax_p(d_p / τ) over the patches of one image, where d_p is how anomalous patch p looks:
   * ``weighting="unsupervised"``: the mean, over every other image j of the set, of the distance from z_p to its
     nearest patch of j (a patch that has a close match in most other images is normal);
   * ``weighting="semi"`` (the paper's semi-supervised setting): the distance from z_p to its nearest vector of the
     category's PatchCore memory bank of normal images (the PatchCore anomaly map, pooled to the grid).
   d is standardised over all patches of the set first (z-scores), so τ does not depend on the feature scale
   [our choice; the paper tunes τ on its features].
3. The image vector is the weighted mean Σ_p α_p z_p; Ward agglomerative clustering (scikit-learn) groups the N
   vectors into K clusters (deterministic: no seed involved).

Cost: the unsupervised weights compare every patch with every patch of every other image: N² · P² · D
multiply-adds (MTD, N = 582, P = 196, D = 152: about 2·10¹² multiply-adds, a minute or two on two cores), hence
the default ``grid`` = 14 rather than the features' native 28 (16 × cheaper; ``max_refs`` caps the images compared
with, seeded, for larger sets). AnomalyNCD's README reports this method's MVTec AD and MTD figures (``--compare``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.discovery.contract import Discoverer, DiscoverySet, register_discoverer


SCORES_VERSION = 1
"""Bump when :func:`nearest_patch_scores` changes what it computes: part of the key of the cached scores."""


@dataclass(frozen=True)
class AnomalyClusteringConfig:
    weighting: str = "unsupervised"  # "unsupervised" | "semi"
    grid: int = 14  # patch grid after average pooling (the features' own is 28 for a 224 input)
    tau: float = 1.0  # softmax temperature on standardised anomaly scores
    max_refs: int = 0  # unsupervised: compare each image with at most this many others (0 = all)

    def __post_init__(self) -> None:
        if self.weighting not in ("unsupervised", "semi"):
            raise ValueError(f"weighting must be 'unsupervised' or 'semi', got {self.weighting!r}")
        if self.grid < 1 or self.tau <= 0 or self.max_refs < 0:
            raise ValueError("grid must be ≥ 1, tau > 0 and max_refs ≥ 0")


def nearest_patch_scores(z: torch.Tensor, max_refs: int = 0, rng: np.random.Generator | None = None) -> torch.Tensor:
    """Unsupervised patch scores: for every patch, the mean over the other images of its distance to their nearest
    patch.

    Args:
        z: (N, P, D) patch embeddings.
        max_refs: compare with at most this many other images (0 = all), drawn with ``rng``.

    Returns:
        (N, P) float32 scores.
    """
    n, p, _ = z.shape
    chunk = max(1, int(2e7 // (p * n * p)))  # images per block: the (chunk·P, N·P) distances stay under ~80 MB
    flat = z.reshape(n * p, -1)
    sq = (flat * flat).sum(1)
    out = torch.empty(n, p)
    for s in range(0, n, chunk):
        q = z[s : s + chunk].reshape(-1, z.shape[2])  # (c·P, D)
        d2 = (q * q).sum(1)[:, None] + sq[None, :] - 2.0 * q @ flat.T  # (c·P, N·P)
        nearest = d2.clamp_min(0).reshape(len(q), n, p).amin(2).sqrt().reshape(-1, p, n)  # (c, P, N)
        for i in range(nearest.shape[0]):
            others = np.delete(np.arange(n), s + i)
            if max_refs and len(others) > max_refs:
                others = np.sort(rng.choice(others, size=max_refs, replace=False)) if rng is not None else others[:max_refs]
            out[s + i] = nearest[i][:, torch.from_numpy(others)].mean(1)
    return out


def weighted_embeddings(z: torch.Tensor, scores: torch.Tensor, tau: float) -> torch.Tensor:
    """Σ_p α_p z_p with α = softmax over each image's patches of (standardised score / τ). (N, P, D), (N, P) → (N, D)."""
    s = (scores - scores.mean()) / scores.std().clamp_min(1e-12)
    alpha = torch.softmax(s / tau, dim=1)
    return (alpha[:, :, None] * z).sum(1)


@register_discoverer("anomaly-clustering", description="Anomaly Clustering (Sohn et al. 2023), unsupervised weights, Ward")
@register_discoverer("anomaly-clustering-semi", overrides={"weighting": "semi"},
                     description="Anomaly Clustering, semi-supervised weights (distance to the normal bank), Ward")  # fmt: skip
class AnomalyClustering(Discoverer):
    """Anomaly Clustering (Sohn et al., WACV 2023; module docstring).

    Shapes: features (N, D, 28, 28) → pooled z (N, P, D) → scores (N, P) → weights α (N, P) → vectors (N, D) → ids (N,).
    """

    Config = AnomalyClusteringConfig
    scores_from_cache: bool | None = None

    @classmethod
    def reads(cls, config: AnomalyClusteringConfig) -> set[str]:
        return {"patch", "bank"} if config.weighting == "semi" else {"patch"}

    def fit_predict(self, data: DiscoverySet) -> np.ndarray:
        from sklearn.cluster import AgglomerativeClustering

        g = self.config.grid
        with self.ctx.timer("features"):
            feats = self.ctx.features.patch_features(data.paths)  # (N, D, h, w)
        z = F.adaptive_avg_pool2d(feats.contiguous(), g).flatten(2).transpose(1, 2).contiguous()  # (N, P, D)
        with self.ctx.timer("weights"):
            if self.config.weighting == "semi":
                maps = torch.from_numpy(self.ctx.features.anomaly_maps(data.paths, self.ctx.bank()))  # (N, h, w)
                scores = F.adaptive_avg_pool2d(maps[:, None], g).flatten(1)
            else:
                scores = self._unsupervised_scores(data, z)
        v = weighted_embeddings(z, scores, self.config.tau)
        return AgglomerativeClustering(n_clusters=data.k, linkage="ward").fit_predict(v.numpy().astype(np.float64))

    def _unsupervised_scores(self, data: DiscoverySet, z: torch.Tensor) -> torch.Tensor:
        """:func:`nearest_patch_scores` of the set, computed once for every seed: they depend on the set's images, the
        features and the grid, and on the seed only through ``max_refs``'s draw. So with every image compared
        (``max_refs`` 0, or at least N − 1) they are cached on disk by those (``features/<key>-anomaly-clustering-<grid>/``,
        N·P floats) and read back by the other seeds' jobs, bit for bit what they would compute (issue #23: MTD took
        281 s and 312 s per seed for one answer)."""
        from bench.cache import file_sha256, hash_memo_dir, load_npy, save_npy, stable_hash

        n, p, _ = z.shape
        if 0 < self.config.max_refs < n - 1:  # a seeded subset of references: the seed's own scores
            self.scores_from_cache = None
            return nearest_patch_scores(z, self.config.max_refs, self.ctx.rng("anomaly-clustering"))
        store = self.ctx.features
        memo = hash_memo_dir(store.cache.root)
        name = stable_hash({"v": SCORES_VERSION, "images": [file_sha256(x, memo) for x in data.paths], "grid": self.config.grid})
        path = store.cache.path("features", f"{store.key}-anomaly-clustering-{self.config.grid}", name)
        cached = load_npy(path, (n, p), np.float32)
        self.scores_from_cache = cached is not None
        if cached is not None:
            return torch.from_numpy(cached)
        scores = nearest_patch_scores(z)
        save_npy(path, scores.numpy().astype(np.float32, copy=False))
        return scores

    def extra_info(self) -> dict[str, Any]:
        return {"scores_from_cache": self.scores_from_cache}
