"""Anomaly maps as PNG files, in the layout the discovery task reads (docs/tasks.md §B.1).

``<root>/<category>/<type>/<name>.png``: one file per test image, ``<type>`` = ``good`` or the defect type, ``<name>``
= the image file name with ``.png``; each map has the size of its image (a map on the network's input frame is
brought back by the inverse of the run's image fit: a squash is un-squashed, a letterbox's padding cut off, a centre
crop pasted back into its window with the area the network never saw set to the set's minimum).

Normalisation, as the reference of §B.1: min–max **jointly over all maps of the set** (one category's test set for
one detector, k and seed; over the maps as written, at their images' sizes), so that maps stay comparable between
images: value = round((m − min) / (max − min) · (2^bits − 1)). ``bits`` = 8 (uint8, the reference's) or 16. The numbers needed to undo it (min, max, bits) are written
to ``<root>/<category>/normalisation.json`` with what produced the maps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from bench.detection.metrics import resize_map
from bench.images import Preprocess


def map_to_image(m: np.ndarray, preprocess: Preprocess, size: tuple[int, int], fill: float) -> np.ndarray:
    """A map on the input frame (h, w) → the image's own (height, width), inverting the fit of ``preprocess``.

    Args:
        m: (h, w) map covering the network input (crop × crop).
        preprocess: the image transform the map's image went through.
        size: (width, height) of the original image.
        fill: value for the pixels the network never saw (outside a centre crop).

    Returns:
        (height, width) float32.
    """
    w, h = size
    c = preprocess.crop
    frame = resize_map(m, c)  # (crop, crop)
    if preprocess.fit == "squash":
        return np.asarray(Image.fromarray(frame, mode="F").resize((w, h), Image.BILINEAR), np.float32)
    if preprocess.fit == "letterbox":
        scale = c / max(w, h)
        nw, nh = max(1, min(c, round(w * scale))), max(1, min(c, round(h * scale)))
        top, left = (c - nh) // 2, (c - nw) // 2
        content = frame[top : top + nh, left : left + nw]
        return np.asarray(Image.fromarray(np.ascontiguousarray(content), mode="F").resize((w, h), Image.BILINEAR), np.float32)
    x0, y0, x1, y1 = preprocess.source_box((w, h))
    out = np.full((h, w), fill, np.float32)
    bw, bh = max(1, round(x1 - x0)), max(1, round(y1 - y0))
    patch = np.asarray(Image.fromarray(frame, mode="F").resize((bw, bh), Image.BILINEAR), np.float32)
    ox, oy = round(x0), round(y0)
    out[oy : oy + bh, ox : ox + bw] = patch[: h - oy, : w - ox]
    return out


def write_maps(
    root: str | Path,
    category: str,
    paths: Sequence[str],
    labels: Sequence[str],
    maps: np.ndarray,
    preprocess: Preprocess,
    bits: int = 8,
    meta: dict[str, Any] | None = None,
) -> list[Path]:
    """Write the (N, h, w) maps of a category's test set as PNG files (layout and normalisation: module docstring).

    Returns:
        The PNG paths written, in test-set order (the ``normalisation.json`` beside them is not listed).
    """
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    maps = np.asarray(maps, np.float32)
    fill = float(maps.min())
    full = []
    for p, m in zip(paths, maps):  # every map at its image's size first: the set's range is that of the written maps
        with Image.open(p) as im:
            size = im.size
        full.append(map_to_image(m, preprocess, size, fill=fill))
    lo, hi = min(float(f.min()) for f in full), max(float(f.max()) for f in full)
    span = hi - lo if hi > lo else 1.0
    top = (1 << bits) - 1
    base = Path(root) / category
    written = []
    for p, label, f in zip(paths, labels, full):
        q = np.clip(np.rint((f - lo) / span * top), 0, top).astype(np.uint8 if bits == 8 else np.uint16)
        out = base / label / (Path(p).stem + ".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(q).save(out)
        written.append(out)
    info = {"normalisation": "min-max jointly over all maps of this set", "min": lo, "max": hi, "bits": bits,
            "dtype": "uint8" if bits == 8 else "uint16", "value": f"round((map - min) / (max - min) * {top})",
            "image_fit": preprocess.fit, "n_maps": len(written), **(meta or {})}  # fmt: skip
    (base / "normalisation.json").write_text(json.dumps(info, indent=1, sort_keys=True, default=str) + "\n")
    return written
