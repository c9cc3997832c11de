"""Texture banks for the synthetic pseudo-defect generator (docs/method-notes.md §6.3, docs/datasets.md §3).

The paper (arXiv 2406.05645, §3.5) pastes DTD textures (Cimpoi et al., CVPR 2014) into normal images,
DRAEM-style; each texture class is one pseudo-defect class and only **one image per class** is used: the
first ``.jpg`` of each ``images/<texture>/`` folder in sorted order, resized to 256×256. When DTD is not
available, :func:`procedural_bank` supplies ≥ 20 seeded synthetic textures plus three real photographs
bundled with scikit-image, so that the pipeline still runs (and is recorded as ``procedural-v1``).

Not a dataset adapter: nothing here calls ``register_dataset``; imports at module level stay cheap.
"""

from __future__ import annotations

import colorsys
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from bench.datasets._base import is_hidden_or_system
from bench.errors import DatasetError
from bench.images import load_rgb

log = logging.getLogger(__name__)

PROCEDURAL_VERSION = "procedural-v1"
DTD_URL = "https://www.robots.ox.ac.uk/~vgg/data/dtd/"


@dataclass
class TextureBank:
    """One image per pseudo-defect class.

    Attributes:
        names: texture (class) names, in class order (alphabetical for DTD).
        images: uint8 RGB arrays of shape (size, size, 3), one per name.
        source: where the bank came from, e.g. ``"dtd:/data/dtd/images"`` or ``"procedural-v1:seed=0"``;
            ``":bgr"`` is appended when the channels were swapped (docs/method-notes.md §11 item 9).
        bgr: True when ``images`` hold BGR data (the reference code's bug), so that callers do not swap again.
    """

    names: list[str]
    images: list[np.ndarray]
    source: str
    bgr: bool = False
    _digest: str | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.names)

    def digest(self) -> str:
        """Return a SHA-256 (hex, 16 chars) over the names and pixel bytes (memoised); for cache keys."""
        if self._digest is None:
            h = hashlib.sha256(self.source.encode())
            for name, img in zip(self.names, self.images):
                h.update(name.encode() + b"\0" + str(img.shape).encode())
                h.update(np.ascontiguousarray(img).tobytes())
            self._digest = h.hexdigest()[:16]
        return self._digest


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """Resize an (H, W[, 3]) uint8 array to (size, size[, 3]) with cv2's bilinear filter, as the reference code."""
    import cv2

    if img.shape[:2] == (size, size):
        return np.ascontiguousarray(img)
    return cv2.resize(np.ascontiguousarray(img), (size, size), interpolation=cv2.INTER_LINEAR)


