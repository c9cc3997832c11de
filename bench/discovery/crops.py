"""Anomaly-centred crops (AnomalyNCD, Huang et al., CVPR 2025, Sec. 3.2; its code's ``crop_sub_image_mask``), in our
own words (docs/tasks.md, "Anomaly class discovery").

Padding 0.1, minimum crop 0.1 of the image side, merge distance 0.01 of it. On the binary mask of an image (H × W,
here the frame; :mod:`bench.discovery.maps`):

1. the bounding rectangles of the external contours, in ascending area (ties: by position);
2. each becomes a square on its centre with half-side r = max(int(max(h, w) · 1.1 · 0.5), int(0.1 · max(H, W))),
   capped at int(max(H, W) / 2) and shifted inside the image;
3. boxes whose gap is below int(0.01 · max(H, W)) (overlapping boxes count as touching) are merged: each box's group
   is every box near it (itself included), groups contained in another group are dropped, each remaining group
   becomes the union of its boxes squared around its centre (the shorter side grown symmetrically; it may leave the
   image, where the crop is padded with black), as the reference does even when two groups share a box;
4. sorted by area, largest first (boxes of equal area, e.g. all at the minimum size, keep the order of ascending
   contour area: the reference's sorts are stable, so the *smaller* regions come first among them); when there are
   more boxes than MEBin's estimated count, ``est_num + 1`` are kept
   (one more than estimated: a quirk of the reference, kept by default; ``keep_extra=False`` keeps ``est_num``,
   at least one).

No contour: the whole image is the only crop. Each crop carries its box, its mask crop and its score: the maximum of
the MEBin-normalised map inside it, / 255 (AnomalyNCD's pseudo-label correction reads it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np

if TYPE_CHECKING:
    from bench.discovery.contract import DiscoverySet

PADDING = 0.1
MIN_CROP = 0.1
MERGE_DIST = 0.01

Box = tuple[float, float, float, float]  # left, top, right, bottom (right/bottom exclusive), frame pixels


def rect_gap(a: Box, b: Box) -> float:
    """The reference's distance between two rectangles: the gap along the separating axis, the corner distance when
    they are apart on both axes, -1 when they overlap."""
    aw, ah, bw, bh = a[2] - a[0], a[3] - a[1], b[2] - b[0], b[3] - b[1]
    dx = abs((a[0] + aw / 2) - (b[0] + bw / 2))
    dy = abs((a[1] + ah / 2) - (b[1] + bh / 2))
    sx, sy = (aw + bw) / 2, (ah + bh) / 2
    if dx < sx and dy >= sy:
        return dy - sy
    if dx >= sx and dy < sy:
        return dx - sx
    if dx >= sx and dy >= sy:
        return math.hypot(dx - sx, dy - sy)
    return -1.0


def square_boxes(mask: np.ndarray, padding: float = PADDING, min_crop: float = MIN_CROP) -> list[Box]:
    """Steps 1–2: one square box per external contour of ``mask`` (H, W) bool/uint8; ``[]`` without contour."""
    h_img, w_img = mask.shape
    side = max(h_img, w_img)
    contours, _ = cv2.findContours((np.asarray(mask) > 0).astype(np.uint8) * 255, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    rects = sorted((w * h, [x, y, w, h]) for x, y, w, h in (cv2.boundingRect(c) for c in contours))
    boxes: list[Box] = []
    for _, (x, y, w, h) in rects:
        cy, cx = int((y + y + h) * 0.5), int((x + x + w) * 0.5)
        r = max(int(max(h, w) * (1 + padding) * 0.5), int(side * min_crop))
        r = min(r, int(side * 0.5))
        left, top, right, bottom = cx - r, cy - r, cx + r, cy + r
        if left < 0:
            left, right = 0, 2 * r
        elif right > w_img:
            left, right = w_img - 2 * r, w_img
        if top < 0:
            top, bottom = 0, 2 * r
        elif bottom > h_img:
            top, bottom = h_img - 2 * r, h_img
        boxes.append((float(left), float(top), float(right), float(bottom)))
    return boxes


def merge_boxes(boxes: Sequence[Box], shape: tuple[int, int], merge_dist: float = MERGE_DIST) -> list[Box]:
    """Step 3–4 (without the count rule): merged boxes, largest first."""
    limit = int(max(shape) * merge_dist)
    remaining = list(boxes)
    groups: list[list[Box]] = []
    for b1 in dict.fromkeys(boxes):  # the reference keys a dict by box: equal boxes count once
        g = sorted(b2 for b2 in boxes if rect_gap(b1, b2) < limit)
        if g and g not in groups:
            groups.append(g)
    groups = [g for g in groups if not any(g != o and set(g) <= set(o) for o in groups)]
    for g in groups:
        for b in g:
            if b in remaining:
                remaining.remove(b)
        m = g[0]
        for o in g[1:]:
            m = (min(m[0], o[0]), min(m[1], o[1]), max(m[2], o[2]), max(m[3], o[3]))
            w, h = m[2] - m[0], m[3] - m[1]
            if w > h:
                m = (m[0], m[1] - (w - h) / 2, m[2], m[3] + (w - h) / 2)
            elif h > w:
                m = (m[0] - (h - w) / 2, m[1], m[2] + (h - w) / 2, m[3])
        remaining.append(m)
    return sorted(remaining, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)


def crop_boxes(
    mask: np.ndarray, est_num: int, padding: float = PADDING, min_crop: float = MIN_CROP, merge_dist: float = MERGE_DIST,
    keep_extra: bool = True,
) -> list[Box]:
    """The crop boxes of one image (module docstring): the whole image when the mask has no contour."""
    h, w = mask.shape
    boxes = square_boxes(mask, padding, min_crop)
    if not boxes:
        return [(0.0, 0.0, float(w), float(h))]
    merged = merge_boxes(boxes, (h, w), merge_dist)
    keep = est_num + 1 if keep_extra else max(1, est_num)
    return merged[:keep] if len(merged) > est_num else merged


def cut(a: np.ndarray, box: Box) -> np.ndarray:
    """The part of a 2-D or 3-D array inside ``box`` (rounded as PIL does), padded with zeros outside the array."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    out = np.zeros((max(0, y1 - y0), max(0, x1 - x0), *a.shape[2:]), a.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, a.shape[1]), min(y1, a.shape[0])
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = a[sy0:sy1, sx0:sx1]
    return out


