"""MVTec-FS (Lyu et al., MVREC, AAAI 2025; ``ShuaiLYU/MVTec-FS``): defect *instances* of MVTec AD's defective test
images, each with its polygon and corrected type label (``../shared/docs/field-protocols.md §1``).

A config folder ``<category>_config1/`` holds ``train.csv`` (the pool supports are drawn from) and ``valid.csv``
(the queries), disjoint in images; one row per instance. :func:`read_mvtec_fs` turns it into one table over the
images of an MVTec AD root. The images are MVTec AD's: ``img_rel_path`` ``training|testing/<folder>/<NNN>.png`` is
``<mvtec_root>/<category>/test/<folder>/<NNN>.png``. An instance whose image is not under the root is skipped and
counted (the shared screw subset holds 51 of 69 train and 52 of 60 valid instances' images); a missing or malformed
CSV is a :class:`~bench.errors.DatasetError` naming the file.

A private module (no adapter is registered yet: the region unit's episodes, run and CLI come later, issue #22).
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.errors import DatasetError, clip

SPLITS = {"train": "train.csv", "valid": "valid.csv"}
"""MVTec-FS's halves: ``train.csv`` is the support pool, ``valid.csv`` the queries."""

REQUIRED = ("id", "img_rel_path", "imageWidth", "imageHeight", "label", "points")
"""The columns read; the others (``x1, x2, y1, y2``, ``part``, ``img_id``, ...) are the polygon's box and
bookkeeping."""

INSTANCE_COLUMNS = ["instance_id", "split", "label", "folder", "image_path", "polygons", "stored_size"]
"""``instance_id`` is the CSV's ``id`` (unique over both files of a category); ``split`` ``train`` or ``valid``;
``label`` the corrected type (can differ from ``folder``, MVTec AD's folder); ``polygons`` a tuple of polygons, each
a tuple of ``(x, y)`` as stored (pixels of the image at ``stored_size``); ``stored_size`` ``(imageWidth,
imageHeight)``. Draw a mask with ``bench.regions.rasterise(polygons, stored_size, size_as_read)``."""

MISSING_IMAGE = "image not found under the MVTec AD root"


@dataclass
class MvtecFsInstances:
    """What :func:`read_mvtec_fs` returns: the instances found and the instances skipped, counted by reason."""

    category: str
    table: pd.DataFrame
    skipped: Counter[str] = field(default_factory=Counter)
    """``"<split>: <reason>"`` → number of instances."""

    def summary(self) -> str:
        kept = ", ".join(f"{s} {int((self.table['split'] == s).sum())}" for s in SPLITS)
        gone = "; ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped.items()))
        return f"MVTec-FS {self.category}: {len(self.table)} instances ({kept})" + (f"; skipped {gone}" if gone else "")


def _bad(path: Path, row: int | None, what: str) -> DatasetError:
    where = f"{clip(path)}" + (f", row {row}" if row is not None else "")
    return DatasetError(
        f"malformed MVTec-FS file {where}: {what}. Use the authors' CSV unchanged (ShuaiLYU/MVTec-FS, "
        "CONFIG/<category>_config1/{train,valid}.csv)."
    )


