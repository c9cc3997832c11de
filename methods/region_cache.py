"""Region cache classifier: a Tip-Adapter-like key–value cache over the support regions (training-free).

Zhang et al., "Tip-Adapter: Training-free Adaption of CLIP for Few-shot Classification", ECCV 2022; MVREC's
training-free variant is such a cache over support embeddings ("Zip-Adapter", ``../shared/docs/field-protocols.md``
§1). Keys are the L2-normalised support region embeddings K (S, E), values their one-hot labels L (S, C). A query
q scores ``exp(-β (1 - q·Kᵀ)) L`` (the cache's affinity-weighted votes) plus ``α`` × its cosine to each class
prototype, the stand-in for Tip-Adapter's zero-shot CLIP logits (no text encoder here). [design] β = 5 and α = 1 by
default (Tip-Adapter's search ranges hold them; no validation set exists in a few-shot episode to tune them on).

Shapes: keys (S, E), values (S, C); queries (Q, E) → affinities (Q, S) → scores (Q, C).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bench.method import SupportSet, register_method
from bench.methods._region import PooledRegionMethod, RegionFeatures, class_prototypes


@dataclass(frozen=True)
class RegionCacheConfig(RegionFeatures):
    beta: float = 5.0  # sharpness of the cache's affinities
    alpha: float = 1.0  # weight of the prototype term

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta <= 0 or self.alpha < 0:
            raise ValueError(f"beta must be > 0 and alpha >= 0, got beta={self.beta}, alpha={self.alpha}")


@register_method("region-cache", description="Tip-Adapter-like key-value cache over support regions (training-free)")
class RegionCache(PooledRegionMethod):
    """Training-free cache classifier of defect regions."""

    Config = RegionCacheConfig

    def fit(self, support: SupportSet) -> None:
        self.embed = self.embedder()
        self.keys = F.normalize(self.embed(support.regions), dim=1)  # (S, E)
        self.values = F.one_hot(torch.tensor(support.labels), support.n_classes).float()  # (S, C)
        self.prototypes = class_prototypes(self.keys, support.labels, support.n_classes)

    def predict_regions(self, query_paths: Sequence[str], regions: Sequence[Any]) -> np.ndarray:
        q = F.normalize(self.embed(regions), dim=1)
        affinity = torch.exp(-self.config.beta * (1 - q @ self.keys.T))  # (Q, S)
        return (affinity @ self.values + self.config.alpha * (q @ self.prototypes.T)).numpy()
