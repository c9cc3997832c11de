"""Gaussian detector: Mahalanobis distance to a Ledoit–Wolf Gaussian of pooled pretrained embeddings of augmented
views of the k shots, with no training (docs/tasks.md §A.2, "reference detectors").

The approach of Rippel, Mertens, Merhof, "Modeling the Distribution of Normal Data in Pre-Trained Deep Features for
Anomaly Detection" (ICPR 2020), reduced to the few-shot case as the COFT-AD reconstruction scores
(docs/tasks.md §A.2 item 5):

1. every shot gives ``views`` pictures: itself and ``views − 1`` mild augmentations (crop of 0.85–1 of the area,
   ±10° rotation, brightness/contrast ±10 %; ``bench/features/embed.py``), the same pictures in every job;
2. each picture is embedded by the run's pretrained backbone, whole (EfficientNet-Lite0: its 1280-channel head),
   and pooled over the spatial grid: h (D,) (``pooling`` ``mean`` = global average pooling);
3. a Gaussian is fitted to the k·``views`` embeddings: their mean μ and the Ledoit–Wolf shrunk covariance Σ
   (32 to 256 samples against D = 1280 dimensions: the shrinkage is what makes Σ invertible);
4. the score of a test image is its Mahalanobis distance sqrt((h − μ)ᵀ Σ⁻¹ (h − μ)).

It is the COFT-AD-style detector with its fine-tuning switched off: ``coft-ad --set steps=0`` gives the same scores
(``tests/test_detection.py`` checks it). Embeddings of the views and of the test images are cached per image
content (``features/<key>-pooled-<pooling>/``, D floats each), so over k ∈ {1, 2, 4, 8} and five seeds every
picture goes through the network once.

Shapes: views (k·V, 3, 224, 224) → h (k·V, D); test images (N, D) → scores (N,).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from bench.detection.detector import Detector, register_detector
from bench.features.embed import POOLINGS, Embedder, Gaussian, ViewParams, shared_embedder


@dataclass(frozen=True)
class GaussianConfig:
    views: int = 32  # N_A: pictures per shot, the shot itself included (docs/tasks.md §A.2 item 5)
    pooling: str = "mean"  # mean (global average pooling) | max | meanmax
    crop_scale: float = 0.85
    rotate_deg: float = 10.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.views < 1:
            raise ValueError(f"views must be ≥ 1, got {self.views}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        ViewParams(self.crop_scale, self.rotate_deg, self.jitter)

    def view_params(self, category: str) -> ViewParams:
        return ViewParams(self.crop_scale, self.rotate_deg, self.jitter).for_category(category)


@register_detector("gaussian", description="Mahalanobis distance to a Ledoit-Wolf Gaussian of pooled features of augmented shots")
class GaussianDetector(Detector):
    """Ledoit–Wolf Gaussian of pooled pretrained embeddings of augmented shots; score = Mahalanobis distance."""

    Config = GaussianConfig
    config: GaussianConfig

    def embedder(self) -> Embedder:
        ctx = self.ctx
        return shared_embedder(ctx.features.config, ctx.device, ctx.cache_root, 0, self.config.pooling)

    def fit(self, normal_paths: Sequence[str]) -> None:
        cfg = self.config
        emb = self.embedder()
        self.stats0 = dict(emb.stats)
        with self.ctx.timer("embed_shots"):
            v = emb.pooled(emb.view_items(list(normal_paths), cfg.views, cfg.view_params(self.ctx.category)))
        if len(v) < 2:  # one shot and one view: no covariance; the views of the image would be needed
            raise ValueError("the Gaussian needs at least 2 embeddings: use views ≥ 2 (a single shot is one picture)")
        self.gaussian = Gaussian().fit(v)
        self.n_fit = len(v)

    def score(self, paths: Sequence[str]) -> np.ndarray:
        emb = self.embedder()
        with self.ctx.timer("embed_test"):
            h = emb.pooled(emb.image_items(list(paths)))
        return self.gaussian.score(h).astype(np.float32)

    def extra_info(self) -> dict[str, Any]:
        return {"embedding": self.embedder().record(), "n_fit": self.n_fit, "shrinkage": round(self.gaussian.shrinkage, 5),
                "embed_cache": self.embedder().stats_since(self.stats0)}  # fmt: skip
