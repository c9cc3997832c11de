"""Multi-view region prototypes: MVREC's multi-view idea with our backbones (training-free).

Lyu et al., "MVREC: A General Few-shot Defect Classification Model Using Multi-View Region-Context", AAAI 2025
(``../shared/docs/field-protocols.md`` §1): a region is seen in several crops of its context and the views'
embeddings are combined. Here: the whole image (the ``region-protonet`` embedding) plus square crops centred on the
region's box at ``views`` × its longer side (at least a quarter of the image), cut from the source image at full
resolution so that a small defect spans several cells of the grid (§3: 0.2 %-of-the-image defects are under one
cell at 224 px); each crop's raw features are pooled inside the region's mask cut the same way
(:class:`bench.methods._region.RegionEmbedder`); the region's embedding is the whole-image view's beside the mean of
the crops' L2-normalised embeddings; classes are scored by cosine to their prototypes. MVREC uses AlphaCLIP ViT-L/14 (not available offline):
this is the idea, not a reproduction.

Shapes: whole image (N, E), crops (N, E') averaged over views → (N, E + E'); prototypes (C, E + E'); scores (Q, C).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.method import register_method
from bench.methods.region_protonet import RegionProtoConfig, RegionProtoNet


@dataclass(frozen=True)
class RegionMultiViewConfig(RegionProtoConfig):
    views: tuple[float, ...] = (1.5, 3.0)  # crop sides, in multiples of the region's box

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.views or any(v <= 0 for v in self.views):
            raise ValueError(f"views must be positive box multiples, got {self.views}")


@register_method("region-multiview", description="prototypes over multi-view crops around each region (MVREC's idea)")
class RegionMultiView(RegionProtoNet):
    """Training-free multi-view prototype classifier of defect regions: ``region-protonet`` whose embedding adds the
    crops of :attr:`RegionMultiViewConfig.views` (:meth:`bench.methods._region.PooledRegionMethod.embedder`)."""

    Config = RegionMultiViewConfig
