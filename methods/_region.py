"""What the ``region-*`` methods share: features pooled where the defect is (``../shared/docs/field-protocols.md`` §3).

A region is embedded from up to four parts of the cached PatchCore grids (:class:`bench.features.FeatureStore`),
each L2-normalised, weighted, and concatenated:

* ``inside``: the raw patch features pooled inside the region's mask (:func:`bench.regions.pool_in_mask`: cells
  weighted by the share of the mask they hold; a region smaller than a cell is its centroid's cell);
* ``inside_residual``: the residuals f − NN_bank(f) (paper Eq. 2) pooled inside the mask;
* ``context``: the raw features of a ring of ``ring`` cells around the mask (MVREC's region *context*);
* ``image``: the whole image's mean residual: the evidence of image-level methods, kept beside the region's.
  [design] §3 measured that on a category whose defects cover ~0.2 % of the image, pooling inside the mask lost
  10 points to whole-image residuals (the residual is already a soft localisation); keeping both lets one
  embedding serve large defects (MTD) and small ones (screw).

Weights are the method's options (``inside``, ``inside_residual``, ``context``, ``image``; 0 drops a part, and a
configuration without residual parts needs no memory bank). Masks are brought to the features' frame by the image
fit the features used (:meth:`bench.classification.region_episodes.Region.frame_mask`).

The paper's trained heads (``direct``, ``relationnet*``, ``contrastive*``) are not given masks: they read the whole
28 × 28 grid (the contrastive head and RelationNet flatten it, docs/method-notes.md), so a mask-pooled vector does not
fit them, and on region units they run on the whole images (their rows say localisation ``none``). The trained
head on region vectors is ``region-logreg``.

Multi-view (MVREC's idea, ``views``): besides the whole image (view 1), square crops centred on the region's box,
``s`` times its longer side (at least a quarter of the image), cut from the source image at full resolution, resized
to the network input and pooled inside the region's mask cut the same way; cached under the crop's key like every
feature, raw features only (a zoomed crop's residuals against a bank of unzoomed normal patches would be large
everywhere). The region's embedding is the whole-image view's beside the mean of the crops' (each L2-normalised).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bench.method import RegionMethod
from bench.regions import pool_in_mask, threshold_resampled

if TYPE_CHECKING:
    from bench.discovery.maps import Frame
    from bench.method import Method

PARTS = ("inside", "inside_residual", "context", "image")


def check_weights(weights: dict[str, float], ring: int) -> None:
    if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
        raise ValueError(f"part weights must be >= 0 and not all 0, got {weights}")
    if ring < 1:
        raise ValueError(f"ring must be at least 1 cell, got {ring}")


def frame_of(ctx: Any) -> "Frame":
    """The frame the run's features see an image in (its image fit, input side and resize), from a
    :class:`~bench.method.TaskContext`."""
    from bench.discovery.maps import Frame

    cfg = ctx.feature_config
    if cfg is None:
        return Frame()
    return Frame(fit=cfg.image_fit, side=cfg.crop, resize=cfg.resize)


def _pool(grids: torch.Tensor, masks: Sequence[np.ndarray], ring: int) -> np.ndarray:
    """(N, D) pooled inside each mask (``ring=0``) or in its ring; grids (N, D, h, w)."""
    g = grids.permute(0, 2, 3, 1).numpy()
    return np.stack([pool_in_mask(g[i], m, ring=ring) for i, m in enumerate(masks)]).astype(np.float32)


def region_parts(method: "Method", images: Sequence[str], masks: Sequence[np.ndarray], weights: dict[str, float],
                 ring: int, keys: Sequence[str] | None = None, arrays: Sequence[np.ndarray] | None = None) -> torch.Tensor:
    """(N, ΣD) the weighted concatenation of the L2-normalised parts (module docstring) of N regions.

    ``images`` are files, or with ``arrays`` in-memory uint8 images cached under ``keys`` (the multi-view crops);
    ``masks`` are (side, side) bool masks in the frame of each image as the features see it.
    """
    store = method.ctx.features
    with method.ctx.timer("features"):
        raw = store.patch_features(images) if arrays is None else store.patch_features_arrays(arrays, keys)
        need_res = weights.get("inside_residual", 0) > 0 or weights.get("image", 0) > 0
        res = None
        if need_res:
            bank = method.ctx.bank()
            res = store.residuals(images, bank) if arrays is None else store.residuals_arrays(arrays, keys, bank)
    parts = []
    with method.ctx.timer("pool"):
        if weights.get("inside", 0) > 0:
            parts.append(weights["inside"] * F.normalize(torch.from_numpy(_pool(raw, masks, 0)), dim=1))
        if weights.get("inside_residual", 0) > 0:
            parts.append(weights["inside_residual"] * F.normalize(torch.from_numpy(_pool(res, masks, 0)), dim=1))
        if weights.get("context", 0) > 0:
            parts.append(weights["context"] * F.normalize(torch.from_numpy(_pool(raw, masks, ring)), dim=1))
        if weights.get("image", 0) > 0:
            parts.append(weights["image"] * F.normalize(res.mean(dim=(2, 3)), dim=1))
    return torch.cat(parts, dim=1)


def square_box(mask: np.ndarray, scale: float, min_side: float) -> tuple[float, float, float, float]:
    """A square (left, top, right, bottom) centred on the mask's bounding box, ``scale`` × its longer side (at least
    ``min_side``), in the mask's pixels (not clipped: the crop pads outside the image)."""
    ys, xs = np.nonzero(mask)
    cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
    side = max(min_side, scale * max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1))
    return cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2