def load_dtd(root: Path, size: int = 256, bgr: bool = False) -> TextureBank:
    """Load the first ``.jpg`` (sorted by name) of every DTD texture folder (paper default, docs/method-notes.md §6.3).

    Args:
        root: the DTD folder holding ``images/<texture>/*.jpg``, or that ``images/`` folder itself.
        size: side of the square output images.
        bgr: swap the channels to BGR, reproducing the reference code, which reads textures with OpenCV and
            blends them into an RGB image (docs/method-notes.md §11 item 9). Default RGB (paper).

    Returns:
        A bank with one (size, size, 3) uint8 image per texture folder, names in sorted order.

    Raises:
        DatasetError: the folder is missing, has no texture sub-folders, a texture folder has no ``.jpg``,
            or an image is corrupt.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"DTD folder not found: {root}. Download DTD from {DTD_URL} (dtd-r1.0.1.tar.gz), extract it and pass "
            "the folder that contains images/ (e.g. --textures /data/dtd), or omit the option to use the "
            "procedural texture bank."
        )
    images_dir = root / "images" if (root / "images").is_dir() else root
    hidden = sorted(p.name for p in images_dir.iterdir() if is_hidden_or_system(p.name))
    if hidden:  # .DS_Store, __MACOSX/, ._*.jpg of an archive unpacked on a Mac: never texture classes or images
        log.info("DTD folder %s: left out hidden or system entries %s", images_dir, ", ".join(hidden[:5]))
    folders = sorted(p for p in images_dir.iterdir() if p.is_dir() and not is_hidden_or_system(p.name))
    if not folders:
        raise DatasetError(
            f"no texture sub-folders in {images_dir}: expected DTD's layout images/<texture>/<texture>_NNNN.jpg "
            f"(e.g. images/banded/banded_0002.jpg). Point the option at the extracted DTD folder ({DTD_URL})."
        )
    names: list[str] = []
    images: list[np.ndarray] = []
    for folder in folders:
        jpgs = sorted(
            p for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() == ".jpg" and not is_hidden_or_system(p.name)
        )  # fmt: skip
        if not jpgs:
            raise DatasetError(
                f"DTD texture folder {folder} holds no .jpg file. Re-extract DTD from {DTD_URL} or remove the "
                "folder (every sub-folder of images/ is one pseudo-defect class)."
            )
        try:
            arr = np.asarray(load_rgb(jpgs[0]))
        except DatasetError as exc:
            raise DatasetError(
                f"{exc} (DTD texture '{folder.name}': the first .jpg in sorted order is used as that class's "
                "texture; replace the file with the original from the DTD archive, or delete it so that the next "
                "one is used)"
            ) from None
        img = resize_square(arr, size)
        names.append(folder.name)
        images.append(np.ascontiguousarray(img[..., ::-1]) if bgr else img)
    source = f"dtd:{images_dir.resolve()}" + (":bgr" if bgr else "")
    log.info("loaded %d DTD textures from %s", len(names), images_dir)
    return TextureBank(names=names, images=images, source=source, bgr=bgr)


# ----------------------------------------------------------------------------------------------- procedural

Pattern = Callable[[np.random.Generator, np.ndarray, np.ndarray], np.ndarray]


def _noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth value noise in [0, 1] of shape (size, size): a (cells+1)² random grid upsampled bicubically."""
    import cv2

    grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
    return np.clip(cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)


def _fractal(rng: np.random.Generator, size: int, base: int = 4, octaves: int = 5) -> np.ndarray:
    """Fractal (1/f) sum of value-noise octaves, shape (size, size), not normalised."""
    return sum(_noise(rng, size, base * 2**o) / 2**o for o in range(octaves))


