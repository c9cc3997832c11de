"""Defect regions: polygons → masks, masks → regions, and features pooled inside a region's mask.

The field classifies defect *regions* with the region's mask given (MVREC on MVTec-FS,
``../shared/docs/field-protocols.md §1``); a region method pools features inside the mask and in a context ring
around it (``../shared/docs/field-protocols.md §3``). This module is that ground floor, with no dataset and no
backbone in it: :func:`rasterise` draws a region's polygon(s) on the image as read, :func:`connected_regions` splits
a mask into regions (or keeps one region per image), and :func:`pool_in_mask` averages a feature grid inside a mask
or in its ring. The MVTec-FS reader that gives the polygons is :mod:`bench.datasets._mvtec_fs`.

Sizes are ``(width, height)`` as PIL gives them (:func:`bench.images.upright_size`); arrays are ``(H, W)``.

Example::

    mask = rasterise([[(198, 857), (164, 941), (261, 876)]], stored_size=(1024, 1024), out_size=(256, 256))
    regions = connected_regions(mask, min_pixels=4)
    inside = pool_in_mask(grid, regions[0])          # grid: (28, 28, D) features of the same image
    context = pool_in_mask(grid, regions[0], ring=2)
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

Point = Sequence[float]
Polygon = Sequence[Point]

EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=bool)
"""The structuring element of :func:`connected_regions` (8-connectivity), see there."""


def _size(size: Sequence[int], what: str) -> tuple[int, int]:
    w, h = (int(v) for v in size)
    if w <= 0 or h <= 0:
        raise ValueError(f"{what} must be a positive (width, height), got {tuple(size)!r}")
    return w, h


def rasterise(polygons: Iterable[Polygon], stored_size: Sequence[int], out_size: Sequence[int]) -> np.ndarray:
    """The mask of ``polygons`` (their union) on an image read at ``out_size``: bool ``(H, W)``.

    Args:
        polygons: one or more polygons, each a sequence of ``(x, y)`` vertices in the pixel coordinates of the
            image at ``stored_size`` (MVTec-FS's ``points``: the original 1024-pixel screw image,
            ``../shared/docs/field-protocols.md §1``).
        stored_size: ``(width, height)`` the vertices refer to (MVTec-FS's ``imageWidth``, ``imageHeight``).
        out_size: ``(width, height)`` of the image as read (the shared screw subset is stored at 256 pixels).

    Vertices are scaled by ``out / stored`` on each axis (``width / imageWidth``, as the field-protocols note says)
    and the polygon is drawn at the output size with PIL, filled and with its outline, which is how the annotation
    tool behind MVTec-FS (labelme's ``shape_to_mask``) draws it at the stored size: at equal sizes the mask is the
    authors'. Drawing the scaled polygon, rather than shrinking the full-size mask, keeps a thin scratch (two or three
    pixels wide at 1024) as at least a one-pixel line at 256 instead of letting it vanish under the resize. A polygon
    of one or two vertices is drawn as a point or a line. Parts outside the image are clipped.
    """
    sw, sh = _size(stored_size, "stored_size")
    ow, oh = _size(out_size, "out_size")
    sx, sy = ow / sw, oh / sh
    canvas = Image.new("1", (ow, oh), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        xy = [(float(p[0]) * sx, float(p[1]) * sy) for p in polygon]
        if len(xy) >= 3:
            draw.polygon(xy, fill=1, outline=1)
        elif len(xy) == 2:
            draw.line(xy, fill=1)
        elif len(xy) == 1:
            draw.point(xy, fill=1)
    return np.asarray(canvas, dtype=bool).copy()


def connected_regions(mask: np.ndarray, min_pixels: int = 1, union: bool = False) -> list[np.ndarray]:
    """The regions of a bool ``(H, W)`` mask: its 8-connected components of at least ``min_pixels`` pixels, each a
    bool mask of the same shape, in the raster order of their first pixel.

    8-connectivity (diagonal neighbours join): a thin diagonal scratch drawn at a reduced size is a staircase of
    pixels that touch only at their corners; with 4-connectivity it would fall apart into many one-pixel "regions"
    of the same defect. Two defects that touch diagonally become one region, the lesser error for a classifier
    given one label per region (``../shared/docs/field-protocols.md §1``: one label per defect region).

    Args:
        mask: the defect pixels (an estimated mask from an anomaly map, or a ground-truth one).
        min_pixels: components smaller than this are dropped (specks of a thresholded map).
        union: the per-image unit (``../shared/docs/field-protocols.md §3``, the unit column): one region, the union
            of the kept components; ``[]`` when none is kept.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {m.shape}")
    labels, count = ndimage.label(m, structure=EIGHT_NEIGHBOURS)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = [i for i in range(1, count + 1) if sizes[i] >= max(1, int(min_pixels))]  # labels run in raster order
    if union:
        return [np.isin(labels, keep)] if keep else []
    return [labels == i for i in keep]


def threshold_resampled(a: np.ndarray) -> np.ndarray:
    """A bool mask from a mask resampled to another size as 0–255 values (bilinear): the pixels above half; where none
    is (a region thinner than a pixel of the new size), its strongest pixels, so that a thin defect keeps a place.
    An all-zero array gives an empty mask."""
    a = np.asarray(a)
    m = a > 127
    if m.any() or a.max() == 0:
        return m
    return a >= a.max()


def _area_matrix(cells: int, pixels: int) -> np.ndarray:
    """``(cells, pixels)``: the fraction of each grid cell (along one axis) that each pixel covers.

    Cell ``i`` spans ``[i, i + 1) * pixels / cells`` in pixel units and pixel ``r`` spans ``[r, r + 1)``; rows sum to
    1. The mask's covered fraction per cell is ``A_y @ mask @ A_x.T``: an exact area resize (OpenCV's ``INTER_AREA``
    at any ratio)."""
    edges = np.arange(cells + 1) * (pixels / cells)
    lo, hi = edges[:-1, None], edges[1:, None]
    r = np.arange(pixels)[None, :]
    overlap = np.clip(np.minimum(hi, r + 1) - np.maximum(lo, r), 0.0, None)
    return overlap / (pixels / cells)


def mask_on_grid(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """The fraction of each cell of a ``grid = (H', W')`` feature grid that a bool ``(H, W)`` mask covers, in
    ``[0, 1]``: the mask resized to the grid by area (the grid spans the whole image, as a backbone's feature map
    spans its input)."""
    m = np.asarray(mask, dtype=float)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {m.shape}")
    gh, gw = grid
    return _area_matrix(gh, m.shape[0]) @ m @ _area_matrix(gw, m.shape[1]).T


def _as_grid(features: np.ndarray, grid: tuple[int, int] | None) -> np.ndarray:
    f = np.asarray(features)
    if f.ndim == 3:
        if grid is not None and tuple(grid) != f.shape[:2]:
            raise ValueError(f"grid {tuple(grid)} does not match features of shape {f.shape}")
        return f
    if f.ndim != 2:
        raise ValueError(f"features must be (H', W', D) or (N, D), got shape {f.shape}")
    n = f.shape[0]
    if grid is None:
        side = int(round(n**0.5))
        if side * side != n:
            raise ValueError(f"features of shape {f.shape} are not a square grid: pass grid=(H', W')")
        grid = (side, side)
    if grid[0] * grid[1] != n:
        raise ValueError(f"grid {tuple(grid)} does not hold the {n} rows of features")
    return f.reshape(grid[0], grid[1], f.shape[1])


def centroid_cell(mask: np.ndarray, grid: tuple[int, int]) -> tuple[int, int]:
    """The ``(row, column)`` of the grid cell holding the centroid of a non-empty bool ``(H, W)`` mask (pixel
    centres at ``index + 0.5``)."""
    m = np.asarray(mask, dtype=bool)
    ys, xs = np.nonzero(m)
    if ys.size == 0:
        raise ValueError("the mask is empty: there is no region to pool")
    cy, cx = ys.mean() + 0.5, xs.mean() + 0.5
    row = min(grid[0] - 1, int(cy * grid[0] / m.shape[0]))
    col = min(grid[1] - 1, int(cx * grid[1] / m.shape[1]))
    return row, col


def pool_in_mask(
    features: np.ndarray,
    mask: np.ndarray,
    ring: int = 0,
    grid: tuple[int, int] | None = None,
    min_fraction: float = 0.0,
) -> np.ndarray:
    """The ``(D,)`` float64 mean of a feature grid inside a region's mask (``ring=0``) or in a context ring around it.

    Region pooling, ``../shared/docs/field-protocols.md §3``: "features pooled inside the mask (and a context ring)".

    Args:
        features: ``(H', W', D)``, or ``(N, D)`` with ``N = H' * W'`` in row-major order (``grid`` gives
            ``(H', W')``; a square grid is inferred).
        mask: bool ``(H, W)`` on the image the grid covers (any size: it is resized to the grid by area,
            :func:`mask_on_grid`).
        ring: ``0`` pools inside the mask: the mean of the cells the mask covers, each weighted by its covered
            fraction. ``r > 0`` pools the context ring: the plain mean of the cells within ``r`` cells (Chebyshev
            distance, diagonals included) of the inside cells that the mask does not touch at all. When the mask
            leaves no such cell (it spans the grid), the ring is the whole grid.
        min_fraction: inside cells are those covered by more than this fraction (``0``: any covered pixel).
            Cells covered less are left out of both the inside and the ring.

    When no cell is left inside (a mask smaller than ``min_fraction`` of every cell it touches), the inside is the
    one cell holding the mask's centroid. A defect smaller than a cell still has a place: a real category's defects
    cover about 0.2 % of the image (``../shared/docs/field-protocols.md §3``), under one 8-pixel cell of a 28 × 28
    grid, and the cell that holds it is the feature that saw it (its receptive field spans the cell and more). The
    centroid gives that cell without a threshold or a tie to break; for a thin curved scratch it may fall on a cell
    the mask misses, a cell next to the defect.

    Raises:
        ValueError: an empty mask (no region), or shapes that do not fit.
    """
    f = _as_grid(features, grid)
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {m.shape}")
    if not m.any():
        raise ValueError("the mask is empty: there is no region to pool")
    if ring < 0:
        raise ValueError(f"ring must be 0 (inside) or a positive number of cells, got {ring}")
    shape = f.shape[:2]
    cover = mask_on_grid(m, shape)
    inside = cover > min_fraction
    weight = np.where(inside, cover, 0.0)
    if not inside.any():
        inside = np.zeros(shape, dtype=bool)
        inside[centroid_cell(m, shape)] = True
        weight = inside.astype(float)
    flat = f.reshape(-1, f.shape[2]).astype(np.float64)
    if ring == 0:
        w = weight.ravel()
        return (w @ flat) / w.sum()
    near = ndimage.binary_dilation(inside, structure=EIGHT_NEIGHBOURS, iterations=int(ring))
    around = near & (cover == 0) & ~inside
    if not around.any():
        around = np.ones(shape, dtype=bool)
    return flat[around.ravel()].mean(axis=0)
