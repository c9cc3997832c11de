"""MEBin crops + k-means on mask-pooled crop features + region merging: AnomalyNCD's pipeline with its learned part
(the mask-guided representation learning) replaced by a frozen backbone, the training-free ablation of AnomalyNCD
(Huang et al., CVPR 2025); and the same on ground-truth masks, an oracle row (docs/tasks.md, "Anomaly class
discovery").

1. Masks: MEBin on the set's anomaly maps (``masks="mebin"``; :mod:`bench.discovery.mebin`), or the ground-truth
   masks (``masks="gt"``, registered as ``oracle-mask-kmeans``): with perfect masks, what is left is the
   representation's error; the gap to ``mebin-kmeans`` is the detector's. Under protocol ``ncd`` the oracle is handed
   ``good``: a good image's mask is empty, so every good image gets the same vector (step 3) and one cluster holds
   them all; its row is reported on the defect images only (``defects_only``, :mod:`bench.metrics.discovery`), marked
   and not ranked (:mod:`bench.report.discovery`; docs/tasks.md, "Oracle rows under ncd").
2. Crops: anomaly-centred square crops of every image (:func:`bench.discovery.crops.set_crops`; at most MEBin's
   estimated count + 1 per image, the whole image when the mask is empty), cut from the source image at full
   resolution and resized to the extractor's input.
3. Crop vectors: the PatchCore patch features of each crop (the run's backbone, cached per crop), averaged over the
   crop's mask (its fraction in each feature cell as weights) and L2-normalised. A crop without mask pixels (a normal
   image, or MEBin found nothing) gets the zero vector: the analogue of AnomalyNCD's mask-guided ViT, whose class
   token then attends to itself only, so all such crops share one representation (``empty="mean"`` pools the
   whole crop instead).
4. k-means (K clusters, seeded) on the crop vectors; each crop's soft assignment is softmax(−‖x − c_k‖² / 0.2), which
   for unit vectors and centres is AnomalyNCD's softmax(cosine / 0.1) and stays defined for the zero vector.
5. Region merging (:func:`bench.discovery.crops.merge_regions`): an image's scores are its crops' weighted by
   softmax(√(mask area in source pixels) / T), T = 100 on MVTec AD, 50 elsewhere; label = argmax.

Shapes: crops C → features (C, D, h, w) → vectors (C, D) → probabilities (C, K) → image ids (N,).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.cache import file_sha256, hash_memo_dir, stable_hash
from bench.discovery.contract import Discoverer, DiscoverySet, register_discoverer
from bench.discovery.crops import CropImages, area_temperature, crop_masks, merge_regions, set_crops
from bench.discovery.mebin import RANGE_LOWS
from bench.discoverers.kmeans import kmeans

CROP_FEATURES_VERSION = 1


@dataclass(frozen=True)
class MebinKMeansConfig:
    masks: str = "mebin"  # "mebin" (anomaly maps) | "gt" (ground-truth masks: oracle)
    keep_extra: bool = True  # the reference's est_num + 1 crops
    range_low: str = "set"  # MEBin's search range: "set" (reference) | "zero"
    empty: str = "zero"  # a crop without mask pixels: "zero" vector | "mean" of the whole crop
    n_init: int = 10
    area_temperature: float = 0.0  # T of region merging; 0 = the reference's (100 on MVTec AD, 50 elsewhere)

    def __post_init__(self) -> None:
        if self.masks not in ("mebin", "gt"):
            raise ValueError(f"masks must be 'mebin' or 'gt', got {self.masks!r}")
        if self.range_low not in RANGE_LOWS:
            raise ValueError(f"range_low must be one of {', '.join(RANGE_LOWS)}, got {self.range_low!r}")
        if self.empty not in ("zero", "mean"):
            raise ValueError(f"empty must be 'zero' or 'mean', got {self.empty!r}")
        if self.area_temperature < 0:
            raise ValueError("area_temperature must be ≥ 0 (0 = the reference's)")


def crop_vectors(ctx: Any, data: DiscoverySet, crops: list, empty: str = "zero") -> torch.Tensor:
    """Mask-pooled PatchCore features of the crops: (C, D), L2-normalised (zero for an empty mask with
    ``empty="zero"``). Crop features are cached by (image bytes, box, input size) in the feature store."""
    store = ctx.features
    side = store.config.crop
    memo = hash_memo_dir(ctx.cache_root)
    digests = {i: file_sha256(p, memo) for i, p in enumerate(data.paths)}
    keys = [stable_hash(["discovery-crop", CROP_FEATURES_VERSION, digests[c.image], [round(v, 3) for v in c.box],
                         data.frame.fit, data.frame.side, side], 40) for c in crops]  # fmt: skip
    with ctx.timer("crop_features"):
        feats = store.patch_features_arrays(CropImages(data, crops, side), keys)  # (C, D, h, w)
    masks = torch.from_numpy(crop_masks(crops, side))[:, None]  # (C, 1, side, side)
    w = F.adaptive_avg_pool2d(masks, feats.shape[-2:])  # mask fraction per feature cell
    total = w.sum(dim=(1, 2, 3))
    pooled = (feats * w).sum(dim=(2, 3)) / total.clamp_min(1e-12)[:, None]
    if empty == "mean":
        pooled[total == 0] = feats[total == 0].mean(dim=(2, 3))
    else:
        pooled[total == 0] = 0.0
    return F.normalize(pooled, dim=1)


@register_discoverer("mebin-kmeans", description="MEBin crops + k-means on mask-pooled crop features + region merging")
@register_discoverer("oracle-mask-kmeans", overrides={"masks": "gt"},
                     description="oracle: ground-truth-mask crops + k-means on mask-pooled features + region merging")  # fmt: skip
class MebinKMeans(Discoverer):
    """AnomalyNCD's crops and region merging around a frozen backbone and k-means (module docstring)."""

    Config = MebinKMeansConfig

    @classmethod
    def reads(cls, config: MebinKMeansConfig) -> set[str]:
        return {"gt_masks"} if config.masks == "gt" else {"maps", "bank"}

    def fit_predict(self, data: DiscoverySet) -> np.ndarray:
        with self.ctx.timer("crops"):
            crops, self.crop_info = set_crops(data, self.config.masks, self.config.keep_extra, self.config.range_low)
        x = crop_vectors(self.ctx, data, crops, self.config.empty).numpy().astype(np.float64)
        k = min(data.k, len(crops))
        seed = int(self.ctx.rng("kmeans").integers(2**31 - 1))
        _, centres = kmeans(x, k, seed, self.config.n_init)
        d2 = ((x[:, None, :] - centres[None]) ** 2).sum(-1)  # (C, K)
        z = -d2 / 0.2
        probs = np.exp(z - z.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        t = self.config.area_temperature or area_temperature(data.dataset)
        self.crop_info["area_temperature"] = t
        return merge_regions(probs, crops, len(data), t)

    def extra_info(self) -> dict[str, Any]:
        return {"crops": getattr(self, "crop_info", None)}