@dataclass(frozen=True)
class Crop:
    """One anomaly-centred crop.

    Attributes:
        image: index of its image in the set.
        box: frame pixels (left, top, right, bottom).
        mask: the binary mask inside the box (box-sized bool array, frame pixels).
        score: maximum of the MEBin-normalised map inside the box / 255 (0 when the map is flat).
        area: mask pixels inside the box, in *source* pixels (region merging weighs crops by it).
    """

    image: int
    box: Box
    mask: np.ndarray
    score: float
    area: float


def image_crops(
    index: int, mask: np.ndarray, est_num: int, norm_map: np.ndarray | None, source_px: float = 1.0,
    keep_extra: bool = True,
) -> list[Crop]:
    """The crops of image ``index`` from its binary ``mask`` and MEBin estimate; ``norm_map`` gives the scores."""
    out = []
    for box in crop_boxes(mask, est_num, keep_extra=keep_extra):
        m = cut(np.asarray(mask, bool), box)
        score = float(cut(norm_map, box).max()) / 255.0 if norm_map is not None and m.size else 0.0
        out.append(Crop(index, box, m, score, float(m.sum()) * source_px))
    return out


def mask_count(mask: np.ndarray) -> int:
    """8-connected regions of a binary mask (the anomaly count of a ground-truth mask)."""
    n, _ = cv2.connectedComponents((np.asarray(mask) > 0).astype(np.uint8), connectivity=8)
    return int(n) - 1


