"""``bench show-crops``: a picture of what AnomalyNCD's first stage makes of a few images: the anomaly map, the MEBin
mask (with the estimated number of anomalies and the threshold) and the anomaly-centred crops with their masks.

The maps, the MEBin range and the crops are computed over the whole set of the protocol, exactly as a discovery job
computes them (:mod:`bench.discovery.maps`, :mod:`bench.discovery.mebin`, :mod:`bench.discovery.crops`); the picture
shows a few of its images, one per class first.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from bench.cache import atomic_write
from bench.discovery.contract import DiscoverySet
from bench.discovery.crops import CropImages, image_crops
from bench.discovery.maps import Frame, MapSet, frame_image, load_mask
from bench.discovery.mebin import MebinResult, mebin
from bench.discovery.protocol import LabelledSet
from bench.errors import BenchError, ConfigError
from bench.paths import probe_writable

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PICTURE_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}
"""The picture files ``bench show-crops`` writes, by suffix."""


def pick(ls: LabelledSet, n: int) -> list[int]:
    """``n`` images of the set, one per class in turn (defect types first, then ``good``), first by name."""
    by_class = [[i for i, y in enumerate(ls.labels) if y == c] for c in range(ls.k)]
    out: list[int] = []
    depth = 0
    while len(out) < n and any(depth < len(b) for b in by_class):
        out += [b[depth] for b in by_class if depth < len(b)][: n - len(out)]
        depth += 1
    return out


WHOLE_TILE = 0.5
"""A MEBin mask over at least this share of the image is explained in the picture (:func:`whole_tile_note`)."""


def whole_tile_note(r: MebinResult, maps: np.ndarray, rows: Sequence[int]) -> str:
    """Why some masks cover (most of) the tile, for the picture's foot; "" when none of ``rows`` does.

    MEBin's search range starts at the smallest per-image map maximum of the whole set (``min_th``). A map whose
    background lies above that (an image brighter or more textured than the set's calmest one: MTD's crack images
    are) is one region at every threshold from ``min_th`` up to its background level, and that run of count 1 is
    the longest stable interval, so MEBin answers "one anomaly" with a threshold near ``min_th`` and a mask over the
    background: AnomalyNCD's rule as coded (bench/discovery/mebin.py), not a drawing error. The crop is then the
    whole image; the map still shows where the defect is."""
    flagged = [i for i in rows if r.masks[i].mean() >= WHOLE_TILE]
    if not flagged:
        return ""
    shares = ", ".join(f"{float((maps[i] > r.min_th).mean()):.0%}" for i in flagged)
    return (f"Masks over most of the tile (marked *): {shares} of those maps lie above MEBin's range low {r.min_th:.0f} "
            "(the set's smallest per-image maximum), so their longest stable region count is the background as one "
            "region at a threshold near the range low: MEBin's rule (AnomalyNCD), which then crops the whole image. "
            "Read the map column for where the defect is.")  # fmt: skip


def crops_figure(ls: LabelledSet, maps: MapSet, frame: Frame, chosen: Sequence[int], max_crops: int = 3) -> "Figure":
    """Rows = chosen images; columns: the image with its crop boxes (ground truth outlined when known), the anomaly
    map, the MEBin mask, then up to ``max_crops`` crops (source resolution) with their mask outlined. A mask over most
    of the tile is marked and explained at the foot (:func:`whole_tile_note`)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    r = mebin(maps.maps)
    data = DiscoverySet(ls.dataset, ls.category, ls.paths, ls.k, frame)
    per_image = {i: image_crops(i, r.masks[i], r.est_nums[i], r.normalised(maps.maps[i])) for i in chosen}
    max_crops = max(1, min(max_crops, max(len(c) for c in per_image.values())))
    cols = 3 + max_crops
    fig = Figure(figsize=(2.0 * cols, 2.1 * len(chosen) + 0.4))
    for row, i in enumerate(chosen):
        crops = per_image[i]
        img = frame_image(ls.paths[i], frame)
        gt = load_mask(ls.mask_paths[i], ls.paths[i], frame) if ls.mask_paths[i] else None
        axes = [fig.add_subplot(len(chosen), cols, row * cols + j + 1) for j in range(cols)]
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_frame_on(False)
        axes[0].imshow(img)
        if gt is not None and gt.any():
            axes[0].contour(gt, levels=[0.5], colors="lime", linewidths=0.8)
        for c in crops:
            x0, y0, x1, y1 = c.box
            axes[0].add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="red", linewidth=1.2))
        axes[0].set_title(f"{ls.class_names[ls.labels[i]]}: {Path(ls.paths[i]).name}", fontsize=7)
        axes[1].imshow(maps.maps[i], cmap="jet", vmin=0, vmax=255)
        axes[1].set_title(f"map (max {int(maps.maps[i].max())})", fontsize=7)
        axes[2].imshow(r.masks[i], cmap="gray", vmin=0, vmax=1)
        axes[2].set_frame_on(True)  # a white (whole-tile) mask would vanish into the page without its border
        for spine in axes[2].spines.values():
            spine.set_edgecolor("0.6")
        cover = float(r.masks[i].mean())
        axes[2].set_title(f"MEBin: est {r.est_nums[i]}, th {r.thresholds[i]}"
                          + (f"\n* mask = {cover:.0%} of the tile" if cover >= WHOLE_TILE else ""), fontsize=7)  # fmt: skip
        thumbs = CropImages(data, crops, 160)
        for j, c in enumerate(crops[:max_crops]):
            ax = axes[3 + j]
            ax.imshow(thumbs[j])
            if c.mask.any():  # the box's mask, stretched over the thumbnail
                ax.contour(c.mask.astype(float), levels=[0.5], colors="red", linewidths=0.8, extent=(0, 160, 0, 160))
            ax.set_title(f"crop {j + 1}: score {c.score:.2f}", fontsize=7)
    fig.suptitle(f"{ls.dataset} / {ls.category}: MEBin masks and crops (range {r.min_th:.0f}-{r.max_th:.0f}; green = "
                 f"ground truth, red = crops); maps: {maps.info.get('source')}", fontsize=8)  # fmt: skip
    note = whole_tile_note(r, maps.maps, chosen)
    if note:
        fig.text(0.5, 0.0, textwrap.fill(note, 25 * cols), ha="center", va="top", fontsize=7)
    fig.tight_layout()
    return fig


