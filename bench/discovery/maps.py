"""Anomaly maps for discovery, and the frame that maps, masks and crops share.

**The frame.** Every image is seen as the feature extractor sees it: its image fit (``crop``: resize + centre crop,
``squash`` or ``letterbox``; :class:`bench.images.Preprocess`) on a ``side`` × ``side`` grid, 224 by default.
PatchCore's maps live there natively; ground-truth masks and maps written by other detectors are brought there by
the same geometry (:meth:`Frame.to_frame`), so MEBin's 6 × 6 erosion acts on one scale whatever the detector's
resolution. Crops are cut from the *source* image (:meth:`Frame.source_box`), at its full resolution.

**Maps.** Two sources (docs/tasks.md, "Anomaly class discovery"):

* ``patchcore`` (default): the harness's PatchCore with the category's full-train memory bank (the run's coreset
  ratio and seed): the distance of every patch to its nearest bank vector (:meth:`bench.features.store.FeatureStore.
  anomaly_maps`), bilinearly upsampled to the frame and smoothed with a Gaussian of σ = 4 px as PatchCore's reference
  does; then min–max normalised *jointly over all maps of the set* and stored as uint8, as AnomalyNCD's reference
  reads its maps (8-bit PNG files written that way by the detector scripts).
* ``png`` (``--maps PATH``): 8-bit grey PNG files written by any detector, ``PATH/<category>/<type>/<image stem>.png``
  (the layout of AnomalyNCD's map folders), each covering its whole source image; read as they are (the writer
  normalised them) and brought to the frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from PIL import Image

from bench.errors import DatasetError
from bench.images import FITS, Preprocess, load_rgb

if TYPE_CHECKING:
    from bench.features.knn import MemoryBank
    from bench.features.store import FeatureStore

PATCHCORE_SIGMA = 4.0
"""Gaussian smoothing of PatchCore's upsampled maps, in frame pixels (PatchCore's reference: σ = 4)."""


@dataclass(frozen=True)
class Frame:
    """The square grid on which maps and masks are compared (see the module docstring).

    Attributes:
        fit: the image fit of the run's features (``crop``, ``squash``, ``letterbox``).
        side: pixels per side (the feature extractor's input, 224).
        resize: shorter side before the centre crop (``crop`` only; the extractor's 256).
    """

    fit: str = "crop"
    side: int = 224
    resize: int = 256

    def __post_init__(self) -> None:
        if self.fit not in FITS:
            raise ValueError(f"image fit must be one of {', '.join(FITS)}, got {self.fit!r}")

    def _pre(self) -> Preprocess:
        return Preprocess(resize=self.resize, crop=self.side, fit=self.fit)

    def content(self, size: tuple[int, int]) -> tuple[float, float, float, float, float, float, float, float]:
        """How frame coordinates map to source pixels for a ``size`` = (W, H) image: ``(fx0, fy0, fx1, fy1, sx0,
        sy0, sx1, sy1)``: the frame rectangle that shows the image (all of it except letterbox padding) and the
        source rectangle it shows (continuous coordinates, a pixel i spans [i, i + 1))."""
        w, h = size
        s = float(self.side)
        if self.fit == "letterbox":
            scale = self.side / max(w, h)
            nw, nh = max(1, min(self.side, round(w * scale))), max(1, min(self.side, round(h * scale)))
            top, left = (self.side - nh) // 2, (self.side - nw) // 2
            return (float(left), float(top), float(left + nw), float(top + nh), 0.0, 0.0, float(w), float(h))
        return (0.0, 0.0, s, s, *self._pre().source_box(size))

    def source_box(self, box: Sequence[float], size: tuple[int, int]) -> tuple[float, float, float, float]:
        """A frame box (left, top, right, bottom) in source pixels of a ``size`` = (W, H) image (not clipped)."""
        fx0, fy0, fx1, fy1, sx0, sy0, sx1, sy1 = self.content(size)
        ax, ay = (sx1 - sx0) / (fx1 - fx0), (sy1 - sy0) / (fy1 - fy0)
        return (sx0 + (box[0] - fx0) * ax, sy0 + (box[1] - fy0) * ay, sx0 + (box[2] - fx0) * ax, sy0 + (box[3] - fy0) * ay)

    def source_pixels_per_frame_pixel(self, size: tuple[int, int]) -> float:
        """Source pixel area covered by one frame pixel (to express a mask area in source pixels)."""
        fx0, fy0, fx1, fy1, sx0, sy0, sx1, sy1 = self.content(size)
        return float((sx1 - sx0) / (fx1 - fx0) * (sy1 - sy0) / (fy1 - fy0))

    def to_frame(self, a: np.ndarray, nearest: bool = False) -> np.ndarray:
        """An array covering a whole source image (at any resolution, same aspect) as seen in the frame.

        Args:
            a: (h, w) or (h, w, 3); float32 or uint8.
            nearest: nearest-neighbour interpolation (masks) instead of bilinear.

        Returns:
            (side, side[, 3]) of the same dtype; letterbox padding is 0.
        """
        resample = Image.NEAREST if nearest else Image.BILINEAR
        img = Image.fromarray(a if a.ndim == 3 or a.dtype == np.uint8 else a.astype(np.float32))
        w, h = img.size
        fx0, fy0, fx1, fy1, sx0, sy0, sx1, sy1 = self.content((w, h))
        if self.fit == "letterbox":
            out = np.zeros((self.side, self.side, *a.shape[2:]), a.dtype)
            nw, nh = int(fx1 - fx0), int(fy1 - fy0)
            out[int(fy0) : int(fy0) + nh, int(fx0) : int(fx0) + nw] = np.asarray(img.resize((nw, nh), resample))
            return out
        return np.asarray(img.resize((self.side, self.side), resample, box=(sx0, sy0, sx1, sy1))).astype(a.dtype)


def load_mask(mask_path: str, image_path: str, frame: Frame) -> np.ndarray:
    """A ground-truth mask file (> 127 = defect) as a (side, side) bool array in the frame; ``""`` = no defect.

    Raises:
        DatasetError: the mask cannot be read.
    """
    if not mask_path:
        return np.zeros((frame.side, frame.side), bool)
    try:
        with Image.open(mask_path) as im:
            m = np.asarray(im.convert("L")) > 127
    except OSError as exc:
        raise DatasetError(f"cannot read the mask {mask_path} of image {image_path} ({exc}).") from None
    return frame.to_frame(m.astype(np.uint8) * 255, nearest=True) > 127


def frame_image(path: str, frame: Frame) -> np.ndarray:
    """The image as the frame shows it: (side, side, 3) uint8 (pictures, e.g. ``bench show-crops``)."""
    return frame.to_frame(np.asarray(load_rgb(path)))


def normalise_jointly(maps: np.ndarray) -> np.ndarray:
    """Min–max over *all* maps of the set at once, × 255, as 8 bits (AnomalyNCD's detector scripts write their PNG
    maps so; a constant set gives zeros). (N, H, W) float → (N, H, W) uint8."""
    lo, hi = float(maps.min()), float(maps.max())
    if hi <= lo:
        return np.zeros(maps.shape, np.uint8)
    return np.clip((maps - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)


@dataclass
class MapSet:
    """The anomaly maps of a discovery set.

    Attributes:
        maps: (N, side, side) uint8, jointly normalised (see the module docstring).
        info: where they come from (goes into every row of a method that reads them).
    """

    maps: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def patchcore_maps(store: "FeatureStore", bank: "MemoryBank", paths: Sequence[str], frame: Frame) -> MapSet:
    """PatchCore maps of ``paths`` in the frame, jointly normalised (module docstring).

    The feature grid (h × w, 28 × 28 for a 224 input) covers exactly the frame, so it is upsampled to it.
    """
    import torch
    import torch.nn.functional as F
    from scipy.ndimage import gaussian_filter

    grid = store.anomaly_maps(list(paths), bank)  # (N, h, w) Euclidean distances
    up = F.interpolate(torch.from_numpy(grid)[:, None], size=(frame.side, frame.side), mode="bilinear", align_corners=False)
    up = up[:, 0].numpy()
    smooth = np.stack([gaussian_filter(m, sigma=PATCHCORE_SIGMA) for m in up]).astype(np.float32)
    info = {"source": "patchcore", "bank": bank.key, "bank_size": len(bank), "grid": list(grid.shape[1:]),
            "side": frame.side, "sigma": PATCHCORE_SIGMA, "normalisation": "joint min-max over the set, x255, uint8",
            "raw_range": [float(smooth.min()), float(smooth.max())]}  # fmt: skip
    return MapSet(normalise_jointly(smooth), info)


def png_map_paths(root: str | Path, category: str, labels: Sequence[str], paths: Sequence[str]) -> list[Path]:
    """Where ``--maps`` keeps the map of each image: ``root/<category>/<type>/<image stem>.png``."""
    return [Path(root) / category / lab / f"{Path(p).stem}.png" for lab, p in zip(labels, paths)]


def png_maps(map_paths: Sequence[Path], image_paths: Sequence[str], frame: Frame, root: str | Path) -> MapSet:
    """8-bit PNG maps (any size, each covering its whole image) brought to the frame, values kept.

    Raises:
        DatasetError: a map is missing or unreadable (naming the expected file).
    """
    out = np.empty((len(map_paths), frame.side, frame.side), np.uint8)
    for i, (mp, ip) in enumerate(zip(map_paths, image_paths)):
        if not mp.is_file():
            raise DatasetError(
                f"--maps {root}: no anomaly map {mp} for image {ip}. Maps are read as <maps>/<category>/<type>/"
                "<image name>.png (8-bit grey), one per test image."
            )
        try:
            with Image.open(mp) as im:
                a = np.asarray(im.convert("L"))
        except OSError as exc:
            raise DatasetError(f"--maps: cannot read the anomaly map {mp} ({exc}).") from None
        out[i] = frame.to_frame(a)
    info = {"source": "png", "root": str(root), "side": frame.side, "normalisation": "as written (8-bit PNG)"}
    return MapSet(out, info)
