"""Foreground masks that restrict where pseudo defects are pasted (docs/method-notes.md §6.1).

The reference code (``mvtec_anomaly_detection/generate_foreground*.py``) writes one mask per normal image
with OpenCV: GrabCut for cable/hazelnut (and foam, with a smaller rect), a fixed-range flood fill from two
corners for the isolated objects (plus a third fill from the centre for metal_nut), and nothing for the
texture categories. Here masks are computed on the image resized to 256×256 and cached as PNG.

Differences from the reference, all deliberate: the flood-fill mask is cropped to the image (the reference
keeps the 1-pixel frame of OpenCV's (H+2, W+2) mask and resizes it); the masks are computed after the resize
(the foam rect is scaled accordingly); a mask covering < 1 % or > 99 % of the image falls back to the whole
image; GrabCut's k-means is seeded so masks are reproducible.

Not a dataset adapter: nothing here calls ``register_dataset``; OpenCV is imported lazily.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from bench.images import load_rgb
from bench.paths import cache_dir

log = logging.getLogger(__name__)

FOREGROUND_VERSION = 1
METHODS = ("grabcut", "grabcut_foam", "floodfill", "floodfill_center", "none")
BORDER_STD_MAX = 12.0
"""Auto mode: a border whose per-channel pixel std (0-255 scale) stays below this counts as near-uniform."""
MIN_FRACTION, MAX_FRACTION = 0.01, 0.99

_FLOOD = ["bottle", "capsule", "pill", "screw", "toothbrush", "zipper", "transistor"]
_FLOOD_3D = ["bagel", "cable_gland", "carrot", "cookie", "dowel", "peach", "potato"]
FOREGROUND_METHOD: dict[str, str] = {
    **{c: "grabcut" for c in ("cable", "hazelnut")},
    **{c: "floodfill" for c in _FLOOD + _FLOOD_3D},
    "metal_nut": "floodfill_center",
    **{c: "none" for c in ("carpet", "grid", "leather", "tile", "wood")},
    "foam": "grabcut_foam",
    "rope": "none",
    "tire": "none",  # commented out in the reference mask script (docs/method-notes.md §6.1)
}
"""Per-category method for every MVTec AD and MVTec 3D-AD category (docs/method-notes.md §6.1)."""


def _floodfill(image: np.ndarray, seeds: list[tuple[tuple[int, int], int]]) -> np.ndarray:
    """Union of fixed-range, 4-connected, mask-only flood fills; ``seeds`` = [((x, y), upDiff)], loDiff 80."""
    import cv2

    h, w = image.shape[:2]
    img = image.copy()  # OpenCV wants a writable array even with FLOODFILL_MASK_ONLY
    filled = np.zeros((h, w), bool)
    flags = 4 | cv2.FLOODFILL_FIXED_RANGE | cv2.FLOODFILL_MASK_ONLY | (255 << 8)
    for point, up in seeds:
        m = np.zeros((h + 2, w + 2), np.uint8)
        cv2.floodFill(img, m, point, (0, 0, 0), (80, 80, 80), (up, up, up), flags)
        filled |= m[1:-1, 1:-1] > 0
    return ~filled


def _grabcut(image: np.ndarray, rect: tuple[int, int, int, int], iters: int) -> np.ndarray:
    """GrabCut initialised with ``rect`` (x, y, w, h); foreground = pixels labelled *probable foreground*."""
    import cv2

    h, w = image.shape[:2]
    x, y = min(max(rect[0], 0), w - 2), min(max(rect[1], 0), h - 2)
    rect = (x, y, max(1, min(rect[2], w - 1 - x)), max(1, min(rect[3], h - 1 - y)))
    mask = np.zeros((h, w), np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut's k-means++ init draws from OpenCV's global RNG
    bgr = np.ascontiguousarray(image[..., ::-1])  # the reference reads with cv2.imread (BGR)
    cv2.grabCut(bgr, mask, rect, bgd, fgd, iters, cv2.GC_INIT_WITH_RECT)
    return mask == cv2.GC_PR_FGD


def foreground_mask(
    image: np.ndarray, method: str, orig_hw: tuple[int, int] | None = None, safe: bool = True
) -> np.ndarray:
    """Compute the foreground mask of one image (docs/method-notes.md §6.1).

    Args:
        image: (H, W, 3) uint8 RGB image.
        method: one of :data:`METHODS`. ``grabcut``: rect = the full image less the last row/column (as the
            reference's ``(0, 0, W-1, H-1)``), 10 iterations. ``grabcut_foam``: rect (100, 100, W0-150, H0-150)
            in original-image pixels, 5 iterations. ``floodfill``: fills from the top-left and bottom-right
            corners (loDiff 80, upDiff 50, 4-connectivity, fixed range), foreground = not(fill1 ∪ fill2).
            ``floodfill_center``: adds a fill from the centre with upDiff 30 (metal_nut's hole). ``none``: all.
        orig_hw: (H0, W0) of the image before resizing; the foam rect is defined in those pixels.
        safe: fall back to the whole image (logged) when the mask covers < 1 % or > 99 % of it.

    Returns:
        (H, W) bool mask, True = foreground.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"foreground_mask expects an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    h, w = image.shape[:2]
    if method == "none":
        return np.ones((h, w), bool)
    if method == "grabcut":
        fg = _grabcut(image, (0, 0, w - 1, h - 1), 10)
    elif method == "grabcut_foam":
        h0, w0 = orig_hw or (h, w)
        sx, sy = w / w0, h / h0
        fg = _grabcut(image, (round(100 * sx), round(100 * sy), round((w0 - 150) * sx), round((h0 - 150) * sy)), 5)
    elif method in ("floodfill", "floodfill_center"):
        seeds = [((0, 0), 50), ((w - 1, h - 1), 50)]
        if method == "floodfill_center":
            seeds.append((((w - 1) // 2, (h - 1) // 2), 30))
        fg = _floodfill(image, seeds)
    else:
        raise ValueError(f"unknown foreground method {method!r}; choose one of {', '.join(METHODS)}")
    frac = float(fg.mean())
    if safe and not MIN_FRACTION <= frac <= MAX_FRACTION:
        log.info("foreground mask (%s) covers %.1f%% of the image: using the whole image instead", method, 100 * frac)
        return np.ones((h, w), bool)
    return fg


def border_is_uniform(image: np.ndarray, width: int = 2) -> bool:
    """True when the outer ``width`` pixels of an (H, W, 3) image have per-channel std < :data:`BORDER_STD_MAX`."""
    b = np.concatenate(
        [image[:width].reshape(-1, 3), image[-width:].reshape(-1, 3),
         image[:, :width].reshape(-1, 3), image[:, -width:].reshape(-1, 3)]
    ).astype(np.float64)  # fmt: skip
    return bool(b.std(axis=0).max() < BORDER_STD_MAX)


def method_for(category: str, image: np.ndarray) -> str:
    """Foreground method: the §6.1 table, else ``floodfill`` if the border is near-uniform, else ``none``."""
    if category in FOREGROUND_METHOD:
        return FOREGROUND_METHOD[category]
    return "floodfill" if border_is_uniform(image) else "none"


def source_content(path: str | Path) -> list:
    """What identifies a decoded source image in cache keys: the file's bytes (memoised sha256, so an image
    replaced under the same name, even with its old modification time, is a new key) and how it is decoded."""
    from bench.cache import file_sha256, hash_memo_dir
    from bench.images import DECODING

    return [file_sha256(path, hash_memo_dir()), DECODING]


def load_resized(path: str | Path, size: int = 256) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode ``path`` as RGB and resize it to (size, size, 3) uint8 (cv2 bilinear, as the reference code).

    Returns:
        The resized image and the original (H, W).

    Raises:
        DatasetError: the file is missing or unreadable (via :func:`bench.images.load_rgb`).
    """
    import cv2

    arr = np.array(load_rgb(path))  # a writable copy
    hw = (int(arr.shape[0]), int(arr.shape[1]))
    if hw != (size, size):
        arr = cv2.resize(arr, (size, size), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(arr), hw


def cached_foreground(
    image_path: str,
    category: str,
    size: int = 256,
    image: np.ndarray | None = None,
    orig_hw: tuple[int, int] | None = None,
) -> np.ndarray:
    """Foreground mask of ``image_path`` at (size, size), cached as PNG under ``cache_dir()/foreground``.

    The cache file name is a SHA-256 of (the image's content, how it is decoded, size, method,
    FOREGROUND_VERSION), so an edited image or a new method version is recomputed. Writes go to a temp file +
    ``os.replace``, so
    concurrent processes never read a half-written mask.

    Args:
        image_path: the normal image.
        category: selects the method (:func:`method_for`).
        size: side of the square mask.
        image: the already decoded (size, size, 3) uint8 RGB image, to avoid decoding twice.
        orig_hw: original (H, W) of ``image`` (needed for the foam rect when ``image`` is given).

    Returns:
        (size, size) bool mask.
    """
    p = Path(image_path).absolute()
    if image is None:
        image, orig_hw = load_resized(p, size)
    method = method_for(category, image)
    if method == "none":
        return np.ones((size, size), bool)
    key = f"{source_content(p)}|{size}|{method}|{FOREGROUND_VERSION}"
    out = cache_dir() / "foreground" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.png"
    if out.is_file():
        try:
            with Image.open(out) as im:
                cached = np.asarray(im.convert("L")) > 127
            if cached.shape == (size, size):
                return cached
        except OSError:
            log.warning("unreadable cached foreground mask %s: recomputing it", out)
    fg = foreground_mask(image, method, orig_hw=orig_hw)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".fg-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(fg.astype(np.uint8) * 255).save(f, format="PNG")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return fg