def picture_format(out: Path) -> str:
    """The file format of a picture path, from its suffix: ``png`` or ``jpeg`` (:data:`PICTURE_FORMATS`).

    Raises:
        ConfigError: any other suffix (matplotlib would write a PDF or SVG under a ``.png``-less name, or fail on
            ``.txt`` after the maps were computed).
    """
    fmt = PICTURE_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise ConfigError(f"--out {out}: the picture is written as PNG or JPEG; give a file name ending in "
                          f"{', '.join(PICTURE_FORMATS)}, or an existing folder.")  # fmt: skip
    return fmt


def check_writable(out: Path) -> None:
    """Make ``out``'s folder and write a probe file there, so that a read-only or missing place fails before the
    maps are computed, with a message (the probe is removed).

    Raises:
        BenchError: the folder cannot be made or written.
    """
    try:
        probe_writable(out.parent)
    except OSError as exc:
        raise BenchError(f"cannot write the picture {out} ({exc.strerror or exc}). Choose another --out.") from None


def save_crops_picture(ls: LabelledSet, maps: MapSet, frame: Frame, out: Path, n_images: int = 6) -> Path:
    """Write :func:`crops_figure` for :func:`pick`'s images to ``out`` (PNG or JPEG by its suffix, no timestamp),
    atomically: a full disk leaves no truncated picture and an earlier one whole.

    Raises:
        ConfigError: see :func:`picture_format`.
        BenchError: the file cannot be written.
    """
    fmt = picture_format(out)
    fig = crops_figure(ls, maps, frame, pick(ls, n_images))
    meta = {"Software": None} if fmt == "png" else None  # PNG only: matplotlib refuses metadata for JPEG
    try:
        tight = {"bbox_inches": "tight", "pad_inches": 0.15}  # keeps the note below the rows
        atomic_write(out, lambda f: fig.savefig(f, format=fmt, dpi=110, metadata=meta, **tight))
    except OSError as exc:
        raise BenchError(f"cannot write the picture {out} ({exc.strerror or exc}). Choose another --out.") from None
    return out
