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
* ``png`` (``--maps PATH``): grey PNG files of 8 or 16 bits written by any detector (``bench maps`` writes both),
  ``PATH/<category>/<type>/<image stem>.png`` (the layout of AnomalyNCD's map folders; images of one type that share
  a stem keep their whole file name, :func:`bench.detection.maps.map_names`), each covering its whole upright source
  image; read as they are (the writer normalised them: a 16-bit value v counts as v / 257 on the 8-bit scale) and
  brought to the frame. :func:`read_map` is the one reader; it refuses what would pass silently as a wrong map: a
  colour or float file, NaN or infinite values, a map saturated at the top of its scale, a map whose aspect differs
  from its image's; :func:`png_maps` refuses a set whose maps are all constant (one flat map, a normal image's, is
  a detector's honest answer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from PIL import Image

from bench.detection.maps import map_names
from bench.errors import DatasetError
from bench.images import FITS, Preprocess, load_rgb, upright_size

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


def fits_image(size: tuple[int, int], image_size: tuple[int, int]) -> bool:
    """Whether an array of ``size`` = (w, h) can cover an image of ``image_size``: the same size, or scaled (the same
    aspect ratio, up to the rounding of each side)."""
    (w, h), (iw, ih) = size, image_size
    return abs(w * ih - h * iw) <= (iw + ih) / 2


def size_mismatch(size: tuple[int, int], image_path: str) -> str | None:
    """Why an array of ``size`` = (w, h) does not fit its image (:func:`fits_image`); ``None`` when it does."""
    isize = upright_size(image_path)
    if fits_image(size, isize):
        return None
    why = (f"is {size[0]}×{size[1]} px but its image {image_path} is {isize[0]}×{isize[1]} (upright): it must cover "
           "the whole image, at its size or scaled")  # fmt: skip
    if fits_image(size[::-1], isize):
        why += " (this one is turned by 90°: write it at the upright orientation, EXIF applied, as the features see it)"
    return why


def read_mask(mask_path: str, image_path: str) -> np.ndarray:
    """A ground-truth mask file (> 127 = defect) as a bool array at its own resolution, checked to cover its image.

    Raises:
        DatasetError: the mask is missing, unreadable or of another shape than its image (naming the file).
    """
    if not Path(mask_path).is_file():
        raise DatasetError(f"the mask {mask_path} of image {image_path} is missing: restore it (or drop the methods "
                           "that read ground-truth masks).")  # fmt: skip
    try:
        with Image.open(mask_path) as im:
            m = np.asarray(im.convert("L")) > 127
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"cannot read the mask {mask_path} of image {image_path} ({exc}).") from None
    bad = size_mismatch((m.shape[1], m.shape[0]), image_path)
    if bad:
        raise DatasetError(f"the mask {mask_path} {bad}.")
    return m


def load_mask(mask_path: str, image_path: str, frame: Frame) -> np.ndarray:
    """A ground-truth mask file (> 127 = defect) as a (side, side) bool array in the frame; ``""`` = no defect.

    Raises:
        DatasetError: see :func:`read_mask`.
    """
    if not mask_path:
        return np.zeros((frame.side, frame.side), bool)
    m = read_mask(mask_path, image_path)
    return frame.to_frame(m.astype(np.uint8) * 255, nearest=True) > 127


def check_defect_masks(image_paths: Sequence[str], mask_paths: Sequence[str], types: Sequence[str]) -> None:
    """Before an oracle reads ground-truth masks in place of anomaly maps: every defect image (``types`` not
    ``good``) has a mask that :func:`read_mask` accepts, and no defect type has only empty masks. Without this a
    defect image without its mask, or a type whose masks are blank, would be one whole-image crop and the oracle's
    score would mean nothing. A few empty masks are real (4 of MTD's 392 ``uneven`` masks are blank) and pass.
    A set without any mask is left to :meth:`bench.discovery.contract.DiscoverySet.gt_masks`, which says so.

    Raises:
        DatasetError: naming the image or mask file, or the type and one of its masks.
    """
    defects = [(p, m, t) for p, m, t in zip(image_paths, mask_paths, types) if t != "good"]
    if not any(m for _, m, _ in defects):
        return
    lacking = [p for p, m, _ in defects if not m]
    if lacking:
        raise DatasetError(f"{len(lacking)} defect image(s) have no ground-truth mask, e.g. {lacking[0]}: an oracle reads "
                           "one for every defect image; restore the masks (or drop the methods that read them).")  # fmt: skip
    marked: dict[str, bool] = {}
    first: dict[str, str] = {}
    for p, m, t in defects:
        first.setdefault(t, m)
        marked[t] = marked.get(t, False) or bool(read_mask(m, p).any())
    blank = [t for t, any_px in marked.items() if not any_px]
    if blank:
        raise DatasetError(f"every ground-truth mask of defect type {blank[0]!r} is empty (no pixel above 127), e.g. "
                           f"{first[blank[0]]}: an oracle would crop whole images. Restore the masks (or drop the "
                           "methods that read them).")  # fmt: skip


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