def _rot(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates rotated by ``deg`` ± 8° (seeded jitter)."""
    a = np.deg2rad(deg + rng.uniform(-8, 8))
    return x * np.cos(a) + y * np.sin(a), -x * np.sin(a) + y * np.cos(a)


def _sq(v: np.ndarray, sharp: float = 6.0) -> np.ndarray:
    """Soft square wave of a sine argument: tanh(sharp·sin v)."""
    return np.tanh(sharp * np.sin(v))


def _voronoi(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances (F1, F2) to the nearest and second-nearest of ``n`` random points (toroidal), shape (H, W)."""
    pts = rng.random((n, 2)).astype(np.float32)
    dx = np.abs(x[..., None] - pts[:, 0])
    dy = np.abs(y[..., None] - pts[:, 1])
    d = np.sqrt(np.minimum(dx, 1 - dx) ** 2 + np.minimum(dy, 1 - dy) ** 2)
    d.sort(axis=-1)
    return d[..., 0], d[..., 1]


def _hex(x: np.ndarray, y: np.ndarray, s: float) -> np.ndarray:
    """Hexagonal distance to the nearest cell centre of a honeycomb with cell size ``s`` (0 = centre, 0.5 = edge)."""
    r = np.array([1.0, np.sqrt(3.0)])
    p = np.stack([x / s, y / s], -1)
    a = np.mod(p, r) - r / 2
    b = np.mod(p - r / 2, r) - r / 2
    g = np.where(((a**2).sum(-1) < (b**2).sum(-1))[..., None], a, b)
    gx, gy = np.abs(g[..., 0]), np.abs(g[..., 1])
    return np.maximum(gx * 0.5 + gy * np.sqrt(3.0) / 2, gx)


def _dots(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Random discs of random radii (spots/flecks)."""
    import cv2

    size = x.shape[0]
    img = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(60, 120))):
        c = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        cv2.circle(img, c, int(rng.integers(2, 9)), 255, -1, cv2.LINE_AA)
    return img.astype(np.float32)


def _streaks(noise: np.ndarray) -> np.ndarray:
    """Vertical fibres: noise box-blurred along one axis (41 px)."""
    import cv2

    return cv2.blur(noise, (1, 41))


PATTERNS: dict[str, Pattern] = {
    "stripes-horizontal": lambda r, x, y: _sq(2 * np.pi * 8 * _rot(r, x, y, 90)[0] + r.uniform(0, 6)),
    "stripes-diagonal": lambda r, x, y: _sq(2 * np.pi * 14 * _rot(r, x, y, 45)[0], 3),
    "stripes-fine": lambda r, x, y: np.sin(2 * np.pi * 36 * _rot(r, x, y, 110)[0]),
    "checks": lambda r, x, y: (np.floor(x * 8) + np.floor(y * 8)) % 2,
    "checks-diagonal": lambda r, x, y: (lambda u, v: (np.floor(u * 10) + np.floor(v * 10)) % 2)(*_rot(r, x, y, 45)),
    "polka": lambda r, x, y: (_hex(x + r.random(), y, 0.09) < 0.22).astype(np.float32),
    "spots": _dots,
    "clouds": lambda r, x, y: _fractal(r, x.shape[0], 3, 5),
    "marble": lambda r, x, y: np.sin(2 * np.pi * (4 * _rot(r, x, y, 30)[0] + 1.5 * _fractal(r, x.shape[0], 3, 4))),
    "cracks": lambda r, x, y: -np.exp(-np.subtract(*_voronoi(r, x, y, 28)[::-1]) * 90),
    "veins": lambda r, x, y: -np.abs(_fractal(r, x.shape[0], 3, 5) - 0.95) ** 0.4,
    "grid": lambda r, x, y: (np.minimum(np.abs(np.sin(np.pi * 12 * x)), np.abs(np.sin(np.pi * 12 * y))) > 0.15) * 1.0,
    "zigzag": lambda r, x, y: _sq(2 * np.pi * 10 * (y + 0.06 * np.abs(((x * 10) % 2) - 1))),
    "honeycomb": lambda r, x, y: -(_hex(x, y + r.random(), 0.07) > 0.42).astype(np.float32),
    "waves": lambda r, x, y: np.sin(2 * np.pi * (9 * y + 0.35 * np.sin(2 * np.pi * 3 * x + r.uniform(0, 6)))),
    "speckle": lambda r, x, y: (r.random(x.shape) > 0.8).astype(np.float32) + 0.3 * r.random(x.shape),
    "gradient": lambda r, x, y: _rot(r, x, y, r.uniform(0, 360))[0] + 0.15 * _fractal(r, x.shape[0], 8, 3),
    "fibres": lambda r, x, y: _streaks(r.random(x.shape).astype(np.float32)) ** 3,
    "rings": lambda r, x, y: np.sin(2 * np.pi * 14 * np.hypot(x - r.random(), y - r.random())),
    "plaid": lambda r, x, y: (np.sin(2 * np.pi * 6 * x) > 0.3) * 0.6 + (np.sin(2 * np.pi * 6 * y) > 0.3) * 0.4,
    "woodgrain": lambda r, x, y: np.sin(
        2 * np.pi * 10 * np.hypot(x - 0.5, 0.25 * (y - 0.5)) + 5 * _fractal(r, x.shape[0], 2, 3)
    ),
    "cells": lambda r, x, y: _voronoi(r, x, y, 40)[0],
    "weave": lambda r, x, y: np.where(
        (np.floor(x * 8) + np.floor(y * 8)) % 2 == 0, np.sin(np.pi * 48 * x) ** 2, np.sin(np.pi * 48 * y) ** 2
    ),
    "blotches": lambda r, x, y: 1 / (1 + np.exp(-40 * (_noise(r, x.shape[0], 5) - 0.55))),
    "spiral": lambda r, x, y: np.sin(5 * np.arctan2(y - 0.5, x - 0.5) + 60 * np.hypot(x - 0.5, y - 0.5)),
}
"""Name → pattern function (rng, x, y) with x, y in [0, 1) of shape (size, size); any range, normalised later."""

SKIMAGE_TEXTURES = ("brick", "grass", "gravel")


def _palette(n: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """Distinct (dark, light) RGB colour pairs in [0, 1]: golden-ratio hue spacing with a seeded offset."""
    offset = rng.random()
    pairs = []
    for i in range(n):
        h = (offset + i * 0.618033988749895) % 1.0
        dark = colorsys.hsv_to_rgb((h + rng.uniform(-0.08, 0.08)) % 1.0, rng.uniform(0.5, 1.0), rng.uniform(0.08, 0.35))
        light = colorsys.hsv_to_rgb(h, rng.uniform(0.35, 0.9), rng.uniform(0.75, 1.0))
        pairs.append((np.asarray(dark, np.float32), np.asarray(light, np.float32)))
    return pairs


def procedural_bank(seed: int = 0, size: int = 256) -> TextureBank:
    """Build a seeded bank of synthetic textures (used when DTD is not available).

    Every pattern in :data:`PATTERNS` (stripes at several angles and frequencies, checks, polka dots,
    spots, clouds, marble, cracks, veins, grid, zigzag, honeycomb, waves, speckle, gradient, fibres, rings,
    plaid, wood grain, cells, weave, blotches, spiral) is rendered with its own
    ``np.random.Generator(SeedSequence([seed, i]))`` and coloured between a dark and a light colour of a
    distinct hue; scikit-image's bundled photographs ``brick``, ``grass`` and ``gravel`` (grayscale → RGB)
    follow. No global RNG is touched, so the bank is a pure function of (seed, size).

    Args:
        seed: non-negative seed.
        size: side of the square output images.

    Returns:
        A bank of ``len(PATTERNS) + 3`` (size, size, 3) uint8 RGB images, source ``"procedural-v1:seed=<seed>"``.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    colours = _palette(len(PATTERNS), np.random.default_rng(np.random.SeedSequence([seed, 10**6])))
    names: list[str] = []
    images: list[np.ndarray] = []
    for i, (name, fn) in enumerate(PATTERNS.items()):
        rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
        p = np.asarray(fn(rng, xx, yy), dtype=np.float32)
        p = (p - p.min()) / max(float(p.max() - p.min()), 1e-6)
        dark, light = colours[i]
        rgb = dark + (light - dark) * p[..., None]
        images.append(np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8))
        names.append(name)
    import skimage.data

    for name in SKIMAGE_TEXTURES:
        gray = np.asarray(getattr(skimage.data, name)(), dtype=np.uint8)
        images.append(np.repeat(resize_square(gray, size)[..., None], 3, axis=2))
        names.append(name)
    return TextureBank(names=names, images=images, source=f"{PROCEDURAL_VERSION}:seed={seed}")


def load_textures(path: Path | None, seed: int = 0, size: int = 256, bgr: bool = False) -> TextureBank:
    """Return the DTD bank at ``path`` (paper) or, when ``path`` is None, the procedural bank for ``seed``."""
    if path is not None:
        return load_dtd(Path(path), size=size, bgr=bgr)
    log.info("no DTD folder given: using the procedural texture bank (%s, seed %d)", PROCEDURAL_VERSION, seed)
    bank = procedural_bank(seed=seed, size=size)
    if bgr:
        swapped = [np.ascontiguousarray(i[..., ::-1]) for i in bank.images]
        bank = TextureBank(bank.names, swapped, bank.source + ":bgr", bgr=True)
    return bank
