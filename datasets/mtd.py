"""MTD, the Magnetic Tile Defect dataset (Huang, Qiu, Yuan, "Surface defect saliency of magnetic tile", The
Visual Computer 2020 / CASE 2018; ``abin24/Magnetic-tile-defect-datasets.``), in its published layout::

    <root>/MT_Free/Imgs/<name>.jpg        952 defect-free tiles (the mask <name>.png beside each, blank)
    <root>/MT_<Type>/Imgs/<name>.jpg      MT_Blowhole 115, MT_Break 85, MT_Crack 57, MT_Fray 32, MT_Uneven 103
    <root>/MT_<Type>/Imgs/<name>.png      the pixel mask of <name>.jpg

``--data-root`` is the folder holding the ``MT_*`` folders (``Magnetic-Tile-Defect`` in the download).

Choices made here:

* **One category, ``magnetic_tile``.** MTD photographs one product; its five folders are defect types of that
  product, exactly like the defect folders of one MVTec AD category. The category is named after the product
  (as MVTec's ``screw``), not the dataset, so that rows read "magnetic_tile, 5 types".
* **Labels** are the folder names without ``MT_``, lower-cased (``blowhole``, ``break``, ``crack``, ``fray``,
  ``uneven``). The mask of every defect image goes into ``mask_path``; a defect image without its mask is an
  error (the mask is what pixel metrics and the crop measurement in the README read). ``MT_Free`` masks are not
  needed and not checked.
* **Folders.** The published layout has exactly six folders, :data:`FREE` and :data:`TYPES`; they are matched
  regardless of letter case (a copy through a case-insensitive file system or an archiver may lower-case them).
  Two folders that differ only in case (``MT_Crack`` and ``MT_crack``) are refused: lower-casing made them one
  class, so a copy of the support image landed among the queries. Any other ``MT_*`` folder (``MT_Crack_old``,
  ``MT_Crack copy``, ``MT_``) is **left out with a warning, not read as a type and not refused**: ``mtd`` names
  one published dataset, and a row labelled ``mtd`` must mean its classes, whatever else sits beside them.
  Reading such a folder made a backup a sixth class of duplicates (and ``MT_`` a class with an empty name);
  refusing it would make a user move a harmless backup out of a dataset that is otherwise intact, for results
  that would be the same. Defect types of one's own belong in ``--dataset folder`` (the MVTec layout). Copies
  of an image across folders are refused by the run's image check
  (:func:`bench.datasets._base.check_image_files`, the same byte hashes as the job keys).
* **The hold-out of normal images.** MTD has no train/test split and no defect-free test set, but detection
  (``bench detect``, ``docs/tasks.md``) and the ``--include-good`` setting need normal *test*
  images that the memory bank never saw. :data:`HOLDOUT_SHARE` = 20 % of ``MT_Free`` (190 of 952) becomes
  ``test/good``; the other 80 % (762) are ``train/good``, the only images ``train_paths`` (memory bank,
  pseudo-defects, detection shots) can draw from. 20 % because it gives the detection test set 190 normals
  against 392 defective images (0.48 normals per defect; MVTec AD has 467 : 1,258 = 0.37), enough for a
  stable AUROC, while the bank keeps 762 normals, more than any MVTec AD category has (60–391); a count
  matching the 392 defects would make ``good`` half of every ``--include-good`` query set (50 % majority
  rate) and cost the bank 40 % of its images. Which files: the ``round(0.2·N)`` (at least 1, at most N−1)
  ``MT_Free`` files with the smallest ``stable_int(HOLDOUT_SEED, "mtd-holdout", file name)``. The rank
  depends on the file name only, so the choice is the same on every machine, in every file-system order and
  wherever the dataset lives, and adding or removing one unrelated file moves at most one other file across
  the line. :data:`HOLDOUT_SEED` is fixed (0), never the run seed: every seed of a run must see the same bank
  and test set. The rule, share, seed, counts and a hash of the held-out names are recorded in
  ``Samples.info`` (every result row's ``dataset_info``); the split itself is part of ``dataset_manifest``.
* **Image size.** The tiles are grayscale strips of 103–632 × 222–403 px (aspect up to 2.8 : 1); the paper's
  Resize(256) + CenterCrop(224) keeps 49 % of a tile's area on average and, measured on the 388 defect images
  with a non-empty mask (``python benchmarks/image_fit.py --dataset mtd --data-root ...``), leaves 54 % of the
  mask area outside the crop (63 % per image on average) and 162 defects entirely outside it (67 of 85
  breaks: they sit at the tile's ends). The adapter therefore declares ``image_fit="squash"`` (the whole image
  resized to 224 × 224, aspect not kept; ``letterbox`` would shrink a 2.8 : 1 strip to 224 × 80 and pad the
  rest) as its default; ``--image-fit crop`` gives the paper's pipeline. See ``bench.images.Preprocess``.

Every image and mask header is read when the dataset is scanned (about 0.4 s for the 2,688 files, cold): a
file that is empty or not an image, or a mask whose size differs from its image, stops the run at once with
the path and the fix, instead of failing jobs later.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from bench.datasets._base import (
    SAMPLE_COLUMNS,
    DatasetOptions,
    Samples,
    check_root,
    list_images,
    refuse_case_collisions,
    register_dataset,
)
from bench.errors import DatasetError, brief_list
from bench.seeding import stable_int

log = logging.getLogger(__name__)

CATEGORY = "magnetic_tile"
FREE = "MT_Free"
TYPES = ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven")
HOLDOUT_SHARE = 0.2
HOLDOUT_SEED = 0
HOLDOUT_RULE = (
    "smallest stable_int(seed, 'mtd-holdout', file name) of MT_Free; n = round(share * N) clamped to [1, N-1]"
)
IMAGE_EXTS = (".jpg", ".jpeg")

HINT = (
    "Download MTD (github.com/abin24/Magnetic-tile-defect-datasets.) and pass --data-root PATH where PATH "
    "holds MT_Free/, MT_Blowhole/, MT_Break/, ... (the folder Magnetic-Tile-Defect of the download)."
)


def holdout_names(names: list[str], share: float = HOLDOUT_SHARE, seed: int = HOLDOUT_SEED) -> list[str]:
    """The names of the ``MT_Free`` images held out as ``test/good`` (sorted); see the module docstring.

    Args:
        names: file names of the defect-free images (any order; duplicates are not expected).
        share: fraction held out.
        seed: the hold-out seed (fixed for the dataset, not the run seed).
    """
    if len(names) < 2:
        raise DatasetError(
            f"MTD needs at least 2 defect-free images in {FREE}/Imgs (one for the memory bank, one held out as "
            f"test/good), found {len(names)}. Restore {FREE} from the original download."
        )
    n = min(len(names) - 1, max(1, round(share * len(names))))
    ranked = sorted(names, key=lambda name: (stable_int(seed, "mtd-holdout", name), name))
    return sorted(ranked[:n])


def mtd_folders(root: Path) -> dict[str, Path]:
    """MTD's published folders found in ``root``, by published name (:data:`FREE`, :data:`TYPES`), matched
    regardless of letter case; see the module docstring (Folders) for what happens to the others.

    Raises:
        DatasetError: two ``MT_*`` folders differ only in letter case.
    """
    found = sorted(p for p in root.iterdir() if p.is_dir() and p.name[:3].upper() == "MT_")
    refuse_case_collisions(root, [p.name for p in found], "MTD")
    published = {name.casefold(): name for name in (FREE, *TYPES)}
    folders = {published[p.name.casefold()]: p for p in found if p.name.casefold() in published}
    others = [p.name for p in found if p.name.casefold() not in published]
    if others:
        log.warning(
            "MTD at %s: left out %s: not one of MTD's published folders (%s), so not a defect type (a backup or "
            "copy?); use --dataset folder for defect types of your own", root, ", ".join(f"{n}/" for n in others),
            ", ".join((FREE, *TYPES)),
        )
    return folders


def _wrong_root_hint(root: Path) -> str:
    """Why ``root`` is not the MTD root, with the folder to pass instead when it can be found nearby."""
    if root.name.startswith("MT_") and (root / "Imgs").is_dir():
        return f"it is one type folder of MTD; pass its parent: --data-root {root.parent}"
    if root.name == "Imgs" and root.parent.name.startswith("MT_"):
        return f"it is the image folder of one MTD type; pass --data-root {root.parent.parent}"
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        if (child / FREE).is_dir() or any(child.glob("MT_*/Imgs")):
            return f"it holds the MTD folder {child.name}/; pass --data-root {child}"
    return f"no MT_* folders in it. {HINT}"


def _check_header(path: Path) -> tuple[int, int]:
    """(width, height) from the file header; :class:`DatasetError` naming the file when it is not an image."""
    if path.stat().st_size == 0:
        raise DatasetError(
            f"image file is empty (0 bytes): {path}. Re-copy it from the original MTD download or delete it."
        )
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(
            f"not a readable image: {path} ({type(exc).__name__}). Re-copy it from the original MTD download or remove "
            "it (with its mask)."
        ) from None


def _scan_type(folder: Path, need_masks: bool) -> list[tuple[Path, Path | None]]:
    """(image, mask) pairs of one ``MT_<Type>`` folder, sorted by name, with headers checked."""
    imgs_dir = folder / "Imgs"
    if not imgs_dir.is_dir():
        raise DatasetError(
            f"{imgs_dir} is missing: MTD keeps the images of {folder.name} in {folder.name}/Imgs/<name>.jpg. "
            "Restore the folder from the original download or remove it."
        )
    files = list_images(imgs_dir)
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTS]
    if not images:
        raise DatasetError(
            f"no .jpg images in {imgs_dir}: MTD keeps them as {folder.name}/Imgs/<name>.jpg with the mask <name>.png "
            "beside each. Restore the folder from the original download or remove it."
        )
    masks = {p.stem: p for p in files if p.suffix.lower() == ".png"}
    pairs: list[tuple[Path, Path | None]] = []
    for img in images:
        size = _check_header(img)
        mask = masks.get(img.stem)
        if need_masks:
            if mask is None:
                raise DatasetError(
                    f"defect image {img} has no mask {img.with_suffix('.png').name} beside it. Restore the mask from "
                    "the original MTD download, or remove the image."
                )
            msize = _check_header(mask)
            if msize != size:
                raise DatasetError(
                    f"mask {mask} is {msize[0]}×{msize[1]} px but its image {img.name} is {size[0]}×{size[1]}: "
                    "they do not belong together. Restore both from the original MTD download."
                )
        pairs.append((img, mask if need_masks else None))
    return pairs


def scan_mtd(root: Path, options: DatasetOptions) -> Samples:
    """Scan the MTD layout into the sample table (one category, the ``MT_Free`` hold-out as ``test/good``)."""
    if options.categories and set(options.categories) != {CATEGORY}:
        other = brief_list([c for c in options.categories if c != CATEGORY])
        raise DatasetError(
            f"category {other} not found in MTD at {root}: MTD has one category, {CATEGORY!r}. Check --categories."
        )
    folders = mtd_folders(root)
    type_dirs = [folders[t] for t in TYPES if t in folders]
    if FREE not in folders:
        if not type_dirs:
            raise DatasetError(f"dataset root {root} is not the MTD folder: {_wrong_root_hint(root)}")
        raise DatasetError(
            f"{root / FREE} is missing: MTD's defect-free images are needed for the memory bank and the test/good "
            f"hold-out. Restore {FREE}/Imgs from the original download."
        )
    missing = [t for t in TYPES if t not in folders]
    if missing:
        log.warning("MTD at %s lacks the defect type folder(s) %s; using the types found", root, ", ".join(missing))
    free = _scan_type(folders[FREE], need_masks=False)
    held = set(holdout_names([img.name for img, _ in free]))
    rows: list[dict[str, str]] = []

    def add(split: str, label: str, img: Path, mask: Path | None) -> None:
        rows.append(dict(dataset="mtd", category=CATEGORY, split=split, label=label, name=img.name,
                         image_path=str(img.resolve()), mask_path=str(mask.resolve()) if mask else ""))

    for img, _ in free:
        add("test" if img.name in held else "train", "good", img, None)
    for name in TYPES:
        if name not in folders:
            continue
        label = name[3:].lower()
        for img, mask in _scan_type(folders[name], need_masks=True):
            add("test", label, img, mask)
    table = pd.DataFrame(rows, columns=SAMPLE_COLUMNS)
    info = {
        "holdout": {
            "source": FREE,
            "share": HOLDOUT_SHARE,
            "seed": HOLDOUT_SEED,
            "rule": HOLDOUT_RULE,
            "n_test_good": len(held),
            "n_train_good": len(free) - len(held),
            "names_sha256": hashlib.sha256("\n".join(sorted(held)).encode()).hexdigest()[:16],
        }
    }
    return Samples(dataset="mtd", root=root, table=table, info=info)


@register_dataset(
    "mtd",
    description="Magnetic Tile Defect, published layout (--data-root the folder holding MT_Free/, MT_Crack/, ...)",
    image_fit="squash",
)
def mtd(root: Path | None, options: DatasetOptions) -> Samples:
    """MTD in its published layout: one category ``magnetic_tile``, five defect types, a recorded normal hold-out."""
    root = check_root(root, "mtd", HINT)
    return scan_mtd(root, options)


def write_mtd(
    root: Path,
    seed: int = 0,
    n_free: int = 10,
    n_per_type: int = 4,
    types: tuple[str, ...] = TYPES,
    size: tuple[int, int] = (96, 40),
) -> Path:
    """Write a tiny tree in the MTD layout (for tests of the ``mtd`` adapter): ``<root>/MT_<Type>/Imgs/``.

    Each image is a grayscale strip of ``size`` (width, height) in MTD's file naming (``exp<k>_num_<id>.jpg``)
    with its mask ``.png`` beside it; defect images carry a bright or dark blob that their mask marks, placed
    by a generator seeded from (seed, type, index). Defect-free tiles get blank masks, as in the download.

    Returns:
        ``root`` (pass it as ``--data-root``).
    """
    import numpy as np

    from bench.seeding import numpy_rng

    root = Path(root)
    w, h = size
    for folder, n in ((FREE, n_free), *((t, n_per_type) for t in types)):
        d = root / folder / "Imgs"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rng = numpy_rng(seed, "write_mtd", folder, i)
            img = np.clip(110 + 8 * rng.standard_normal((h, w)), 0, 255)
            mask = np.zeros((h, w), np.uint8)
            if folder != FREE:
                cx, cy, r = int(rng.integers(4, w - 4)), int(rng.integers(4, h - 4)), int(rng.integers(2, 6))
                yy, xx = np.mgrid[0:h, 0:w]
                blob = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
                img[blob] = 230 if types.index(folder) % 2 else 20
                mask[blob] = 255
            name = f"exp{i % 3}_num_{1000 + 37 * i + stable_int(folder) % 997}"
            Image.fromarray(img.astype(np.uint8), "L").save(d / f"{name}.jpg", quality=95)
            Image.fromarray(mask, "L").save(d / f"{name}.png")
    return root
