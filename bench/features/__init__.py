"""The PatchCore pipeline: backbone features, memory banks and residuals, all cached on disk.

Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022; the paper's use of it is in
docs/method-notes.md §4::

    from bench.features import FeatureConfig, FeatureStore
    store = FeatureStore(FeatureConfig(backbone="resnet18", weights="random"))
    feats = store.patch_features(paths)                  # (N, D, 28, 28)
    res = store.residuals(paths, store.bank(train_paths, seed=1, coreset_ratio=0.1))

Modules: :mod:`~bench.features.store` (the cache and data flow), :mod:`~bench.features.extractor` (FeatureConfig,
the network), :mod:`~bench.features.backbones` (timm models and weights), :mod:`~bench.features.coreset`,
:mod:`~bench.features.knn` (the faiss bank), :mod:`~bench.features.detect` (PatchCore image AUROC) and
:mod:`~bench.features.embed` (pooled embeddings of augmented views and the Gaussian score the detectors share).
"""

from bench.features.extractor import (
    FEATURE_VERSION, FeatureConfig, PatchCoreExtractor, build_extractor, from_patches, to_patches,
)  # fmt: skip
from bench.features.knn import MemoryBank
from bench.features.store import FeatureStore

__all__ = [
    "FEATURE_VERSION", "FeatureConfig", "FeatureStore", "MemoryBank", "PatchCoreExtractor", "build_extractor",
    "from_patches", "to_patches",
]  # fmt: skip
