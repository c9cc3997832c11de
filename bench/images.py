"""Image decoding and the shared pre-processing transform.

Every image goes through :func:`load_rgb` so that broken files fail with a message naming the file and
the fix (never a bare PIL traceback), and grayscale / RGBA / palette images are converted to RGB
(``docs/datasets.md``: some MVTec AD categories are grayscale). What decoding does beyond that is
:data:`DECODING`; it is part of the feature cache key and of every result row:

* the EXIF orientation tag is applied (``PIL.ImageOps.exif_transpose``), so a phone or camera photo stored
  sideways with an orientation tag is seen upright, as every image viewer shows it (the reference code reads
  with ``cv2.imread``, which applies it too);
* 16-bit and 32-bit integer images are min–max scaled to 8 bits; float images (TIFF mode ``F``) with all values
  in [0, 1] are multiplied by 255 (the usual convention for float images), other finite float images are
  min–max scaled like 16-bit ones, and images with NaN or inf are refused (PIL's own conversion would clip
  [0, 1] floats to an all-black image);
* an image larger than PIL's decompression-bomb limit is refused with a message naming it (PIL's error does not).

Pre-processing follows the paper (docs/method-notes.md §4.1): Resize(256) on the shorter side, CenterCrop(224),
normalisation with the backbone's own mean/std (the ImageNet statistics for the paper's ResNets; the caller passes
them, :meth:`bench.features.extractor.FeatureConfig.preprocess`, nothing here assumes a backbone). torchvision.io
cannot decode on this CPU build, so PIL decodes. For images far from
square the centre crop throws away much of the image (MTD's tiles, up to 2.8 : 1: the crop keeps 49 % of the
area on average and misses 162 of 388 defects entirely), so :class:`Preprocess` also offers ``fit="squash"``
(the whole image resized to crop × crop, aspect not kept) and ``fit="letterbox"`` (the longer side resized to
the crop, the rest padded with the normalisation mean). An adapter may declare its preferred fit
(``register_dataset(..., image_fit=...)``); ``--image-fit`` overrides it; it is part of the feature key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bench.errors import ConfigError, DatasetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""The ImageNet statistics in the pretrained configs of timm's ResNets (``timm.data.IMAGENET_DEFAULT_MEAN/STD``). Not a
default of :class:`Preprocess`: the feature key leaves the normalisation out only when it equals these, the one
every key had before the normalisation came from the backbone."""
FITS = ("crop", "squash", "letterbox")
"""How :class:`Preprocess` brings an image to the square network input (see its docstring)."""

DECODING = {
    "exif_orientation": "applied",
    "alpha": "on black",
    "int16_32": "min-max",
    "float": "x255 if in [0,1], else min-max",
}
"""What :func:`load_rgb` does beyond PIL's RGB conversion (recorded in the feature key and every row)."""


def _to_uint8(arr: np.ndarray, p: Path) -> np.ndarray:
    """A 16/32-bit integer or float (H, W) image as uint8: floats in [0, 1] × 255, else min–max (see module)."""
    is_float = np.issubdtype(arr.dtype, np.floating)
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise DatasetError(
            f"image {p} holds NaN or infinite pixel values (a float image), which have no 8-bit equivalent. Export it "
            "as an 8- or 16-bit PNG/TIFF, or remove it from the dataset folder."
        )
    lo, hi = float(arr.min()), float(arr.max())
    if is_float and lo >= 0.0 and hi <= 1.0:
        return np.rint(arr * 255.0).astype(np.uint8)
    return (255.0 * (arr - lo) / max(hi - lo, 1.0 if not is_float else 1e-12)).astype(np.uint8)