def crop_view(image: np.ndarray, mask: np.ndarray, box: tuple[float, float, float, float], side: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``box`` of a source image (uint8 (H, W, 3)) and of its source mask, both resized to ``side`` × ``side``
    (the box may leave the image: the outside is black in the image, empty in the mask)."""
    from PIL import Image

    l, t, r, b = (int(round(v)) for v in box)
    im = Image.fromarray(image).crop((l, t, r, b)).resize((side, side), Image.BILINEAR)
    mk = Image.fromarray(mask.astype(np.uint8) * 255).crop((l, t, r, b)).resize((side, side), Image.BILINEAR)
    return np.asarray(im), threshold_resampled(np.asarray(mk))


class RegionEmbedder:
    """The embedding of regions (:func:`region_parts`) over one or more views (module docstring)."""

    def __init__(self, method: "Method", weights: dict[str, float], ring: int, views: Sequence[float] = ()) -> None:
        self.method, self.weights, self.ring, self.views = method, weights, ring, tuple(views)
        self.frame = frame_of(method.ctx)

    def __call__(self, regions: Sequence[Any]) -> torch.Tensor:
        images = [r.image for r in regions]
        masks = [r.frame_mask(self.frame) for r in regions]
        out = F.normalize(region_parts(self.method, images, masks, self.weights, self.ring), dim=1)
        if not self.views:
            return out
        views = torch.stack([F.normalize(self._view(regions, scale), dim=1) for scale in self.views]).mean(0)
        return torch.cat([out, F.normalize(views, dim=1)], dim=1)

    def _view(self, regions: Sequence[Any], scale: float) -> torch.Tensor:
        """The regions' embeddings in crops of ``scale`` × the region's box: raw features only (``inside`` and
        ``context``), since a zoomed crop's residuals against a bank of unzoomed normal patches would be large
        everywhere. The crop goes through the run's image fit like any image, and so does its mask."""
        from bench.images import load_rgb

        arrays, masks, keys = [], [], []
        for r in regions:
            src = r.mask() if r.frame_array is None else _frame_to_source(r, self.frame)
            img = np.asarray(load_rgb(r.image))
            box = square_box(src, scale, min_side=max(img.shape[:2]) / 4)
            a, m = crop_view(img, src, box, self.frame.resize)
            arrays.append(a)
            masks.append(_in_frame(m, self.frame))
            keys.append(f"{r.key}|view{scale:g}|{','.join(f'{v:.1f}' for v in box)}")
        raw_only = {k: v for k, v in self.weights.items() if k in ("inside", "context")}
        if not any(v > 0 for v in raw_only.values()):
            raw_only = {"inside": 1.0}
        return region_parts(self.method, [r.image for r in regions], masks, raw_only, self.ring, keys=keys, arrays=arrays)


def _in_frame(mask: np.ndarray, frame: "Frame") -> np.ndarray:
    """A source-resolution bool mask in the frame; a region thinner than a frame pixel keeps its strongest pixel."""
    return threshold_resampled(frame.to_frame(mask.astype(np.uint8) * 255))


def _frame_to_source(region: Any, frame: "Frame") -> np.ndarray:
    """An estimated (frame) mask on the source image's pixels (for cutting views)."""
    from PIL import Image

    from bench.images import upright_size

    w, h = upright_size(region.image)
    fx0, fy0, fx1, fy1, sx0, sy0, sx1, sy1 = frame.content((w, h))
    fm = Image.fromarray(np.asarray(region.frame_array, dtype=np.uint8) * 255)
    fm = fm.crop((int(fx0), int(fy0), int(fx1), int(fy1))).resize((max(1, int(round(sx1 - sx0))), max(1, int(round(sy1 - sy0)))), Image.NEAREST)
    out = np.zeros((h, w), bool)
    x0, y0 = int(round(sx0)), int(round(sy0))
    part = np.asarray(fm) > 127
    out[y0 : y0 + part.shape[0], x0 : x0 + part.shape[1]] = part[: h - y0, : w - x0]
    return out


from dataclasses import dataclass  # noqa: E402


@dataclass(frozen=True)
class RegionFeatures:
    """The embedding options every ``region-*`` method shares (module docstring): each part's weight and the ring.
    Defaults: raw and residual inside the mask, the context ring at half weight, and the whole image's residual."""

    inside: float = 1.0
    inside_residual: float = 1.0
    context: float = 0.5
    image: float = 1.0
    ring: int = 2

    def __post_init__(self) -> None:
        check_weights(self.weights(), self.ring)

    def weights(self) -> dict[str, float]:
        return {"inside": self.inside, "inside_residual": self.inside_residual, "context": self.context,
                "image": self.image}  # fmt: skip

    def needs_bank(self) -> bool:
        return self.inside_residual > 0 or self.image > 0


def region_reads(config: RegionFeatures) -> set[str]:
    """What a region method reads of the shared pipeline (:meth:`bench.method.MethodBase.reads`)."""
    return {"patch", "bank"} if config.needs_bank() else {"patch"}


class PooledRegionMethod(RegionMethod):
    """What every ``region-*`` method shares: a :class:`RegionFeatures` config, what it reads, and its region
    embedding (with the config's ``views`` when it has them, ``region-multiview``)."""

    @classmethod
    def reads(cls, config: Any) -> set[str]:
        return region_reads(config)

    def embedder(self) -> RegionEmbedder:
        c = self.config
        return RegionEmbedder(self, c.weights(), c.ring, getattr(c, "views", ()))


def class_prototypes(x: torch.Tensor, labels: Sequence[int], n_classes: int) -> torch.Tensor:
    """(C, E) the L2-normalised mean of each class's embeddings ``x`` (N, E)."""
    y = torch.tensor(labels)
    return F.normalize(torch.stack([x[y == c].mean(0) for c in range(n_classes)]), dim=1)