def smoothed_patchcore_maps(store: "FeatureStore", bank: "MemoryBank", paths: Sequence[str], frame: Frame) -> np.ndarray:
    """PatchCore's maps of ``paths`` on the frame, not normalised: (N, side, side) float32, the nearest-bank distance
    of every patch bilinearly upsampled to the frame and smoothed with σ = :data:`PATCHCORE_SIGMA` px (the discovery
    maps, :func:`patchcore_maps`, and classification's estimated masks, :mod:`bench.classification.localise`)."""
    import torch
    import torch.nn.functional as F
    from scipy.ndimage import gaussian_filter

    grid = store.anomaly_maps(list(paths), bank)  # (N, h, w) Euclidean distances
    if not len(grid):
        return np.zeros((0, frame.side, frame.side), np.float32)
    up = F.interpolate(torch.from_numpy(grid)[:, None], size=(frame.side, frame.side), mode="bilinear", align_corners=False)
    return np.stack([gaussian_filter(m, sigma=PATCHCORE_SIGMA) for m in up[:, 0].numpy()]).astype(np.float32)


def patchcore_maps(store: "FeatureStore", bank: "MemoryBank", paths: Sequence[str], frame: Frame) -> MapSet:
    """PatchCore maps of ``paths`` in the frame, jointly normalised (module docstring).

    The feature grid (h × w, 28 × 28 for a 224 input) covers exactly the frame, so it is upsampled to it.
    """
    smooth = smoothed_patchcore_maps(store, bank, paths, frame)
    info = {"source": "patchcore", "bank": bank.key, "bank_size": len(bank), "grid": list(store.grid),
            "side": frame.side, "sigma": PATCHCORE_SIGMA, "normalisation": "joint min-max over the set, x255, uint8",
            "raw_range": [float(smooth.min()), float(smooth.max())]}  # fmt: skip
    return MapSet(normalise_jointly(smooth), info)


def png_map_paths(root: str | Path, category: str, labels: Sequence[str], paths: Sequence[str]) -> list[Path]:
    """Where ``--maps`` keeps the map of each image: ``root/<category>/<type>/<image stem>.png``, by the rule
    ``bench maps`` writes them with (:func:`bench.detection.maps.map_names`)."""
    return [Path(root) / category / name for name in map_names(labels, paths)]


def read_map(path: Path, image_path: str, root: str | Path) -> np.ndarray:
    """One PNG anomaly map as float32 on the 8-bit scale [0, 255], at its own resolution (module docstring).

    8-bit grey maps are read as they are, 16-bit ones (``bench maps --bits 16``, or another writer's) scaled by
    255 / 65535 (PIL's own conversion to 8 bits would clip them to 255: a saturated map).

    Raises:
        DatasetError: the map is missing or unreadable, colour, float, non-finite, saturated (every pixel at the top
            of its scale), or does not cover its image (:func:`fits_image`): each names the file.
    """
    where = f"--maps {root}: the anomaly map {path}"
    if not path.is_file():
        raise DatasetError(f"--maps {root}: no anomaly map {path} for image {image_path}. Maps are read as <maps>/"
                           "<category>/<type>/<image name>.png (8- or 16-bit grey), one per test image.")  # fmt: skip
    try:
        with Image.open(path) as im:
            im.load()
            mode, fmt, a = im.mode, im.format, np.asarray(im)
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{where} cannot be read ({exc}).") from None
    fix = "write it as a grey PNG of 8 or 16 bits, min-max normalised over the set (as bench maps does)"
    if mode == "L":
        scale = 1.0
    elif mode.startswith("I;16") or (mode == "I" and fmt == "PNG" and a.min() >= 0 and a.max() <= 65535):
        scale = 255.0 / 65535.0
    elif mode == "F" and not np.isfinite(a).all():
        raise DatasetError(f"{where} holds NaN or infinite values: {fix}.")
    elif mode == "F":
        raise DatasetError(f"{where} is a float image (mode F), not a map of 8 or 16 bits: {fix}.")
    else:
        raise DatasetError(f"{where} is a {mode} image, not a single-channel grey map of 8 or 16 bits: {fix}.")
    if a.min() == a.max() == (255 if mode == "L" else 65535):
        raise DatasetError(f"{where} is constant at the top of its scale (every pixel {a.flat[0]}): a saturated or "
                           f"clipped file; {fix}.")  # fmt: skip
    bad = size_mismatch((a.shape[1], a.shape[0]), image_path)
    if bad:
        raise DatasetError(f"{where} {bad}.")
    return a.astype(np.float32) * np.float32(scale)


def png_maps(map_paths: Sequence[Path], image_paths: Sequence[str], frame: Frame, root: str | Path) -> MapSet:
    """PNG maps of 8 or 16 bits (:func:`read_map`) brought to the frame on the 8-bit scale, values kept.

    Raises:
        DatasetError: see :func:`read_map`.
    """
    out = np.empty((len(map_paths), frame.side, frame.side), np.uint8)
    flat = 0
    for i, (mp, ip) in enumerate(zip(map_paths, image_paths)):
        a = read_map(mp, ip, root)
        flat += int(a.min() == a.max())
        out[i] = np.clip(np.rint(frame.to_frame(a)), 0, 255).astype(np.uint8)
    if map_paths and flat == len(map_paths):
        raise DatasetError(f"--maps {root}: every anomaly map of the set is constant (e.g. {map_paths[0]}): they mark "
                           "nothing. Write each map as a grey PNG of 8 or 16 bits, min-max normalised over the set (as "
                           "bench maps does).")  # fmt: skip
    info = {"source": "png", "root": str(root), "side": frame.side, "normalisation": "as written (8 bits; 16 bits / 257)"}
    return MapSet(out, info)
