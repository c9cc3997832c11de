"""The sample table, the dataset registry and the shared MVTec-layout scanner.

Every adapter returns a :class:`Samples`: one pandas table with a row per image and the columns in
:data:`SAMPLE_COLUMNS` (anomalib's ``make_mvtec_dataset`` idea). Episodes, features and reports only
ever read this table, so adding a dataset means writing one parser.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from PIL import Image

from bench.errors import DatasetError, brief_list
from bench.registry import Registry

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = ["dataset", "category", "split", "label", "name", "image_path", "mask_path"]
"""``split`` is ``train`` or ``test``; ``label`` is ``good`` or the defect-type folder name; ``name`` the file
name (the support rule sorts by it); ``mask_path`` is ``""`` when there is none."""

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}

SYSTEM_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini", "$RECYCLE.BIN", "System Volume Information"})
"""Entries written by operating systems, archivers and file browsers, never data."""


def is_hidden_or_system(name: str) -> bool:
    """True for hidden entries (``.ipynb_checkpoints``, macOS ``._*`` AppleDouble files, ``.DS_Store``) and
    system entries (:data:`SYSTEM_NAMES`). Every scanner skips them: a hidden folder inside ``test/`` would
    otherwise become a defect type, and a ``._000.png`` (resource fork, not an image) would fail its category."""
    return name.startswith(".") or name in SYSTEM_NAMES


MIN_IMAGE_SIDE = 32
"""The smallest width or height (pixels) of an image the harness accepts. Every image is resized to the 224-pixel
network input (docs/method-notes.md §4.1), so a smaller one is not an error the pipeline notices: a 1×1 file
becomes a flat grey square and its features are those of nothing. The public sets this harness reads have no
image under 103 pixels on a side (MTD's narrowest tiles; MVTec AD's start at 700), while thumbnails, icons,
tracking pixels and failed exports are smaller than 32; at 32 pixels the backbone's stride-8 grid (28 × 28 at
224) still has about one source pixel per cell, below that the features describe the interpolation."""


def case_collisions(names: list[str]) -> list[list[str]]:
    """Groups of ``names`` that differ only in letter case (``MT_Crack``, ``MT_crack``), each sorted.

    On a case-insensitive file system (macOS, Windows) such folders cannot even coexist, so a second one is a copy
    made elsewhere; a scanner that lower-cases labels would merge them into one class, one that keeps the case
    would make two classes of the same defect. Scanners refuse them (the user keeps one)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(name.casefold(), []).append(name)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def refuse_case_collisions(folder: Path, names: list[str], what: str) -> None:
    """Raise :class:`DatasetError` naming the first group of :func:`case_collisions` among ``names`` in ``folder``."""
    clash = case_collisions(names)
    if clash:
        shown = ", ".join(f"{folder / n}/" for n in clash[0])
        raise DatasetError(
            f"{what} folders that differ only in letter case: {shown}. They would be one class read twice or two "
            "classes of the same defect. Keep one of them (move the other out of the dataset folder)"
            + (f"; {len(clash) - 1} more such group(s)" if len(clash) > 1 else "") + "."
        )


@dataclass(frozen=True)
class DatasetOptions:
    """Class-set switches that every result row records.

    Attributes:
        exclude_combined: drop the ``combined`` defect type (the paper keeps it).
        min_defect_types: categories with fewer defect types are skipped with a logged message
            (toothbrush has one; docs/method-notes.md §11 item 11).
        categories: restrict to these categories (``None`` = all found).
    """

    exclude_combined: bool = False
    min_defect_types: int = 2
    categories: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        # ``--categories wood wood`` means wood once (in the order given): a repeated category would list every
        # image twice (a 2-shot support of one image twice, the 1-shot support image among the queries).
        if self.categories is not None:
            object.__setattr__(self, "categories", tuple(dict.fromkeys(self.categories)))