def load_rgb(path: str | Path) -> Image.Image:
    """Decode ``path`` fully and return it as an RGB PIL image, upright (EXIF orientation applied).

    Raises:
        DatasetError: the file is missing, empty, truncated, not an image, a float image with NaN/inf, or larger
            than PIL's decompression-bomb limit.
    """
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"image file not found: {p}. Check the dataset root and that the file was not moved.")
    if p.stat().st_size == 0:
        raise DatasetError(f"image file is empty (0 bytes): {p}. Re-copy it from the original dataset or delete it.")
    try:
        with Image.open(p) as im:
            im.load()
            if im.getexif().get(0x0112, 1) != 1:  # Orientation: 1 = upright; the check avoids a copy otherwise
                im = ImageOps.exif_transpose(im)
            if im.mode == "RGB":
                return im.copy()
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                background = Image.new("RGBA", im.size, (0, 0, 0, 255))
                return Image.alpha_composite(background, im).convert("RGB")
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                return Image.fromarray(_to_uint8(np.asarray(im), p)).convert("RGB")
            return im.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise DatasetError(
            f"image {p} is too large to decode safely ({exc}). If the file is genuine, downscale it (every image is "
            "resized to 256 pixels on its shorter side anyway) or remove it from the dataset folder."
        ) from None
    except UnidentifiedImageError:
        raise DatasetError(
            f"not a readable image: {p}. The file has an image extension but PIL cannot identify its format; "
            "replace it with the original file or remove it from the dataset folder."
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(
            f"corrupt or truncated image: {p} ({exc}). Re-copy it from the original dataset or remove it."
        ) from None


TURNED = (5, 6, 7, 8)
"""EXIF orientations that turn an image by 90° (``exif_transpose`` swaps its width and height)."""


def upright_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of ``path`` as :func:`load_rgb` returns it: EXIF orientation applied, so a photo stored
    sideways has its sides swapped. Anything placed on an image (its anomaly map, its mask, a crop) uses this size,
    never the stored one, or it would lie across the picture the features saw.

    Raises:
        DatasetError: the file cannot be read as an image.
    """
    try:
        with Image.open(path) as im:
            w, h = im.size
            turned = im.getexif().get(0x0112, 1) in TURNED
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"not a readable image: {path} ({exc}). Re-copy it or remove it from the dataset folder.") from None
    return (h, w) if turned else (w, h)


@dataclass(frozen=True)
class Preprocess:
    """Resize (shorter side) → center crop → tensor → normalisation (``fit="crop"``, the paper's).

    Attributes:
        resize: target length of the shorter side (``crop`` only).
        crop: side of the square network input.
        fit: ``crop`` (default: resize the shorter side to ``resize``, centre crop ``crop`` × ``crop``; loses the
            ends of elongated images); ``squash`` (resize the whole image to ``crop`` × ``crop``: nothing lost,
            the aspect ratio is not kept); ``letterbox`` (resize the longer side to ``crop`` keeping the aspect,
            pad the shorter one symmetrically with the normalisation mean, i.e. zeros after normalising).
        mean, std: per-channel normalisation of the backbone (RGB, on [0, 1] pixel values), from its pretrained
            configuration (:attr:`bench.features.extractor.FeatureConfig.normalisation`). Needed to make network inputs
            (:meth:`array`, calling the object); :meth:`source_box` (geometry only) works without them.
    """

    resize: int = 256
    crop: int = 224
    fit: str = "crop"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.fit not in FITS:
            raise ConfigError(f"image fit must be one of {', '.join(FITS)}, got {self.fit!r} (--image-fit)")
        if (self.mean is None) != (self.std is None) or (self.mean is not None and (len(self.mean) != 3 or len(self.std or ()) != 3)):
            raise ConfigError(f"Preprocess needs both mean and std, 3 values each (got mean={self.mean}, std={self.std})")

    def array(self, image: Image.Image) -> np.ndarray:
        """Return the normalised image as a float32 array of shape (3, crop, crop)."""
        w, h = image.size
        c = self.crop
        if self.fit == "squash":
            return self._normalise(image if (w, h) == (c, c) else image.resize((c, c), Image.BILINEAR))
        if self.fit == "letterbox":
            scale = c / max(w, h)
            nw, nh = max(1, min(c, round(w * scale))), max(1, min(c, round(h * scale)))
            content = self._normalise(image if (nw, nh) == (w, h) else image.resize((nw, nh), Image.BILINEAR))
            out = np.zeros((3, c, c), np.float32)
            top, left = (c - nh) // 2, (c - nw) // 2
            out[:, top : top + nh, left : left + nw] = content
            return out
        scale = self.resize / min(w, h)
        nw, nh = max(c, round(w * scale)), max(c, round(h * scale))
        if (nw, nh) != (w, h):
            image = image.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - c) // 2, (nh - c) // 2
        return self._normalise(image.crop((left, top, left + c, top + c)))

    def source_box(self, size: tuple[int, int]) -> tuple[float, float, float, float]:
        """The part of a ``size`` = (width, height) image that reaches the network, as (left, top, right, bottom)
        in source pixels: the centre-crop window for ``crop``, the whole image for ``squash`` and ``letterbox``.

        Pixels whose centres lie outside it are never seen (``benchmarks/image_fit.py`` measures how much of each
        defect mask that is); maps on the network grid cover exactly this box.
        """
        w, h = size
        if self.fit != "crop":
            return (0.0, 0.0, float(w), float(h))
        scale = self.resize / min(w, h)
        nw, nh = max(self.crop, round(w * scale)), max(self.crop, round(h * scale))
        left, top = (nw - self.crop) // 2, (nh - self.crop) // 2
        sx, sy = nw / w, nh / h
        return (left / sx, top / sy, (left + self.crop) / sx, (top + self.crop) / sy)

    def _normalise(self, image: Image.Image) -> np.ndarray:
        """(H, W) RGB image → (3, H, W) float32, normalised with :attr:`mean` / :attr:`std`."""
        if self.mean is None or self.std is None:
            raise ValueError("Preprocess was built without mean/std: use FeatureConfig.preprocess() (the backbone's own)")
        arr = np.asarray(image, dtype=np.float32) / 255.0
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def __call__(self, path: str | Path) -> np.ndarray:
        return self.array(load_rgb(path))
