"""PatchCore with a memory bank of the k shots' patches: the cheap few-shot baseline (docs/tasks.md §A.2).

PatchCore: Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022, fitted on k normal images
instead of the whole ``train/good`` (the k-shot setting of its §4.4 and of later few-shot papers). The run's
PatchCore features (:class:`bench.features.FeatureStore`: the backbone's stages at strides 8 and 16, 3 × 3
neighbourhoods, D = 152 for EfficientNet-Lite0, a 28 × 28 grid at 224 px; docs/method-notes.md §4):

1. the memory bank is every patch of the k shots, (k·784, D): no coreset (``coreset_ratio`` = 1.0; the bank of 8
   shots is 6,272 vectors, small enough to search exactly); a ratio below 1 thins it with the harness's greedy
   coreset (banks of at most 1,000 patches, i.e. one shot, are always kept whole);
2. a test image's anomaly map is the Euclidean distance of each of its patches to the nearest bank vector:
   (28, 28); its score is the map's maximum (the reference's image score; no re-weighting, no smoothing), or with
   ``top_fraction`` f > 0 the mean of its ⌊f·n⌋ highest of n patch distances (the maximum when that is 0), as
   AnomalyDINO scores an image (f = 0.01, the variant ``anomalydino`` below): a mean over the few worst patches is
   less at the mercy of one noisy patch than the maximum.

``anomalydino``: AnomalyDINO (Damm, Laszkiewicz, Lederer, Fischer, "AnomalyDINO: Boosting Patch-based Few-shot
Anomaly Detection with DINOv2", WACV 2025) is this detector (the k shots' patches as the memory bank, nearest-patch
distances) with the top-1 % image score. The real one runs on DINOv2 ViT-S/14 weights, which need internet (timm's
hub): ``--backbone vit_small_patch14_dinov2.lvd142m --weights imagenet`` (a ViT's patch tokens as the grid,
:func:`bench.features.backbones.token_backbone`), and ``--layers blocks.11`` for its last-block features. Other
differences remain: it compares raw patch tokens by cosine distance (here PatchCore's 3 × 3 aggregated features by
Euclidean distance), masks the background of some categories and augments the shots with rotations. On another
backbone (the default Lite0) the variant is the top-1 % score on PatchCore, not AnomalyDINO's figures.

The maps are the input of the discovery task (``bench maps`` writes them as PNG files, docs/tasks.md §B.1). Patch
features are computed once per image and shared with every other job and method (the feature cache), the bank once
per draw, the nearest-neighbour search once per (image, bank) (cached on disk).

Shapes: shots (k, D, 28, 28) → bank (k·784, D); test (N, D, 28, 28) → maps (N, 28, 28) → scores (N,).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from bench.detection.detector import Detector, register_detector
from bench.features.knn import MemoryBank


@dataclass(frozen=True)
class PatchCoreKShotConfig:
    coreset_ratio: float = 1.0  # 1.0 = every patch of the k shots (no coreset)
    top_fraction: float = 0.0  # image score: 0 = the map's maximum; f in (0, 1]: mean of the ⌊f·n⌋ highest patches

    KEYED_WHEN_SET: ClassVar[tuple[str, ...]] = ("top_fraction",)  # added later: job keys of max-score runs unchanged

    def __post_init__(self) -> None:
        if not 0 < self.coreset_ratio <= 1:
            raise ValueError(f"coreset_ratio must lie in (0, 1], got {self.coreset_ratio}")
        if not (math.isfinite(self.top_fraction) and 0 <= self.top_fraction <= 1):
            raise ValueError(
                f"top_fraction must lie in [0, 1] (0 = the maximum; AnomalyDINO: 0.01), got {self.top_fraction}"
            )


def top_fraction_score(maps: np.ndarray, fraction: float) -> np.ndarray:
    """Image scores of (N, h, w) anomaly maps: the mean of each map's ⌊fraction·n⌋ highest of its n values, the
    maximum when that count is 0 (``fraction`` 0, or a map of fewer than 1 / fraction patches): AnomalyDINO's
    ``mean_top1p`` for fraction 0.01 (its ``src/post_eval.py``)."""
    flat = maps.reshape(len(maps), -1)
    k = int(flat.shape[1] * fraction)
    if k == 0 or not len(flat):
        return flat.max(1) if len(flat) else np.zeros(0, np.float32)
    return np.sort(flat, axis=1)[:, -k:].mean(1).astype(flat.dtype, copy=False)


@register_detector("patchcore-kshot", description="PatchCore, memory bank of the k shots' patches; score = max patch distance")
@register_detector("anomalydino", overrides={"top_fraction": 0.01},
                   description="AnomalyDINO's score (Damm et al., WACV 2025): patchcore-kshot, image score = mean of "
                               "the top 1 % patch distances; with --backbone vit_small_patch14_dinov2.lvd142m")  # fmt: skip
class PatchCoreKShot(Detector):
    """PatchCore on the k shots: nearest-patch distances to a bank of their patches; image score = max (or the mean
    of the top ``top_fraction`` of the patches: ``anomalydino``)."""

    Config = PatchCoreKShotConfig
    config: PatchCoreKShotConfig
    has_maps = True

    @classmethod
    def reads(cls, config: Any) -> set[str]:
        return {"patch"}

    def fit(self, normal_paths: Sequence[str]) -> None:
        with self.ctx.timer("bank"):
            self.bank: MemoryBank = self.ctx.features.bank(list(normal_paths), seed=self.ctx.seed,
                                                           coreset_ratio=self.config.coreset_ratio)  # fmt: skip
        self._maps: tuple[tuple[str, ...], np.ndarray] | None = None

    def anomaly_maps(self, paths: Sequence[str]) -> np.ndarray:
        key = tuple(str(p) for p in paths)
        if self._maps is None or self._maps[0] != key:  # score() after anomaly_maps() reuses them
            self._maps = (key, self.ctx.features.anomaly_maps(list(key), self.bank))
        return self._maps[1]

    def score(self, paths: Sequence[str]) -> np.ndarray:
        return top_fraction_score(self.anomaly_maps(paths), self.config.top_fraction)

    def extra_info(self) -> dict[str, Any]:
        return {"bank_size": len(self.bank), "bank_key": self.bank.key, "coreset_ratio": self.config.coreset_ratio}
