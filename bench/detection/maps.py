"""Anomaly maps as PNG files, in the layout the discovery task reads (docs/tasks.md, "Anomaly class discovery").

``<root>/<category>/<type>/<name>.png``: one file per test image, ``<type>`` = ``good`` or the defect type, ``<name>``
= the image's file name without its extension (``000.png`` → ``000.png``, ``000.jpg`` → ``000.png``); where two
images of one type share that stem (``000.png`` and ``000.jpg``) each of them keeps its whole file name
(``000.png.png``, ``000.jpg.png``) so that no map overwrites another (:func:`map_names`: the writer and the reader,
:func:`bench.discovery.maps.png_map_paths`, use the same rule). Each map has the size of its image *as the features
see it*, upright (the EXIF orientation applied, :func:`bench.images.upright_size`); a map on the network's input
frame is brought back by the inverse of the run's image fit: a squash is un-squashed, a letterbox's padding cut off,
a centre crop pasted back into its window with the area the network never saw set to the set's minimum.

Normalisation, as the reference of §B.1: min–max **jointly over all maps of the set** (one category's test set for
one detector, k and seed; over the maps as written, at their images' sizes), so that maps stay comparable between
images: value = round((m − min) / (max − min) · (2^bits − 1)). ``bits`` = 8 (uint8, the reference's) or 16. The numbers needed to undo it (min, max, bits) are written
to ``<root>/<category>/normalisation.json`` with what produced the maps.

Writing never leaves a half-written set: a category's maps and its ``normalisation.json`` are written into a
temporary folder beside it and take its place only once complete (a full disk leaves the earlier set as it was).
The root holds a marker (:data:`MARKER`) from the first write on; a non-empty folder without it is not the
harness's, and :func:`claim_folder` refuses it rather than overwrite a user's PNG files.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from bench.cache import TMP_PREFIX, atomic_write
from bench.datasets._base import is_hidden_or_system
from bench.metrics.detection import resize_map
from bench.errors import BenchError, ConfigError, DatasetError, brief
from bench.images import Preprocess, upright_size

BITS = (8, 16)
"""The PNG depths :func:`write_maps` writes (and :func:`bench.discovery.maps.read_map` reads)."""
MARKER = ".bench-maps"
"""The file that marks a folder of maps as written by the harness (:func:`claim_folder`)."""


def map_names(labels: Sequence[str], paths: Sequence[str]) -> list[str]:
    """The map file of each image relative to its category folder, ``<type>/<name>.png`` (module docstring).

    The rule looks only at the images of one type, so any set that holds a type whole (the detection test set, a
    discovery set with or without ``good``) names its maps alike. Stems are compared case-insensitively: on a
    case-insensitive disk ``A.png`` and ``a.jpg`` would otherwise share ``A.png``.

    Raises:
        DatasetError: two images of one type would still share a file (same name but for case).
    """
    stems = Counter((lab, Path(p).stem.casefold()) for lab, p in zip(labels, paths))
    names = [f"{lab}/{Path(p).stem if stems[lab, Path(p).stem.casefold()] == 1 else Path(p).name}.png"
             for lab, p in zip(labels, paths)]  # fmt: skip
    seen: dict[str, str] = {}
    for name, p in zip(names, paths):
        if name.casefold() in seen:
            raise DatasetError(f"images {seen[name.casefold()]} and {p} would share the anomaly map {name}: rename one "
                               "of them (their names differ only in case).")  # fmt: skip
        seen[name.casefold()] = p
    return names


def check_folder(root: Path) -> None:
    """Refuse a ``root`` that is a file, or a non-empty folder the harness did not make (no :data:`MARKER`):
    writing maps there would overwrite PNG files of the same names. Hidden and system entries do not count.

    Raises:
        ConfigError: naming the folder and a few of its entries.
    """
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--out {root} is a file: maps are written into a folder (<out>/<category>/<type>/<name>.png). "
                          "Choose a folder name.")  # fmt: skip
    if root.is_dir() and not (root / MARKER).is_file():
        foreign = sorted(p.name for p in root.iterdir() if not is_hidden_or_system(p.name))
        if foreign:
            raise ConfigError(f"--out {root} already holds files the harness did not write ({brief(foreign)}): maps "
                              "written there would overwrite files of the same names. Choose a new or empty folder.")  # fmt: skip


def claim_folder(root: Path) -> None:
    """:func:`check_folder`, then make ``root`` (if needed) and mark it as the harness's.

    Raises:
        ConfigError: see :func:`check_folder`.
        BenchError: the folder cannot be made or written.
    """
    check_folder(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not (root / MARKER).is_file():
            atomic_write(root / MARKER, lambda f: f.write(b"anomaly maps written by fsad-bench (bench maps)\n"))
    except OSError as exc:
        raise BenchError(f"cannot write to the output folder {root} ({exc.strerror or exc}). Choose another with --out.") from None


def map_to_image(m: np.ndarray, preprocess: Preprocess, size: tuple[int, int], fill: float) -> np.ndarray:
    """A map on the input frame (h, w) → the image's own (height, width), inverting the fit of ``preprocess``.

    Args:
        m: (h, w) map covering the network input (crop × crop).
        preprocess: the image transform the map's image went through.
        size: (width, height) of the original image, upright (:func:`bench.images.upright_size`).
        fill: value for the pixels the network never saw (outside a centre crop).

    Returns:
        (height, width) float32.
    """
    w, h = size
    c = preprocess.crop
    frame = resize_map(m, c)  # (crop, crop)
    if preprocess.fit == "squash":
        return np.asarray(Image.fromarray(frame, mode="F").resize((w, h), Image.BILINEAR), np.float32)
    if preprocess.fit == "letterbox":
        scale = c / max(w, h)
        nw, nh = max(1, min(c, round(w * scale))), max(1, min(c, round(h * scale)))
        top, left = (c - nh) // 2, (c - nw) // 2
        content = frame[top : top + nh, left : left + nw]
        return np.asarray(Image.fromarray(np.ascontiguousarray(content), mode="F").resize((w, h), Image.BILINEAR), np.float32)
    x0, y0, x1, y1 = preprocess.source_box((w, h))
    out = np.full((h, w), fill, np.float32)
    bw, bh = max(1, round(x1 - x0)), max(1, round(y1 - y0))
    patch = np.asarray(Image.fromarray(frame, mode="F").resize((bw, bh), Image.BILINEAR), np.float32)
    ox, oy = round(x0), round(y0)
    out[oy : oy + bh, ox : ox + bw] = patch[: h - oy, : w - ox]
    return out


def write_maps(
    root: str | Path,
    category: str,
    paths: Sequence[str],
    labels: Sequence[str],
    maps: np.ndarray,
    preprocess: Preprocess,
    bits: int = 8,
    meta: dict[str, Any] | None = None,
) -> list[Path]:
    """Write the (N, h, w) maps of a category's test set as PNG files (layout, normalisation and the all-or-nothing
    write: module docstring).

    Returns:
        The PNG paths written, in test-set order (the ``normalisation.json`` beside them is not listed).

    Raises:
        BenchError: the maps cannot be written (a full or read-only disk); the category's earlier maps are kept.
    """
    if bits not in BITS:
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    maps = np.asarray(maps, np.float32)
    names = map_names(labels, paths)
    fill = float(maps.min())
    # every map at its image's size first: the set's range is that of the written maps
    full = [map_to_image(m, preprocess, upright_size(p), fill=fill) for p, m in zip(paths, maps)]
    lo, hi = min(float(f.min()) for f in full), max(float(f.max()) for f in full)
    span = hi - lo if hi > lo else 1.0
    top = (1 << bits) - 1
    info = {"normalisation": "min-max jointly over all maps of this set", "min": lo, "max": hi, "bits": bits,
            "dtype": "uint8" if bits == 8 else "uint16", "value": f"round((map - min) / (max - min) * {top})",
            "image_fit": preprocess.fit, "orientation": "upright (EXIF applied)", "n_maps": len(names), **(meta or {})}  # fmt: skip
    base = Path(root) / category
    stage = Path(root) / f"{TMP_PREFIX}{category}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        for name, f in zip(names, full):
            q = np.clip(np.rint((f - lo) / span * top), 0, top).astype(np.uint8 if bits == 8 else np.uint16)
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(q).save(stage / name, format="PNG")
        (stage / "normalisation.json").write_text(json.dumps(info, indent=1, sort_keys=True, default=str) + "\n")
        swap_in(stage, base)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise BenchError(f"cannot write the maps of {category} under {root}: {exc.strerror or exc}{where}. Nothing "
                         f"was changed in {base}: free space or choose another --out.") from None  # fmt: skip
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return [base / name for name in names]


def swap_in(stage: Path, base: Path) -> None:
    """Put the complete folder ``stage`` in the place of ``base`` (renames on one disk: never half of each)."""
    old = base.with_name(f"{TMP_PREFIX}old-{base.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    if base.exists():
        base.rename(old)
    try:
        stage.rename(base)
    except OSError:
        if old.exists():
            old.rename(base)
        raise
    shutil.rmtree(old, ignore_errors=True)