def _polygons(text: str, path: Path, row: int) -> tuple[tuple[tuple[float, float], ...], ...]:
    """``points`` → a tuple of polygons. The authors store one polygon as ``[[x, y], ...]``; a list of such lists is
    read as several polygons of one instance."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        raise _bad(path, row, f"'points' is not JSON ({clip(text, 60)!r})") from None
    if isinstance(value, list) and value and isinstance(value[0], list) and value[0] and isinstance(value[0][0], list):
        raw = value
    else:
        raw = [value]
    out = []
    for polygon in raw:
        if not isinstance(polygon, list) or not polygon:
            raise _bad(path, row, "'points' holds an empty polygon or is not a list of [x, y]")
        pts = []
        for p in polygon:
            if not (isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                                  and math.isfinite(v) for v in p)):  # fmt: skip
                raise _bad(path, row, f"'points' has a vertex that is not [x, y] numbers: {clip(p, 40)!r}")
            pts.append((float(p[0]), float(p[1])))
        out.append(tuple(pts))
    return tuple(out)


def _size(row: dict[str, str], path: Path, n: int) -> tuple[int, int]:
    try:
        w, h = int(float(row["imageWidth"])), int(float(row["imageHeight"]))
    except (TypeError, ValueError):
        sizes = f"{clip(row['imageWidth'], 20)!r}, {clip(row['imageHeight'], 20)!r}"
        raise _bad(path, n, f"imageWidth/imageHeight are not numbers ({sizes})") from None
    if w <= 0 or h <= 0:
        raise _bad(path, n, f"imageWidth/imageHeight must be positive, got {w} x {h}")
    return w, h


def read_mvtec_fs(config_dir: str | Path, mvtec_root: str | Path, category: str) -> MvtecFsInstances:
    """The instances of one MVTec-FS category config whose image is under an MVTec AD root.

    Args:
        config_dir: the authors' ``CONFIG/<category>_config1`` folder (``train.csv``, ``valid.csv``).
        mvtec_root: the MVTec AD folder holding ``<category>/`` (what ``--data-root`` is for ``mvtec_ad``).
        category: the MVTec AD category (``screw``).

    Returns:
        The table (:data:`INSTANCE_COLUMNS`, one row per instance, train rows first, each file's order kept) and
        the skipped instances counted by ``"<split>: <reason>"``.

    Raises:
        DatasetError: the folder or a CSV is missing, a CSV lacks a column, or a row cannot be read; the message
            names the file (and the row, counted from 1 after the header).
    """
    config = Path(config_dir)
    if not config.is_dir():
        raise DatasetError(
            f"MVTec-FS config folder not found: {clip(config)}. Pass the authors' CONFIG/<category>_config1 folder "
            "(ShuaiLYU/MVTec-FS), which holds train.csv and valid.csv."
        )
    images = Path(mvtec_root) / category / "test"
    rows: list[dict[str, object]] = []
    skipped: Counter[str] = Counter()
    for split, name in SPLITS.items():
        path = config / name
        if not path.is_file():
            raise DatasetError(
                f"MVTec-FS file not found: {clip(path)}. The config folder must hold train.csv and valid.csv."
            )
        try:
            with path.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
                if missing:
                    raise _bad(path, None, f"no column(s) {', '.join(missing)} in its header")
                records = list(reader)
        except (UnicodeDecodeError, csv.Error) as exc:
            raise _bad(path, None, f"not a readable CSV ({exc})") from None
        for n, row in enumerate(records, start=1):
            rel = (row["img_rel_path"] or "").replace("\\", "/").split("/")
            if len(rel) != 3 or rel[0] not in ("training", "testing") or not rel[1] or not rel[2]:
                shown = clip(row["img_rel_path"], 80)
                raise _bad(path, n, f"img_rel_path {shown!r} is not training|testing/<folder>/<file>")
            if not (row["id"] or "").strip() or not (row["label"] or "").strip():
                raise _bad(path, n, "empty 'id' or 'label'")
            polygons, size = _polygons(row["points"], path, n), _size(row, path, n)
            image = images / rel[1] / rel[2]
            if not image.is_file():
                skipped[f"{split}: {MISSING_IMAGE}"] += 1
                continue
            rows.append({
                "instance_id": row["id"].strip(), "split": split, "label": row["label"].strip(), "folder": rel[1],
                "image_path": str(image), "polygons": polygons, "stored_size": size,
            })  # fmt: skip
    table = pd.DataFrame(rows, columns=INSTANCE_COLUMNS)
    dup = table["instance_id"][table["instance_id"].duplicated()]
    if len(dup):
        raise DatasetError(
            f"MVTec-FS {clip(config)}: instance id {dup.iloc[0]!r} appears more than once in train.csv/valid.csv."
        )
    return MvtecFsInstances(category=category, table=table, skipped=skipped)
