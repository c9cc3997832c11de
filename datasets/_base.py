"""The sample table, the dataset registry and the shared MVTec-layout scanner.

Every adapter returns a :class:`Samples`: one pandas table with a row per image and the columns in
:data:`SAMPLE_COLUMNS` (anomalib's ``make_mvtec_dataset`` idea). Episodes, features and reports only
ever read this table, so adding a dataset means writing one parser.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from bench.errors import DatasetError
from bench.registry import Registry

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = ["dataset", "category", "split", "label", "name", "image_path", "mask_path"]
"""``split`` is ``train`` or ``test``; ``label`` is ``good`` or the defect-type folder name; ``name`` the file
name (the support rule sorts by it); ``mask_path`` is ``""`` when there is none."""

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class DatasetOptions:
    """Class-set switches that every result row records.

    Attributes:
        exclude_combined: drop the ``combined`` defect type (the paper keeps it).
        min_defect_types: categories with fewer defect types are skipped with a logged message
            (toothbrush has one; method-spec §11 item 11).
        categories: restrict to these categories (``None`` = all found).
    """

    exclude_combined: bool = False
    min_defect_types: int = 2
    categories: tuple[str, ...] | None = None


@dataclass
class Samples:
    """A parsed dataset: the sample table plus where it came from."""

    dataset: str
    root: Path
    table: pd.DataFrame
    skipped: dict[str, str] = field(default_factory=dict)  # category -> reason

    def categories(self) -> list[str]:
        return sorted(self.table["category"].unique())

    def defect_types(self, category: str) -> list[str]:
        t = self.table
        sel = t[(t.category == category) & (t.split == "test") & (t.label != "good")]
        return sorted(sel["label"].unique())

    def train_paths(self, category: str) -> list[str]:
        t = self.table
        sel = t[(t.category == category) & (t.split == "train") & (t.label == "good")].sort_values("name")
        return sel["image_path"].tolist()

    def manifest_hash(self, category: str | None = None) -> str:
        """Hash of (category, split, label, name) of every sample: changes when files are added or removed."""
        t = self.table if category is None else self.table[self.table.category == category]
        h = hashlib.sha256()
        for row in t.sort_values(["category", "split", "label", "name"]).itertuples(index=False):
            h.update(f"{row.category}/{row.split}/{row.label}/{row.name}\n".encode())
        return h.hexdigest()[:16]


Adapter = Callable[[Path | None, DatasetOptions], Samples]
DATASETS: Registry[Adapter] = Registry("dataset")


def register_dataset(name: str, description: str = "", **meta: object) -> Callable[[Adapter], Adapter]:
    """Decorator: register ``fn(root, options) -> Samples`` under ``name``."""

    def deco(fn: Adapter) -> Adapter:
        DATASETS.add(name, fn, description=description or (fn.__doc__ or "").strip().splitlines()[0], **meta)
        return fn

    return deco


def load_dataset(name: str, root: str | Path | None = None, options: DatasetOptions | None = None) -> Samples:
    """Parse dataset ``name`` at ``root`` into a :class:`Samples` table (validated, filtered by ``options``)."""
    from bench.datasets import import_all

    import_all()
    entry = DATASETS.get(name)
    samples = entry.obj(Path(root).expanduser() if root is not None else None, options or DatasetOptions())
    return finalize(samples, options or DatasetOptions())


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def check_root(root: Path | None, dataset: str, hint: str) -> Path:
    if root is None:
        raise DatasetError(f"dataset {dataset!r} needs --data-root. {hint}")
    if not root.exists():
        raise DatasetError(f"dataset root does not exist: {root}. {hint}")
    if not root.is_dir():
        raise DatasetError(f"dataset root is not a folder: {root}. {hint}")
    return root


def scan_mvtec_layout(
    root: Path,
    dataset: str,
    categories: tuple[str, ...] | None,
    image_subdir: str | None = None,
    mask_folder: Callable[[Path, str, str], Path | None] | None = None,
) -> pd.DataFrame:
    """Scan ``<root>/<category>/{train/good, test/<label>}`` into the sample table.

    Args:
        root: dataset root.
        dataset: name written into the ``dataset`` column.
        categories: restrict to these (error if one is missing); ``None`` = every sub-folder with ``test/``.
        image_subdir: images sit in ``<label>/<image_subdir>/`` (MVTec 3D-AD: ``rgb``).
        mask_folder: ``fn(category_dir, label, image_stem) -> mask path or None``.
    """
    if categories:
        missing = [c for c in categories if not (root / c).is_dir()]
        if missing:
            found = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise DatasetError(
                f"category {', '.join(missing)} not found under {root}. Categories found there: "
                f"{', '.join(found) or 'none'}. Check --categories and --data-root."
            )
        cat_dirs = [root / c for c in categories]
    else:
        cat_dirs = sorted(p for p in root.iterdir() if p.is_dir() and (p / "test").is_dir())
        if not cat_dirs:
            raise DatasetError(
                f"no category folders with a test/ sub-folder under {root}. Expected the MVTec layout "
                "<root>/<category>/{train/good,test/<defect_type>}; check --data-root points at the dataset root."
            )
    rows: list[dict[str, str]] = []
    for cdir in cat_dirs:
        for split in ("train", "test"):
            sdir = cdir / split
            if not sdir.is_dir():
                raise DatasetError(
                    f"{sdir} is missing: category {cdir.name!r} does not have the MVTec layout "
                    "<category>/{train/good,test/<defect_type>}. Fix the folder or drop the category."
                )
            for ldir in sorted(p for p in sdir.iterdir() if p.is_dir()):
                if split == "train" and ldir.name != "good":
                    continue
                idir = ldir / image_subdir if image_subdir else ldir
                if not idir.is_dir():
                    continue
                for img in _list_images(idir):
                    mask = mask_folder(cdir, ldir.name, img.stem) if (mask_folder and split == "test") else None
                    rows.append(
                        dict(
                            dataset=dataset,
                            category=cdir.name,
                            split=split,
                            label=ldir.name,
                            name=img.name,
                            image_path=str(img.resolve()),
                            mask_path=str(mask) if mask is not None and mask.exists() else "",
                        )
                    )
    return pd.DataFrame(rows, columns=SAMPLE_COLUMNS)


def finalize(samples: Samples, options: DatasetOptions) -> Samples:
    """Validate the table and apply the class-set switches (combined, minimum defect types)."""
    t = samples.table
    missing = [c for c in SAMPLE_COLUMNS if c not in t.columns]
    if missing:
        raise DatasetError(f"adapter for {samples.dataset!r} returned a table without columns {missing}")
    if options.categories:
        t = t[t.category.isin(options.categories)]
    if options.exclude_combined:
        t = t[t.label != "combined"]
    skipped = dict(samples.skipped)
    keep = []
    for cat in sorted(t.category.unique()):
        sel = t[t.category == cat]
        types = sorted(sel[(sel.split == "test") & (sel.label != "good")].label.unique())
        if len(types) < options.min_defect_types:
            reason = (
                f"{len(types)} defect type(s) ({', '.join(types) or 'none'}) < min_defect_types="
                f"{options.min_defect_types}: cannot be multi-classified"
            )
            skipped[cat] = reason
            log.warning("skipping category %s: %s", cat, reason)
            continue
        if (sel.split == "train").sum() == 0:
            log.warning("category %s has no train/good images: methods that need normal images will fail", cat)
        keep.append(cat)
    t = t[t.category.isin(keep)].reset_index(drop=True)
    if t.empty:
        detail = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        raise DatasetError(
            f"no usable category in dataset {samples.dataset!r} at {samples.root}"
            + (f" ({detail})" if detail else "")
            + ". Check --data-root / --categories, or lower --min-defect-types."
        )
    return Samples(dataset=samples.dataset, root=samples.root, table=t, skipped=skipped)