@dataclass
class Samples:
    """A parsed dataset: the sample table plus where it came from.

    Attributes:
        skipped: category -> why it was dropped (e.g. a single defect type).
        ignored: category (``""`` for the root) -> hidden or system entries the scanner left out (relative paths).
    """

    dataset: str
    root: Path
    table: pd.DataFrame
    skipped: dict[str, str] = field(default_factory=dict)  # category -> reason
    ignored: dict[str, list[str]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # how the adapter built it (MTD: the hold-out); in every row

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

    def content_hash(self, category: str, memo_dir: Path | None = None) -> str:
        """Hash of (split, label, name, sha256 of the bytes) of every image of ``category``.

        This is what a job "reads", by choice: the category's whole sample table, not only the episode's images
        and the train images of bank methods. Methods read more than their episode (normal images for the memory
        bank and for pseudo-defect pretraining, test images with ``--include-good``), and a superset can only
        make a job rerun needlessly after an edit, never serve a stale result. The file hashes are memoised
        (:func:`bench.cache.file_sha256`, ``memo_dir`` = the cache's ``hashes/``), so a rerun costs one
        ``stat`` per file.

        Raises:
            DatasetError: an image cannot be read (missing or no permission).
        """
        from bench.cache import file_sha256

        t = self.table[self.table.category == category].sort_values(["split", "label", "name"])
        h = hashlib.sha256()
        for row in t.itertuples(index=False):
            try:
                digest = file_sha256(row.image_path, memo_dir)
            except OSError as exc:
                raise DatasetError(
                    f"cannot read image file {row.image_path} ({exc.strerror or exc}). Check that it exists and is "
                    "readable, or remove it from the dataset folder."
                ) from None
            h.update(f"{row.split}/{row.label}/{row.name}:{digest}\n".encode())
        return h.hexdigest()[:16]


def check_image_files(samples: Samples, memo_dir: Path | None = None) -> None:
    """Refuse, before any job, images too small to describe (:data:`MIN_IMAGE_SIDE`) and copies of one image.

    A copy (the same bytes under two names: ``MT_Crack/`` duplicated as ``MT_crack/``, a file dragged into a
    second defect folder, a test image also in ``train/good``) would be its own support or query, one image in two
    classes, or a query the memory bank has seen: numbers that look fine and are not. Copies among ``train/good``
    only are allowed (they weigh the bank, they leak nothing). The bytes are hashed by
    :func:`bench.cache.file_sha256`, the same memoised hashes the job keys use (:meth:`Samples.content_hash`), so
    the check costs the plan nothing more; the sizes come from the file headers. Files that cannot be read are
    left to the jobs, which name them.

    Raises:
        DatasetError: naming the first offending file(s), how many there are, and the fix.
    """
    from bench.cache import file_sha256

    t = samples.table
    small: list[tuple[str, tuple[int, int]]] = []
    copies: list[tuple[str, list[tuple[str, str]]]] = []  # (category, [(path, split/label), ...])
    for category in sorted(t.category.unique()):
        by_digest: dict[str, list[tuple[str, str]]] = {}
        for row in t[t.category == category].sort_values(["split", "label", "name"]).itertuples(index=False):
            size = _header_size(row.image_path)
            if size is not None and min(size) < MIN_IMAGE_SIDE:
                small.append((row.image_path, size))
            try:
                digest = file_sha256(row.image_path, memo_dir)
            except OSError:
                continue
            by_digest.setdefault(digest, []).append((row.image_path, f"{row.split}/{row.label}"))
        copies += [(category, g) for g in by_digest.values() if len(g) > 1 and any(w.startswith("test/") for _, w in g)]
    if small:
        path, (w, h) = small[0]
        raise DatasetError(
            f"image {path} is {w}×{h} px, smaller than {MIN_IMAGE_SIDE} px on a side: it would be blown up to the "
            f"network input and give features of nothing (a thumbnail, icon or failed export?)"
            + (f"; {len(small)} such images in all" if len(small) > 1 else "")
            + ". Replace it with the original image or remove it from the dataset folder."
        )
    if copies:
        category, ((a, wa), (b, wb), *_) = copies[0]
        raise DatasetError(
            f"images {a} and {b} have the same bytes (category {category!r}: {wa} and {wb}): a copy would be its own "
            "support or query, one image in two classes, or a query the memory bank has seen"
            + (f"; {len(copies)} such groups in all" if len(copies) > 1 else "")
            + ". Remove the copies (a duplicated or backup folder?) from the dataset folder."
        )


def _header_size(path: str) -> tuple[int, int] | None:
    """(width, height) from an image file's header, ``None`` when it cannot be read (the jobs report why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


Adapter = Callable[[Path | None, DatasetOptions], Samples]
DATASETS: Registry[Adapter] = Registry("dataset", package="bench.datasets")


def register_dataset(name: str, description: str = "", **meta: object) -> Callable[[Adapter], Adapter]:
    """Decorator: register ``fn(root, options) -> Samples`` under ``name``."""

    def deco(fn: Adapter) -> Adapter:
        DATASETS.add(name, fn, description=description or (fn.__doc__ or "").strip().splitlines()[0], **meta)
        return fn

    return deco


def load_dataset(name: str, root: str | Path | None = None, options: DatasetOptions | None = None) -> Samples:
    """Parse dataset ``name`` at ``root`` into a :class:`Samples` table (validated, filtered by ``options``)."""
    DATASETS.import_all()
    entry = DATASETS.get(name)
    samples = entry.obj(Path(root).expanduser() if root is not None else None, options or DatasetOptions())
    return finalize(samples, options or DatasetOptions())


def dataset_image_fit(name: str) -> str:
    """The image fit an adapter declares (``register_dataset(..., image_fit=...)``; MTD: ``squash``), else ``crop``.

    An unknown dataset name gives ``crop`` here; :func:`load_dataset` reports the name with the known ones.
    """
    DATASETS.import_all()
    return str(DATASETS.get(name).meta.get("image_fit", "crop")) if name in DATASETS else "crop"


def list_images(folder: Path, ignored: list[str] | None = None, base: Path | None = None) -> list[Path]:
    """Image files of ``folder``, sorted; hidden and system files go to ``ignored`` (relative to ``base``)."""
    out = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.suffix.lower() not in IMAGE_EXTS:
            continue
        if is_hidden_or_system(p.name):
            if ignored is not None:
                ignored.append(p.relative_to(base or folder).as_posix())
            continue
        out.append(p)
    return out


def check_root(root: Path | None, dataset: str, hint: str) -> Path:
    if root is None:
        raise DatasetError(f"dataset {dataset!r} needs --data-root. {hint}")
    if not root.exists():
        raise DatasetError(f"dataset root does not exist: {root}. {hint}")
    if not root.is_dir():
        raise DatasetError(f"dataset root is not a folder: {root}. {hint}")
    return root


def is_folder(path: Path) -> bool:
    """``path.is_dir()``, and ``False`` for a name the system refuses (longer than a file name may be)."""
    try:
        return path.is_dir()
    except OSError:
        return False


def scan_mvtec_layout(
    root: Path,
    dataset: str,
    categories: tuple[str, ...] | None,
    image_subdir: str | None = None,
    mask_folder: Callable[[Path, str, str], Path | None] | None = None,
    ignored: dict[str, list[str]] | None = None,
) -> pd.DataFrame:
    """Scan ``<root>/<category>/{train/good, test/<label>}`` into the sample table.

    Hidden and system entries (:func:`is_hidden_or_system`: ``.ipynb_checkpoints/``, ``._*.png``, ``__MACOSX/``,
    ...) are never categories, labels or images; each one the scan would otherwise have taken is listed in
    ``ignored`` (category -> relative paths; ``""`` for category folders at the root).

    Args:
        root: dataset root.
        dataset: name written into the ``dataset`` column.
        categories: restrict to these (error if one is missing); ``None`` = every sub-folder with ``test/``.
        image_subdir: images sit in ``<label>/<image_subdir>/`` (MVTec 3D-AD: ``rgb``).
        mask_folder: ``fn(category_dir, label, image_stem) -> mask path or None``.
        ignored: filled with what was left out (pass a dict to receive it).
    """
    ignored = ignored if ignored is not None else {}
    if categories:
        missing = [c for c in categories if not is_folder(root / c)]
        if missing:
            found = sorted(p.name for p in root.iterdir() if p.is_dir() and not is_hidden_or_system(p.name))
            raise DatasetError(
                f"category {brief_list(missing)} not found under {root}. Categories found there: "
                f"{brief_list(found, 20) or 'none'}. Check --categories and --data-root."
            )
        cat_dirs = [root / c for c in categories]
    else:
        cat_dirs = sorted(p for p in root.iterdir() if p.is_dir() and (p / "test").is_dir())
        hidden = [f"{p.name}/" for p in cat_dirs if is_hidden_or_system(p.name)]
        if hidden:
            ignored[""] = hidden
        cat_dirs = [p for p in cat_dirs if not is_hidden_or_system(p.name)]
        if not cat_dirs:
            raise DatasetError(
                f"no category folders with a test/ sub-folder under {root}. Expected the MVTec layout "
                "<root>/<category>/{train/good,test/<defect_type>}; check --data-root points at the dataset root."
            )
        refuse_case_collisions(root, [p.name for p in cat_dirs], "category")
    rows: list[dict[str, str]] = []
    for cdir in cat_dirs:
        for split in ("train", "test"):
            sdir = cdir / split
            if split == "train" and not sdir.exists():
                # Defect classes only: many public defect sets ship without normal images. The category has no
                # train/good images, so methods that need none run and the others fail with that reason
                # (:func:`finalize` warns; bench.run.plan.no_normals_error).
                continue
            if not sdir.is_dir():
                raise DatasetError(
                    f"{sdir} is missing: category {cdir.name!r} does not have the MVTec layout "
                    "<category>/{train/good,test/<defect_type>} (train/ may be left out when there are no normal "
                    "images). Fix the folder or drop the category."
                )
            left_out = ignored.setdefault(cdir.name, [])
            ldirs = sorted(p for p in sdir.iterdir() if p.is_dir() and not is_hidden_or_system(p.name))
            refuse_case_collisions(sdir, [p.name for p in ldirs], "defect-type" if split == "test" else "train")
            misspelt = [p for p in ldirs if p.name.casefold() == "good" and p.name != "good"]
            if misspelt:
                fate = "it would be a defect type" if split == "test" else "its images would be left out"
                raise DatasetError(
                    f"{misspelt[0]}/ is spelt differently from good/, the folder of normal images (the name is "
                    f"case-sensitive): {fate}. Rename it to {sdir / 'good'}/."
                )
            for ldir in sorted(p for p in sdir.iterdir() if p.is_dir()):
                if split == "train" and ldir.name != "good":
                    continue
                if is_hidden_or_system(ldir.name):
                    left_out.append(f"{split}/{ldir.name}/")
                    continue
                idir = ldir / image_subdir if image_subdir else ldir
                if not idir.is_dir():
                    continue
                for img in list_images(idir, left_out, cdir):
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
        if not ignored.get(cdir.name):
            ignored.pop(cdir.name, None)
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
    dup = t[t.duplicated(["category", "image_path"], keep=False)]
    if len(dup):
        first = dup.iloc[0]
        where = sorted(f"{r.split}/{r.label}" for r in dup[dup.image_path == first.image_path].itertuples())
        raise DatasetError(
            f"dataset {samples.dataset!r}: image {first.image_path} is listed {len(where)} times in category "
            f"{first.category!r} ({', '.join(where)}; {dup.image_path.nunique()} such image(s) in all), so it would be "
            "its own query or a support image twice. Remove the duplicate entries (symbolic links or repeated "
            "folders) from the dataset folder."
        )
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
    ignored = {c: sorted(v) for c, v in samples.ignored.items() if v and (c == "" or c in keep)}
    for cat, entries in ignored.items():
        log.info("%s: left out %d hidden or system entr%s: %s", f"category {cat}" if cat else str(samples.root),
                 len(entries), "y" if len(entries) == 1 else "ies", ", ".join(entries[:5]))
    return Samples(dataset=samples.dataset, root=samples.root, table=t, skipped=skipped, ignored=ignored,
                   info=samples.info)


def describe_ignored(category: str, entries: list[str], limit: int = 3) -> str:
    """One line for the hidden/system entries left out of a category: count and the first few paths."""
    head = ", ".join(entries[:limit]) + (f" and {len(entries) - limit} more" if len(entries) > limit else "")
    return (f"category {category}" if category else "dataset root") + (
        f": left out {len(entries)} hidden or system entr{'y' if len(entries) == 1 else 'ies'} ({head})"
    )
