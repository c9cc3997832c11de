"""PatchCore with a memory bank of the k shots' patches: the cheap few-shot baseline (docs/tasks.md §A.2).

PatchCore: Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022, fitted on k normal images
instead of the whole ``train/good`` (the k-shot setting of its §4.4 and of later few-shot papers). The run's
PatchCore features (:class:`bench.features.FeatureStore`: the backbone's stages at strides 8 and 16, 3 × 3
neighbourhoods, D = 152 for EfficientNet-Lite0, a 28 × 28 grid at 224 px; docs/method-notes.md §4):

1. the memory bank is every patch of the k shots, (k·784, D): no coreset (``coreset_ratio`` = 1.0; the bank of 8
   shots is 6,272 vectors, small enough to search exactly); a ratio below 1 thins it with the harness's greedy
   coreset (banks of at most 1,000 patches, i.e. one shot, are always kept whole);
2. a test image's anomaly map is the Euclidean distance of each of its patches to the nearest bank vector:
   (28, 28); its score is the map's maximum (the reference's image score; no re-weighting, no smoothing).

The maps are the input of the discovery task (``bench maps`` writes them as PNG files, docs/tasks.md §B.1). Patch
features are computed once per image and shared with every other job and method (the feature cache), the bank once
per draw, the nearest-neighbour search once per (image, bank) (cached on disk).

Shapes: shots (k, D, 28, 28) → bank (k·784, D); test (N, D, 28, 28) → maps (N, 28, 28) → scores (N,).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from bench.detection.detector import Detector, register_detector
from bench.features.knn import MemoryBank


@dataclass(frozen=True)
class PatchCoreKShotConfig:
    coreset_ratio: float = 1.0  # 1.0 = every patch of the k shots (no coreset)

    def __post_init__(self) -> None:
        if not 0 < self.coreset_ratio <= 1:
            raise ValueError(f"coreset_ratio must lie in (0, 1], got {self.coreset_ratio}")


@register_detector("patchcore-kshot", description="PatchCore, memory bank of the k shots' patches; score = max patch distance")
class PatchCoreKShot(Detector):
    """PatchCore on the k shots: nearest-patch distances to a bank of their patches; image score = max."""

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
        m = self.anomaly_maps(paths)
        return m.reshape(len(m), -1).max(1) if len(m) else np.zeros(0, np.float32)

    def extra_info(self) -> dict[str, Any]:
        return {"bank_size": len(self.bank), "bank_key": self.bank.key, "coreset_ratio": self.config.coreset_ratio}
