"""Region prototypes: the nearest class mean of mask-pooled region embeddings (training-free).

Snell et al., "Prototypical Networks for Few-shot Learning", NeurIPS 2017, on regions instead of images: each
support and query region is embedded from the features pooled inside its mask, in a context ring and from the whole
image's residual (:mod:`bench.methods._region`); a class prototype is the mean of its n support embeddings; a query
region scores the cosine similarity to each prototype. The region-level analogue of ``protonet`` / ``protonet-residual``
(``../shared/docs/field-protocols.md`` §3: "features pooled inside the mask (and a context ring)").

Shapes: support regions (C·n,) → embeddings (C·n, E) → prototypes (C, E); queries (Q,) → scores (Q, C).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch.nn.functional as F

from bench.method import SupportSet, register_method
from bench.methods._region import PooledRegionMethod, RegionFeatures, class_prototypes


@dataclass(frozen=True)
class RegionProtoConfig(RegionFeatures):
    pass


@register_method("region-protonet", description="nearest class mean of mask-pooled region features (training-free)")
@register_method("region-protonet-inside", overrides={"inside_residual": 0.0, "context": 0.0, "image": 0.0},
                 description="nearest class mean of raw features pooled inside the mask only (training-free)")
class RegionProtoNet(PooledRegionMethod):
    """Training-free nearest-prototype classifier of defect regions."""

    Config = RegionProtoConfig

    def fit(self, support: SupportSet) -> None:
        self.embed = self.embedder()
        self.prototypes = class_prototypes(self.embed(support.regions), support.labels, support.n_classes)

    def predict_regions(self, query_paths: Sequence[str], regions: Sequence[Any]) -> np.ndarray:
        return (F.normalize(self.embed(regions), dim=1) @ self.prototypes.T).numpy()
