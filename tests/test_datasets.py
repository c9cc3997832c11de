"""Dataset adapters: real layouts, generated trees, and clear errors on bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.datasets import DatasetOptions, load_dataset
from bench.errors import DatasetError
from bench.images import IMAGENET_MEAN, IMAGENET_STD, Preprocess, load_rgb


def _png(path: Path, value: int = 128, size: int = 32, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size, size, 3), value, np.uint8)
    img = Image.fromarray(arr)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path)


def make_tree(root: Path, categories=("prod",), types=("crack", "hole"), n_train=3, n_type=4, good=2) -> Path:
    for c in categories:
        for i in range(n_train):
            _png(root / c / "train" / "good" / f"{i:03d}.png", 100 + i)
        for i in range(good):
            _png(root / c / "test" / "good" / f"{i:03d}.png", 90 + i)
        for t in types:
            for i in range(n_type):
                _png(root / c / "test" / t / f"{i:03d}.png", 20 * i)
                _png(root / c / "ground_truth" / t / f"{i:03d}_mask.png", 255)
    return root


def test_mvtec_layout_table(tmp_path: Path) -> None:
    root = make_tree(tmp_path, categories=("a", "b"), types=("crack", "hole", "combined"))
    s = load_dataset("folder", root)
    assert s.categories() == ["a", "b"]
    assert s.defect_types("a") == ["combined", "crack", "hole"]
    t = s.table
    assert len(t[(t.category == "a") & (t.split == "train")]) == 3
    test = t[(t.category == "a") & (t.label == "crack")]
    assert all(Path(p).name.endswith("_mask.png") for p in test.mask_path)
    assert s.train_paths("a") == sorted(s.train_paths("a"))
    s2 = load_dataset("folder", root, DatasetOptions(exclude_combined=True))
    assert s2.defect_types("a") == ["crack", "hole"]
    assert s.manifest_hash("a") != s2.manifest_hash("a")


def test_single_type_category_skipped_with_reason(tmp_path: Path) -> None:
    make_tree(tmp_path, categories=("ok",))
    make_tree(tmp_path, categories=("toothbrush",), types=("defective",))
    s = load_dataset("mvtec_ad", tmp_path)
    assert s.categories() == ["ok"]
    assert "toothbrush" in s.skipped and "1 defect type" in s.skipped["toothbrush"]


def test_only_single_type_categories_is_an_error(tmp_path: Path) -> None:
    make_tree(tmp_path, categories=("toothbrush",), types=("defective",))
    with pytest.raises(DatasetError, match="no usable category"):
        load_dataset("mvtec_ad", tmp_path)


@pytest.mark.parametrize(
    "setup, match",
    [
        (lambda r: None, "does not exist"),
        (lambda r: r.mkdir(), "no category folders"),
        # train/ may be missing (defect classes only); an empty test/ leaves no defect type
        (lambda r: (r / "prod" / "test").mkdir(parents=True), "no usable category"),
    ],
)
def test_bad_roots(tmp_path: Path, setup, match: str) -> None:
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(DatasetError, match=match):
        load_dataset("mvtec_ad", root)


def test_unknown_category_lists_found(tmp_path: Path) -> None:
    make_tree(tmp_path, categories=("prod",))
    with pytest.raises(DatasetError, match="Categories found there: prod"):
        load_dataset("mvtec_ad", tmp_path, DatasetOptions(categories=("prdo",)))


def test_no_root_given() -> None:
    with pytest.raises(DatasetError, match="needs --data-root"):
        load_dataset("mvtec_ad", None)


def test_load_rgb_errors_and_modes(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(DatasetError, match="empty"):
        load_rgb(empty)
    fake = tmp_path / "fake.png"
    fake.write_text("this is not an image")
    with pytest.raises(DatasetError, match="not a readable image"):
        load_rgb(fake)
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(good.read_bytes()[:200])
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        load_rgb(trunc)
    for mode in ("L", "RGBA", "P", "I;16"):
        p = tmp_path / f"m_{mode.replace(';', '')}.png"
        img = Image.fromarray(np.full((40, 30, 3), 77, np.uint8))
        (img.convert("L").convert("I;16") if mode == "I;16" else img.convert(mode)).save(p)
        out = load_rgb(p)
        assert out.mode == "RGB" and out.size == (30, 40)
    arr = Preprocess(resize=64, crop=56, mean=IMAGENET_MEAN, std=IMAGENET_STD)(good)
    assert arr.shape == (3, 56, 56) and arr.dtype == np.float32


def test_float_tiff_is_scaled_not_black(tmp_path: Path) -> None:
    """A mode-F TIFF with values in [0, 1] is x255 (PIL's own conversion clips it to all black); other float
    ranges are min-max scaled like 16-bit images; NaN pixels are refused with a message."""
    ramp = np.linspace(0.0, 1.0, 48 * 32, dtype=np.float32).reshape(48, 32)
    unit = tmp_path / "unit.tif"
    Image.fromarray(ramp, mode="F").save(unit)
    assert Image.open(unit).mode == "F"
    out = np.asarray(load_rgb(unit))
    assert out.shape == (48, 32, 3) and (out[..., 0] == out[..., 2]).all()
    np.testing.assert_array_equal(out[..., 0], np.rint(ramp * 255).astype(np.uint8))
    wide = tmp_path / "wide.tif"
    Image.fromarray(ramp * 1000 - 200, mode="F").save(wide)  # [-200, 800]: min-max
    w = np.asarray(load_rgb(wide))[..., 0]
    assert w.min() == 0 and w.max() == 255 and np.abs(w.astype(int) - out[..., 0]).max() <= 1
    bad = tmp_path / "nan.tif"
    Image.fromarray(np.where(ramp > 0.5, np.nan, ramp).astype(np.float32), mode="F").save(bad)
    with pytest.raises(DatasetError, match=f"image {bad} holds NaN or infinite pixel values"):
        load_rgb(bad)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    """A photo stored sideways with EXIF orientation 6 (rotate 90° clockwise to view) decodes as the upright
    image; one without the tag is left as stored."""
    arr = np.random.default_rng(0).integers(0, 255, (40, 64, 3), dtype=np.uint8)
    tagged = tmp_path / "tagged.png"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tagged, exif=exif)
    upright = np.rot90(arr, k=-1)  # 90° clockwise
    np.testing.assert_array_equal(np.asarray(load_rgb(tagged)), upright)
    plain = tmp_path / "plain.png"
    Image.fromarray(arr).save(plain)
    np.testing.assert_array_equal(np.asarray(load_rgb(plain)), arr)


def test_repeated_categories_and_duplicate_paths(tmp_path: Path) -> None:
    from bench.datasets import Samples
    from bench.datasets._base import finalize

    root = make_tree(tmp_path / "d", categories=("a", "b"))
    assert DatasetOptions(categories=("b", "a", "b")).categories == ("b", "a")
    once = load_dataset("folder", root, DatasetOptions(categories=("a",)))
    twice = load_dataset("folder", root, DatasetOptions(categories=("a", "a")))
    assert len(twice.table) == len(once.table) and not twice.table.image_path.duplicated().any()
    # an adapter (or a symbolic link) that lists one file twice in a category is refused where the table is built
    t = once.table
    dup = pd.concat([t, t[t.label == "crack"].head(1).assign(label="hole")], ignore_index=True)
    with pytest.raises(DatasetError, match=r"image .*000.png is listed 2 times in category 'a' \(test/crack, test/hole"):
        finalize(Samples("folder", root, dup), DatasetOptions())


def test_real_screw_subset(shared_screw: Path) -> None:
    s = load_dataset("mvtec_ad", shared_screw, DatasetOptions(categories=("screw",)))
    assert s.defect_types("screw") == ["manipulated_front", "scratch_head", "scratch_neck", "thread_side", "thread_top"]
    t = s.table
    counts = t[t.split == "test"].groupby("label").size().to_dict()
    assert counts == {"manipulated_front": 20, "scratch_head": 21, "scratch_neck": 20, "thread_side": 19, "thread_top": 17}
    assert (t.split == "train").sum() == 264
    img = load_rgb(t.image_path.iloc[0])  # stored as grayscale: must come back RGB
    assert img.mode == "RGB"
