"""Detection metrics (docs/tasks.md §A.1): image AUROC, AUROC per defect type, pixel AUROC where masks exist.

* **Image AUROC**: defective = positive, the Mann–Whitney statistic (ties count ½, ``sklearn.metrics.roc_auc_score``).
* **Per defect type**: the AUROC of ``good`` against that type alone (which defects a detector misses).
* **Pixel AUROC**: every pixel of every test image with a mask, plus the ``good`` images (all pixels normal), on a
  common frame: a map (N, h, w) on the network's input frame is resized bilinearly to ``size`` × ``size`` and each
  mask is brought to the same frame by the same geometry as the image (:class:`bench.images.Preprocess`: the centre
  crop, squash or letterbox of the run's ``--image-fit``), area-averaged to ``size`` and thresholded at ½. Defective
  images without a mask are left out; with no mask at all the pixel AUROC is ``None``. The frame side (112 by
  default, a quarter of the 224 input's pixels) keeps the computation at seconds for MTD's 582 test images; the
  pixels a centre crop drops are never scored, as the network never sees them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from bench.images import Preprocess

PIXEL_FRAME = 112
"""Side of the square frame pixel AUROC is computed on (see the module docstring)."""


def image_auroc(y: Sequence[int], scores: Sequence[float]) -> float:
    """Image AUROC with defective (1) = positive; NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, np.asarray(scores, dtype=np.float64)))


def fast_auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Exact AUROC (Mann–Whitney, ties ½) of many scores by one sort: the same value as ``roc_auc_score`` in a
    fraction of its time on the millions of pixels of a test set."""
    y = np.asarray(y, bool).reshape(-1)
    s = np.asarray(s).reshape(-1)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="stable")
    ss, ys = s[order], y[order]
    group = np.cumsum(np.r_[True, ss[1:] != ss[:-1]]) - 1  # equal scores share a group
    pos = np.bincount(group, weights=ys)
    neg = np.bincount(group, weights=~ys)
    below = np.cumsum(neg) - neg  # negatives strictly below each group
    return float((pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg))


def auroc_per_type(labels: Sequence[str], scores: Sequence[float]) -> dict[str, float]:
    """For each defect type: the AUROC of the ``good`` images against the images of that type."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    good = labels == "good"
    return {t: image_auroc(np.r_[np.zeros(good.sum()), np.ones((labels == t).sum())],
                           np.r_[scores[good], scores[labels == t]])
            for t in sorted(set(labels.tolist()) - {"good"})}  # fmt: skip


def mask_frame(mask_path: str, preprocess: Preprocess, size: int = PIXEL_FRAME) -> np.ndarray:
    """A mask file on the network's input frame: (size, size) bool.

    The mask goes through the same geometry as its image (``preprocess``'s fit and crop), so pixel ``i`` of the
    result covers the same part of the part as pixel ``i`` of a map on the input frame.
    """
    with Image.open(mask_path) as im:
        m = im.convert("L")
    geo = Preprocess(preprocess.resize, preprocess.crop, preprocess.fit, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    frame = geo.array(m.convert("RGB"))[0] > 0.5  # (crop, crop): > half of 255 after the bilinear resize
    return resize_area(frame.astype(np.float32), size) >= 0.5


def resize_area(a: np.ndarray, size: int) -> np.ndarray:
    """(H, W) float → (size, size) by area averaging (PIL ``BOX``)."""
    return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize((size, size), Image.BOX), np.float32)


def resize_map(m: np.ndarray, size: int) -> np.ndarray:
    """(h, w) float map → (size, size), bilinear (the map's cells are centred on their patches)."""
    return np.asarray(Image.fromarray(np.asarray(m, np.float32), mode="F").resize((size, size), Image.BILINEAR), np.float32)


def pixel_auroc(
    maps: np.ndarray, labels: Sequence[str], masks: Sequence[str], preprocess: Preprocess, size: int = PIXEL_FRAME
) -> tuple[float | None, int]:
    """Pixel AUROC of (N, h, w) maps against the test masks (see the module docstring).

    Args:
        maps: (N, h, w) anomaly maps on the input frame, in test-set order.
        labels: (N,) ``good`` or the defect type.
        masks: (N,) mask paths, ``""`` where there is none.
        preprocess: the run's image transform (its geometry only is used).

    Returns:
        (AUROC or ``None`` when no defective image has a mask, number of images used).
    """
    use = [i for i, (lab, m) in enumerate(zip(labels, masks)) if lab == "good" or m]
    if not any(labels[i] != "good" for i in use):
        return None, 0
    ys = np.zeros((len(use), size, size), bool)
    ss = np.empty((len(use), size, size), np.float32)
    for j, i in enumerate(use):
        ss[j] = resize_map(maps[i], size)
        if labels[i] != "good":
            ys[j] = mask_frame(masks[i], preprocess, size)
    if ys.all() or not ys.any():
        return None, len(use)
    return fast_auroc(ys, ss), len(use)
