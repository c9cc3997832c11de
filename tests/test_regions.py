"""Defect regions (``bench.regions``) and the MVTec-FS reader (``bench.datasets._mvtec_fs``): hand-made polygons,
masks and feature grids with exact expected values, and the real MVTec-FS screw config over the screw images held
in ``../shared/data`` (skipped, with the reason, when absent). ``../shared/docs/field-protocols.md §1, §3``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.datasets._mvtec_fs import MISSING_IMAGE, read_mvtec_fs
from bench.errors import DatasetError
from bench.images import upright_size
from bench.regions import connected_regions, mask_on_grid, pool_in_mask, rasterise

# --- rasterisation -------------------------------------------------------------------------------------------------


def test_a_square_fills_its_pixels_outline_included() -> None:
    mask = rasterise([[(1, 1), (4, 1), (4, 4), (1, 4)]], stored_size=(8, 8), out_size=(8, 8))
    expected = np.zeros((8, 8), bool)
    expected[1:5, 1:5] = True
    assert mask.dtype == bool and mask.shape == (8, 8)
    assert np.array_equal(mask, expected)


def test_a_triangle_fills_the_pixels_on_its_side_of_the_hypotenuse() -> None:
    mask = rasterise([[(0, 0), (4, 0), (0, 4)]], stored_size=(8, 8), out_size=(8, 8))
    ys, xs = np.mgrid[:8, :8]
    assert np.array_equal(mask, xs + ys <= 4)
    assert mask.sum() == 15


def test_polygons_scale_to_the_image_as_read() -> None:
    """Stored at 8 × 8, read at 16 × 16: vertices × 2 (and a non-square read scales each axis on its own)."""
    square = rasterise([[(1, 1), (4, 1), (4, 4), (1, 4)]], stored_size=(8, 8), out_size=(16, 16))
    expected = np.zeros((16, 16), bool)
    expected[2:9, 2:9] = True
    assert np.array_equal(square, expected)
    triangle = rasterise([[(0, 0), (4, 0), (0, 4)]], stored_size=(8, 8), out_size=(16, 16))
    ys, xs = np.mgrid[:16, :16]
    assert np.array_equal(triangle, xs + ys <= 8)
    wide = rasterise([[(1, 1), (4, 1), (4, 4), (1, 4)]], stored_size=(8, 8), out_size=(16, 8))  # (width, height)
    expected = np.zeros((8, 16), bool)
    expected[1:5, 2:9] = True
    assert np.array_equal(wide, expected)


def test_several_polygons_are_one_mask_and_a_thin_one_survives_downscaling() -> None:
    two = rasterise([[(0, 0), (1, 0), (1, 1), (0, 1)], [(5, 5), (6, 5), (6, 6), (5, 6)]], (8, 8), (8, 8))
    assert two.sum() == 8 and two[0, 0] and two[6, 6] and not two[3, 3]
    scratch = rasterise([[(10, 100), (900, 100), (900, 102), (10, 102)]], (1024, 1024), (256, 256))  # 3 px high
    assert scratch.any() and scratch[25, 3:226].all()


# --- regions -------------------------------------------------------------------------------------------------------

MASK = np.array(
    [
        [1, 1, 0, 0, 0, 0],
        [1, 0, 0, 0, 1, 0],
        [0, 0, 0, 1, 0, 0],  # (1, 4) and (2, 3) touch only at a corner: one region with 8-connectivity
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 1],
    ],
    dtype=bool,
)


def test_connected_regions_are_8_connected_in_raster_order() -> None:
    regions = connected_regions(MASK)
    assert [int(r.sum()) for r in regions] == [3, 2, 1]
    assert regions[0][0, 0] and regions[1][1, 4] and regions[1][2, 3] and regions[2][4, 5]
    assert np.array_equal(np.sum(regions, axis=0).astype(bool), MASK)
    assert all(r.dtype == bool and r.shape == MASK.shape for r in regions)


def test_small_regions_are_dropped_and_the_image_unit_is_their_union() -> None:
    assert [int(r.sum()) for r in connected_regions(MASK, min_pixels=2)] == [3, 2]
    (whole,) = connected_regions(MASK, min_pixels=2, union=True)
    assert np.array_equal(whole, MASK & ~np.eye(1, 30, 29, dtype=bool).reshape(5, 6))
    assert connected_regions(MASK, min_pixels=4) == [] and connected_regions(MASK, min_pixels=4, union=True) == []


# --- pooling -------------------------------------------------------------------------------------------------------

GRID = np.arange(16, dtype=float).reshape(4, 4, 1) * np.array([1.0, -2.0])  # cell (i, j) holds [4i + j, -2(4i + j)]


def test_a_mask_covering_whole_cells_pools_their_plain_mean() -> None:
    mask = np.zeros((8, 8), bool)
    mask[0:4, 0:2] = True  # cells (0, 0), (1, 0) on the 4 × 4 grid of an 8 × 8 image
    assert np.allclose(pool_in_mask(GRID, mask), [2.0, -4.0])
    assert np.allclose(pool_in_mask(GRID.reshape(16, 2), mask), [2.0, -4.0])  # (N, D), square grid inferred


def test_cells_count_by_their_covered_fraction() -> None:
    mask = np.zeros((8, 8), bool)
    mask[0:2, 0:2] = True  # cell (0, 0) whole: weight 1
    mask[0, 2] = True  # a quarter of cell (0, 1): weight 1/4
    assert np.allclose(mask_on_grid(mask, (4, 4))[0, :2], [1.0, 0.25])
    assert np.allclose(pool_in_mask(GRID, mask), [(0 * 1 + 1 * 0.25) / 1.25, -2 * 0.2])


def test_a_mask_smaller_than_the_threshold_falls_back_to_its_centroid_cell() -> None:
    mask = np.zeros((8, 8), bool)
    mask[5, 6] = True  # one pixel: a quarter of cell (2, 3)
    assert np.allclose(pool_in_mask(GRID, mask), GRID[2, 3])  # any covered fraction counts by default
    assert np.allclose(pool_in_mask(GRID, mask, min_fraction=0.5), GRID[2, 3])
    mask[5, 5] = mask[6, 5] = True  # a quarter of three cells each; centroid (5.33, 5.33) + 0.5 px → cell (2, 2)
    assert np.allclose(pool_in_mask(GRID, mask, min_fraction=0.9), GRID[2, 2])
    corners = np.zeros((8, 8), bool)
    corners[[1, 1, 6, 6], [1, 6, 1, 6]] = True  # an arc's worth of cells: the centroid's cell (2, 2) is untouched
    assert np.allclose(pool_in_mask(GRID, corners, min_fraction=0.5), GRID[2, 2])


def test_the_ring_is_the_plain_mean_of_the_untouched_cells_around_the_mask() -> None:
    mask = np.zeros((8, 8), bool)
    mask[0:2, 0:2] = True  # cell (0, 0)
    assert np.allclose(pool_in_mask(GRID, mask, ring=1), np.mean([GRID[0, 1], GRID[1, 0], GRID[1, 1]], axis=0))
    ring2 = [GRID[i, j] for i in range(3) for j in range(3) if (i, j) != (0, 0)]
    assert np.allclose(pool_in_mask(GRID, mask, ring=2), np.mean(ring2, axis=0))
    mask[0, 2] = True  # now touches cell (0, 1): that cell is inside, not ring
    ring1 = [GRID[0, 2], GRID[1, 0], GRID[1, 1], GRID[1, 2]]
    assert np.allclose(pool_in_mask(GRID, mask, ring=1), np.mean(ring1, axis=0))
    almost = np.ones((8, 8), bool)
    almost[0:2, 0:2] = [[True, False], [False, False]]  # cell (0, 0) a quarter covered: below min_fraction, not ring
    whole_grid = GRID.reshape(16, 2).mean(axis=0)  # no untouched cell is left: the ring is the whole grid
    assert np.allclose(pool_in_mask(GRID, almost, ring=1, min_fraction=0.5), whole_grid)


def test_pooling_refuses_an_empty_mask_and_shapes_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="empty"):
        pool_in_mask(GRID, np.zeros((8, 8), bool))
    with pytest.raises(ValueError, match="square"):
        pool_in_mask(np.zeros((12, 2)), np.ones((8, 8), bool))
    assert np.allclose(pool_in_mask(np.ones((12, 2)), np.ones((6, 8), bool), grid=(3, 4)), [1.0, 1.0])


# --- the MVTec-FS reader -------------------------------------------------------------------------------------------


def _write(folder: Path, train: str, valid: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.csv").write_text(train)
    if valid is not None:
        (folder / "valid.csv").write_text(valid)
    return folder


HEADER = "imageWidth,imageHeight,id,img_rel_path,label,points\n"
ROW = '8,8,{id},{split}/crack/000.png,{label},"[[1, 1], [4, 1], [4, 4]]"\n'
ONE = ROW.format(id=1, split="training", label="crack")


def test_the_reader_keeps_instances_with_an_image_and_counts_the_others(tmp_path: Path) -> None:
    (tmp_path / "ad/widget/test/crack").mkdir(parents=True)
    (tmp_path / "ad/widget/test/crack/000.png").write_bytes(b"")  # only existence is checked
    config = _write(tmp_path / "cfg", HEADER + ROW.format(id=1, split="training", label="crack")
                    + ROW.format(id=2, split="training", label="scratch").replace("000", "001"),
                    HEADER + ROW.format(id=3, split="testing", label="crack"))  # fmt: skip
    found = read_mvtec_fs(config, tmp_path / "ad", "widget")
    assert list(found.table["instance_id"]) == ["1", "3"] and list(found.table["split"]) == ["train", "valid"]
    assert found.table["polygons"][0] == (((1.0, 1.0), (4.0, 1.0), (4.0, 4.0)),)
    assert found.table["stored_size"][0] == (8, 8)
    assert dict(found.skipped) == {f"train: {MISSING_IMAGE}": 1}


@pytest.mark.parametrize(
    ("train", "valid", "message"),
    [
        (HEADER + ONE, None, "valid.csv"),
        ("id,label\n1,crack\n", "", "train.csv.*no column"),
        (HEADER + ONE.replace('"[[1', '"[[x'), HEADER, "train.csv, row 1.*JSON"),
        (HEADER + ONE.replace("training/", ""), HEADER, "train.csv, row 1.*img_rel_path"),
    ],
)  # fmt: skip
def test_a_missing_or_malformed_csv_is_a_dataset_error_naming_the_file(
    tmp_path: Path, train: str, valid: str | None, message: str
) -> None:
    config = _write(tmp_path / "cfg", train, valid)
    with pytest.raises(DatasetError, match=message):
        read_mvtec_fs(config, tmp_path, "widget")
    with pytest.raises(DatasetError, match="config folder not found"):
        read_mvtec_fs(tmp_path / "nowhere", tmp_path, "widget")


def test_the_real_mvtec_fs_screw_instances_of_the_images_we_hold(shared_data: Path, shared_screw: Path) -> None:
    """The shared screw images carry 51 of the 69 train and 52 of the 60 valid instances (the shared data README):
    103 regions, each drawn inside its image (stored at 256 px, polygons at 1024) and non-empty."""
    config = shared_data / "mvtec_fs" / "CONFIG" / "screw_config1"
    if not (config / "train.csv").is_file():
        pytest.skip(f"{config} not found: the MVTec-FS CSVs are needed for this test")
    found = read_mvtec_fs(config, shared_screw, "screw")
    assert len(found.table) == 103
    assert (found.table["split"] == "train").sum() == 51 and (found.table["split"] == "valid").sum() == 52
    assert dict(found.skipped) == {f"train: {MISSING_IMAGE}": 69 - 51, f"valid: {MISSING_IMAGE}": 60 - 52}
    by_split = found.table.groupby("split")["image_path"].agg(set)
    assert not by_split["train"] & by_split["valid"]  # disjoint images
    for row in found.table.itertuples():
        size = upright_size(row.image_path)
        mask = rasterise(row.polygons, row.stored_size, size)
        assert mask.shape == (size[1], size[0]) and mask.any(), row.instance_id
        xs = [x * size[0] / row.stored_size[0] for poly in row.polygons for x, _ in poly]  # vertices as read
        ys = [y * size[1] / row.stored_size[1] for poly in row.polygons for _, y in poly]
        assert 0 <= min(xs) and max(xs) < size[0] and 0 <= min(ys) and max(ys) < size[1], row.instance_id
        assert len(connected_regions(mask)) >= 1