def set_crops(data: "DiscoverySet", masks_from: str = "mebin", keep_extra: bool = True, range_low: str = "set") -> tuple[list[Crop], dict]:
    """The anomaly-centred crops of every image of a discovery set.

    Args:
        data: the set (:class:`bench.discovery.contract.DiscoverySet`).
        masks_from: ``mebin`` (MEBin on the set's anomaly maps, AnomalyNCD's) or ``gt`` (the ground-truth masks, with
            the number of their connected regions as the estimate: the oracle that separates detector errors from
            representation errors).
        keep_extra: the reference's ``est_num + 1`` rule (:func:`crop_boxes`).
        range_low: MEBin's search range (:data:`bench.discovery.mebin.RANGE_LOWS`).

    Returns:
        the crops (grouped by image, in set order) and a small record of how they were made.
    """
    from PIL import Image

    from bench.discovery.mebin import mebin

    sizes = []
    for p in data.paths:
        with Image.open(p) as im:
            sizes.append(im.size)
    if masks_from == "mebin":
        ms = data.maps().maps
        r = mebin(ms, range_low=range_low)
        masks, ests, norms = r.masks, r.est_nums, [r.normalised(m) for m in ms]
        info = {"masks": "mebin", "min_th": r.min_th, "max_th": r.max_th, "range_low": range_low,
                "no_stable_interval": int(sum(e == 0 for e in ests))}  # fmt: skip
    elif masks_from == "gt":
        masks = data.gt_masks()
        ests, norms = [mask_count(m) for m in masks], [None] * len(masks)
        info = {"masks": "ground truth", "empty_masks": int(sum(not m.any() for m in masks))}
    else:
        raise ValueError(f"masks_from must be 'mebin' or 'gt', got {masks_from!r}")
    crops = [
        c for i in range(len(data.paths))
        for c in image_crops(i, masks[i], ests[i], norms[i], data.frame.source_pixels_per_frame_pixel(sizes[i]), keep_extra)
    ]  # fmt: skip
    counts = np.bincount([c.image for c in crops], minlength=len(data.paths))
    info.update(n_crops=len(crops), crops_per_image=round(float(counts.mean()), 3), max_crops_per_image=int(counts.max()),
                whole_image_crops=int(sum(c.box == (0.0, 0.0, float(data.frame.side), float(data.frame.side)) for c in crops)))  # fmt: skip
    return crops, info


class CropImages:
    """The crops as images, cut lazily (a sequence: ``len`` and indexing; thread-safe).

    Each crop is cut from its *source* image (full resolution, black outside it) and resized to ``size`` × ``size``
    (uint8 (size, size, 3)). Source images are decoded on demand, the last few kept; the feature store indexes only
    the crops whose features are not cached yet.
    """

    def __init__(self, data: "DiscoverySet", crops: Sequence[Crop], size: int = 224) -> None:
        import threading
        from functools import lru_cache

        from bench.images import load_rgb

        self.data, self.crops, self.size = data, list(crops), size
        self._lock = threading.Lock()
        self._load = lru_cache(maxsize=8)(load_rgb)

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i: int) -> np.ndarray:
        from PIL import Image

        c = self.crops[i]
        with self._lock:
            img = self._load(self.data.paths[c.image])
        box = self.data.frame.source_box(c.box, img.size)
        region = img.crop(tuple(int(round(v)) for v in box))
        return np.asarray(region.resize((self.size, self.size), Image.BILINEAR))


def crop_masks(crops: Sequence[Crop], size: int) -> np.ndarray:
    """(C, size, size) float32 masks of the crops (nearest-neighbour resize of each box's mask)."""
    out = np.zeros((len(crops), size, size), np.float32)
    for i, c in enumerate(crops):
        if c.mask.size and c.mask.any():
            out[i] = cv2.resize(c.mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
    return out


def area_temperature(dataset: str) -> float:
    """The region-merging temperature T: 100 on MVTec AD, 50 elsewhere (the reference's values)."""
    return 100.0 if dataset.startswith("mvtec") else 50.0


def merge_regions(probs: np.ndarray, crops: Sequence[Crop], n_images: int, temperature: float) -> np.ndarray:
    """Region merging: an image's class scores are its crops' scores weighted by softmax(√area / T) over its crops
    (a single crop: its own scores); its label is their argmax.

    Args:
        probs: (C, K) per-crop class probabilities (AnomalyNCD: softmax(logits / 0.1)).
        crops: the C crops (their ``image`` and ``area``).
        n_images: N.
        temperature: T (:func:`area_temperature`).

    Returns:
        (N,) labels; an image without crops (none here: every image has at least one) gets 0.
    """
    labels = np.zeros(n_images, np.int64)
    by_image: dict[int, list[int]] = {}
    for j, c in enumerate(crops):
        by_image.setdefault(c.image, []).append(j)
    for i, idx in by_image.items():
        p = probs[idx]
        if len(idx) > 1:
            z = np.sqrt(np.array([crops[j].area for j in idx])) / temperature
            w = np.exp(z - z.max())
            p = (w / w.sum())[:, None] * p
        labels[i] = int(p.sum(0).argmax())
    return labels
