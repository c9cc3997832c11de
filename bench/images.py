"""Image decoding and the shared pre-processing transform.

Every image goes through :func:`load_rgb` so that broken files fail with a message naming the file and
the fix (never a bare PIL traceback), and grayscale / RGBA / palette images are converted to RGB
(``../shared/docs/datasets.md``: some MVTec AD categories are grayscale).

Pre-processing follows the paper (method-spec §4.1): Resize(256) on the shorter side, CenterCrop(224),
ImageNet normalisation. torchvision.io cannot decode on this CPU build, so PIL decodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from bench.errors import DatasetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_rgb(path: str | Path) -> Image.Image:
    """Decode ``path`` fully and return it as an RGB PIL image.

    Raises:
        DatasetError: the file is missing, empty, truncated or not an image.
    """
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"image file not found: {p}. Check the dataset root and that the file was not moved.")
    if p.stat().st_size == 0:
        raise DatasetError(f"image file is empty (0 bytes): {p}. Re-copy it from the original dataset or delete it.")
    try:
        with Image.open(p) as im:
            im.load()
            if im.mode == "RGB":
                return im.copy()
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                background = Image.new("RGBA", im.size, (0, 0, 0, 255))
                return Image.alpha_composite(background, im).convert("RGB")
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                arr = (255.0 * (arr - arr.min()) / max(arr.max() - arr.min(), 1.0)).astype(np.uint8)
                return Image.fromarray(arr).convert("RGB")
            return im.convert("RGB")
    except UnidentifiedImageError:
        raise DatasetError(
            f"not a readable image: {p}. The file has an image extension but PIL cannot identify its format; "
            "replace it with the original file or remove it from the dataset folder."
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(
            f"corrupt or truncated image: {p} ({exc}). Re-copy it from the original dataset or remove it."
        ) from None


@dataclass(frozen=True)
class Preprocess:
    """Resize (shorter side) → center crop → tensor → ImageNet normalisation.

    Attributes:
        resize: target length of the shorter side.
        crop: side of the square center crop.
    """

    resize: int = 256
    crop: int = 224

    def array(self, image: Image.Image) -> np.ndarray:
        """Return the normalised image as a float32 array of shape (3, crop, crop)."""
        w, h = image.size
        scale = self.resize / min(w, h)
        nw, nh = max(self.crop, round(w * scale)), max(self.crop, round(h * scale))
        if (nw, nh) != (w, h):
            image = image.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - self.crop) // 2, (nh - self.crop) // 2
        image = image.crop((left, top, left + self.crop, top + self.crop))
        arr = np.asarray(image, dtype=np.float32) / 255.0
        arr = (arr - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def __call__(self, path: str | Path) -> np.ndarray:
        return self.array(load_rgb(path))
