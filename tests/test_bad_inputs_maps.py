"""Bad input to the anomaly maps, tried for real (issue #20, items 4 and 6 and the maps' tracebacks).

``bench maps`` writes one PNG per test image, ``--maps`` (discovery) and ``show-crops --maps`` read them back with
one reader; ground-truth masks feed the oracle rows. Each case runs the CLI in this process (``bench.cli.main``)
or the library function every consumer goes through, and checks the exit status, a message naming the file and
the fix, no traceback, and that the user's files are byte-identical afterwards.

The data is the ``tile`` category of synthetic-tiny in the MVTec layout (``--dataset folder``), with two quirks
added where a case needs them: two images that share a stem (``000.png`` and ``000.jpg``) and a photo stored
sideways with an EXIF orientation tag.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bench.errors import DatasetError
from bench.results import read_rows
from tests.helpers import cli, file_tree

COMMON = ["--backbone", "resnet18", "--weights", "random"]
RUN = [*COMMON, "--no-progress", "--threads", "1", "--seeds", "1"]


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> Path:
    """The ``tile`` category of synthetic-tiny (8 normals, 3 good and 3 × 7 defect test images, 128 × 128)."""
    from bench.datasets.synthetic import generate

    root = generate(tmp_path_factory.mktemp("tiny"), "tiny")
    shutil.rmtree(root / "screw")
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One feature cache for the module (features are keyed by image content: copies of the data hit it)."""
    return tmp_path_factory.mktemp("cache")


def turned_photo(path: Path, upright: np.ndarray) -> None:
    """Save ``upright`` (H, W, 3) as a JPEG stored sideways with EXIF orientation 6 (viewers turn it back)."""
    raw = np.rot90(upright, k=1)  # orientation 6 = turn the stored pixels 90° clockwise to show them upright
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(raw)).save(path, quality=95, exif=exif)


@pytest.fixture(scope="module")
def quirky(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``base`` plus ``test/crack/000.jpg`` beside ``000.png`` and ``test/crack/007.jpg`` (96 × 160 upright, stored
    160 × 96 with an EXIF orientation), each with its mask."""
    root = Path(shutil.copytree(base, tmp_path_factory.mktemp("quirky") / "data"))
    crack, gt = root / "tile" / "test" / "crack", root / "tile" / "ground_truth" / "crack"
    a = np.asarray(Image.open(crack / "003.png").convert("RGB"))
    Image.fromarray(a).save(crack / "000.jpg", quality=95)
    tall = np.asarray(Image.fromarray(a).resize((96, 160)))
    turned_photo(crack / "007.jpg", tall)
    Image.open(gt / "003_mask.png").resize((96, 160), Image.NEAREST).save(gt / "007_mask.png")
    return root


def maps_cmd(data: Path, cache: Path, out: Path, *extra: str) -> list[str]:
    return ["maps", "--dataset", "folder", "--data-root", str(data), "--categories", "tile", "--shots", "2", *COMMON,
            "--device", "cpu", "--cache-dir", str(cache), "--out", str(out), *extra]  # fmt: skip


def one_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def gt_maps(data: Path, out: Path, bits: int) -> Path:
    """Maps made from the ground-truth masks (blurred, on a floor), written where ``bench maps`` would put them,
    at ``bits``: a detector that finds every defect, so that discovery can tell a read map from a clipped one."""
    from scipy.ndimage import gaussian_filter

    from bench.datasets import load_dataset
    from bench.discovery.maps import png_map_paths
    from bench.discovery.protocol import discovery_set

    ls = discovery_set(load_dataset("folder", str(data)), "tile", "ncd")
    top = (1 << bits) - 1
    for target, m in zip(png_map_paths(out, "tile", [ls.class_names[y] for y in ls.labels], ls.paths), ls.mask_paths):
        a = np.zeros((128, 128)) if not m else np.asarray(Image.open(m).convert("L"), np.float64) / 255.0
        q = np.rint((gaussian_filter(a, 3) * 0.9 + 0.05) * top).astype(np.uint8 if bits == 8 else np.uint16)
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(q).save(target)
    return out


# --------------------------------------------------------------------------------------------- item 4: reading maps
def test_16_bit_maps_are_read_like_8_bit_ones(capsys, base, cache, tmp_path) -> None:  # noqa: ANN001
    """``bench maps --bits 16`` output given to ``--maps`` was clipped to 255 (discovery ACC 1.000 → 0.357, exit 0):
    both depths now give the same maps (up to rounding), so the same accuracy."""
    from bench.detection.maps import write_maps
    from bench.discovery.maps import Frame, png_maps
    from bench.images import Preprocess

    imgs = sorted((base / "tile" / "test" / "crack").glob("*.png"))[:3]
    raw = np.random.default_rng(0).random((3, 7, 7)).astype(np.float32)
    pre, frame = Preprocess(256, 224, "crop"), Frame("crop")
    read = {}
    for bits in (8, 16):
        written = write_maps(tmp_path / f"m{bits}", "tile", [str(p) for p in imgs], ["crack"] * 3, raw, pre, bits)
        read[bits] = png_maps(written, [str(p) for p in imgs], frame, tmp_path / f"m{bits}").maps.astype(int)
    assert read[16].max() > 240 and read[16].min() < 15 and (read[16] == 255).mean() < 0.01, "16-bit maps saturated"
    assert np.abs(read[16] - read[8]).max() <= 1
    # the discovery task, for real: the same maps at either depth give the same row
    rows = {}
    for bits in (8, 16):
        maps = gt_maps(base, tmp_path / f"gt{bits}", bits)
        code, out, err = cli(capsys, "run", "--task", "discovery", "--dataset", "folder", "--data-root", str(base),
                             "--categories", "tile", "--method", "mebin-kmeans", *RUN, "--maps", str(maps),
                             "--out", str(tmp_path / f"run{bits}"), "--cache-dir", str(cache))  # fmt: skip
        assert code == 0, err
        (rows[bits],) = read_rows([tmp_path / f"run{bits}"]).rows
    acc8, acc16 = rows[8]["cluster_accuracy"], rows[16]["cluster_accuracy"]  # 16 bits keep the fractions 8 round off
    assert abs(acc16 - acc8) <= 0.05 and acc16 > rows[16]["largest_class_share"] + 0.2, (acc8, acc16)


def _float_tiff(path: Path, a: np.ndarray) -> None:
    Image.fromarray(a.astype(np.float32), mode="F").save(path, format="TIFF")


BAD_MAPS = {
    "float TIFF named .png": (lambda p: _float_tiff(p, np.linspace(0, 1, 128 * 128).reshape(128, 128)), "is a float image"),
    "NaN in a float map": (lambda p: _float_tiff(p, np.where(np.eye(128) > 0, np.nan, 0.5)), "NaN or infinite values"),
    "inf in a float map": (lambda p: _float_tiff(p, np.where(np.eye(128) > 0, np.inf, 0.5)), "NaN or infinite values"),
    "saturated": (lambda p: Image.fromarray(np.full((128, 128), 255, np.uint8)).save(p), "is constant at the top of its scale"),
    "all flat": (lambda p: Image.fromarray(np.full((128, 128), 3, np.uint8)).save(p), "every anomaly map of the set is constant"),
    "RGB heat map": (lambda p: Image.fromarray(np.random.default_rng(1).integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(p),
                     "is a RGB image, not a single-channel grey map"),
    "wrong size": (lambda p: Image.fromarray(np.arange(64 * 128, dtype=np.uint16).reshape(64, 128)).save(p),
                   "is 128×64 px but its image"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_MAPS))
def test_bad_map_files_are_refused_with_their_name(base, tmp_path, case: str) -> None:  # noqa: ANN001
    """Float TIFFs, NaN/inf, constant, colour or wrong-size maps were read (clipped, averaged or stretched) without a
    word; the one reader refuses each, naming the file."""
    from bench.discovery.maps import Frame, png_maps

    img = base / "tile" / "test" / "crack" / "000.png"
    mp = tmp_path / "maps" / "tile" / "crack" / "000.png"
    mp.parent.mkdir(parents=True)
    make, message = BAD_MAPS[case]
    make(mp)
    with pytest.raises(DatasetError) as exc:
        png_maps([mp], [str(img)], Frame("crop"), tmp_path / "maps")
    assert message in str(exc.value) and str(mp) in str(exc.value), str(exc.value)


def test_show_crops_reads_maps_with_the_same_reader(capsys, base, cache, tmp_path) -> None:  # noqa: ANN001
    """``show-crops --maps``: 16-bit maps drawn as read (not saturated), a bad map one error line naming it."""
    from bench.discovery import pictures

    maps = gt_maps(base, tmp_path / "gt16", 16)
    seen: dict[str, Any] = {}
    real = pictures.crops_figure

    def spy(ls: Any, m: Any, *a: Any, **k: Any) -> Any:
        seen["maps"] = m.maps
        return real(ls, m, *a, **k)

    pictures.crops_figure = spy
    try:
        code, out, err = cli(capsys, "show-crops", "--category", "tile", "--dataset", "folder", "--data-root", str(base),
                             *COMMON, "--maps", str(maps), "--images", "2", "--out", str(tmp_path / "c.png"))  # fmt: skip
    finally:
        pictures.crops_figure = real
    assert code == 0, err
    assert seen["maps"].max() > 200 and seen["maps"].min() < 20 and (seen["maps"] == 255).mean() < 0.05
    bad = maps / "tile" / "stain" / "002.png"
    Image.fromarray(np.zeros((128, 128, 3), np.uint8) + np.arange(128, dtype=np.uint8)[:, None, None]).save(bad)
    code, _, err = cli(capsys, "show-crops", "--category", "tile", "--dataset", "folder", "--data-root", str(base),
                       *COMMON, "--maps", str(maps), "--images", "2", "--out", str(tmp_path / "c2.png"))  # fmt: skip
    assert code == 2 and str(bad) in one_error(err) and "not a single-channel grey map" in err
    assert not (tmp_path / "c2.png").exists()


# --------------------------------------------------------------------------------------------- item 4: oracle masks
def test_oracle_masks_missing_blank_or_of_the_wrong_size(capsys, base, cache, tmp_path) -> None:  # noqa: ANN001
    """A defect image without its mask, a type whose masks are blank, or a mask of another shape than its image gave
    the oracle whole-image crops or stretched masks without a word: each is refused, naming the file."""
    from bench.discovery.maps import Frame, check_defect_masks, load_mask

    crack = sorted((base / "tile" / "test" / "crack").glob("*.png"))
    masks = [str(base / "tile" / "ground_truth" / "crack" / f"{p.stem}_mask.png") for p in crack]
    imgs, types = [str(p) for p in crack], ["crack"] * len(crack)
    check_defect_masks(imgs, masks, types)  # the dataset as made: fine
    with pytest.raises(DatasetError, match="defect image\\(s\\) have no ground-truth mask, e.g. .*001.png"):
        check_defect_masks(imgs, [masks[0], "", *masks[2:]], types)
    with pytest.raises(DatasetError, match=f"the mask {tmp_path / 'gone.png'} of image .* is missing"):
        check_defect_masks(imgs, [str(tmp_path / "gone.png"), *masks[1:]], types)
    blank = tmp_path / "blank.png"
    Image.fromarray(np.zeros((128, 128), np.uint8)).save(blank)
    check_defect_masks(imgs, [str(blank), *masks[1:]], types)  # one blank mask is real (4 of MTD's 392): kept
    with pytest.raises(DatasetError, match=f"every ground-truth mask of defect type 'crack' is empty .* e.g. {blank}"):
        check_defect_masks(imgs, [str(blank)] * len(imgs), types)
    wide = tmp_path / "wide.png"
    Image.fromarray(np.full((64, 128), 255, np.uint8)).save(wide)
    with pytest.raises(DatasetError, match=f"the mask {wide} is 128×64 px but its image .* is 128×128"):
        load_mask(str(wide), imgs[0], Frame("crop"))
    # for real: the oracle's jobs fail with the file's name, the other methods run
    data = Path(shutil.copytree(base, tmp_path / "data"))
    Image.fromarray(np.full((64, 128), 255, np.uint8)).save(data / "tile" / "ground_truth" / "stain" / "003_mask.png")
    code, _, err = cli(capsys, "run", "--task", "discovery", "--dataset", "folder", "--data-root", str(data),
                       "--categories", "tile", "--method", "oracle-mask-kmeans", "one-cluster", *RUN,
                       "--out", str(tmp_path / "out"), "--cache-dir", str(cache))  # fmt: skip
    assert code == 1 and "003_mask.png is 128×64 px but its image" in err
    status = {r["method"]: r["status"] for r in read_rows([tmp_path / "out"]).rows}
    assert status == {"oracle-mask-kmeans": "error", "one-cluster": "ok"}


# --------------------------------------------------------------------------------------------- item 6: where maps go
def test_every_image_gets_its_own_upright_map(capsys, quirky, cache, tmp_path) -> None:  # noqa: ANN001
    """``000.png`` and ``000.jpg`` shared one map file ("26 maps", 25 written) and a photo stored sideways got its
    map at the stored orientation: now one file per image, the turned photo's map upright, read back by the same
    rule, and the message counts what is on disk."""
    from bench.datasets import load_dataset
    from bench.discovery.maps import png_map_paths
    from bench.discovery.protocol import discovery_set

    out = tmp_path / "maps"
    code, printed, err = cli(capsys, *maps_cmd(quirky, cache, out))
    assert code == 0, err
    pngs = sorted(p.relative_to(out / "tile").as_posix() for p in (out / "tile").rglob("*.png"))
    assert "26 maps" in printed and len(pngs) == 26
    assert {"crack/000.png.png", "crack/000.jpg.png", "good/000.png", "stain/000.png"} <= set(pngs)
    assert Image.open(out / "tile" / "crack" / "007.png").size == (96, 160)  # upright, as the features see it
    assert json.loads((out / "tile" / "normalisation.json").read_text())["n_maps"] == 26
    ls = discovery_set(load_dataset("folder", str(quirky)), "tile", "ncd")
    read = png_map_paths(out, "tile", [ls.class_names[y] for y in ls.labels], ls.paths)
    assert len(set(read)) == len(read) and all(p.is_file() for p in read)
    assert {Path(i).name: m.name for i, m in zip(ls.paths, read) if "/crack/000." in i} == {
        "000.jpg": "000.jpg.png", "000.png": "000.png.png"}  # fmt: skip
    # rewriting into the harness's own folder is allowed, and replaces the set whole
    code, _, err = cli(capsys, *maps_cmd(quirky, cache, out, "--bits", "16"))
    assert code == 0, err
    assert np.asarray(Image.open(out / "tile" / "crack" / "007.png")).dtype == np.uint16


def test_map_of_a_turned_photo_lands_where_its_defect_is(base, tmp_path) -> None:  # noqa: ANN001
    """The map of an EXIF-rotated photo, written by ``bench maps`` and read back by ``--maps``, is the map the
    features gave (centre-crop fit: the old map, at the stored orientation, put the hot spot elsewhere)."""
    from bench.detection.maps import write_maps
    from bench.discovery.maps import Frame, png_maps
    from bench.images import Preprocess, load_rgb

    photo = tmp_path / "photo.jpg"
    turned_photo(photo, np.full((300, 120, 3), 90, np.uint8))
    assert load_rgb(photo).size == (120, 300)
    m = np.zeros((2, 28, 28), np.float32)
    m[0, 2:6, 10:18] = 1.0  # a defect near the top of the upright picture
    m[1, 20:24, 2:6] = 0.5
    other = base / "tile" / "test" / "crack" / "000.png"
    written = write_maps(tmp_path / "m", "c", [str(photo), str(other)], ["crack", "crack"], m, Preprocess(256, 224, "crop"))
    png = np.asarray(Image.open(written[0]))
    assert png.shape == (300, 120)  # upright, as the features and any viewer see the photo
    hot = np.argwhere(png > 128)  # the defect: upright rows ~105-120 (centre crop 97.5-202.5), columns ~47-73
    assert hot.size and 100 <= hot[:, 0].mean() <= 125 and 40 <= hot[:, 1].mean() <= 80, hot.mean(0)
    back = png_maps(written, [str(photo), str(other)], Frame("crop"), tmp_path / "m").maps[0].astype(float)
    hot = np.argwhere(back > 128)  # and back in the frame where the features had it
    assert hot.size and 10 <= hot[:, 0].mean() <= 40 and 70 <= hot[:, 1].mean() <= 150, hot.mean(0)
    # a map left at the stored orientation is refused, with the reason
    Image.fromarray(np.ascontiguousarray(np.rot90(png, k=1))).save(written[0])
    with pytest.raises(DatasetError, match="is 300×120 px but its image .* is 120×300 .* turned by 90°"):
        png_maps(written, [str(photo), str(other)], Frame("crop"), tmp_path / "m")


# --------------------------------------------------------------------------------------------- tracebacks, folders
def test_maps_out_that_cannot_be_used(capsys, base, cache, tmp_path) -> None:  # noqa: ANN001
    """``--out`` an existing file, a read-only place, or a folder of the user's PNGs: one error line each, nothing
    written or changed (the user's PNGs were overwritten)."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n")
    code, _, err = cli(capsys, *maps_cmd(base, cache, a_file))
    assert code == 2 and f"--out {a_file} is a file" in one_error(err) and a_file.read_text() == "mine\n"
    code, _, err = cli(capsys, *maps_cmd(base, cache, Path("/proc/fsad-bench-maps")))
    assert code == 2 and "cannot write to the output folder /proc/fsad-bench-maps" in one_error(err)
    mine = tmp_path / "my-maps"
    (mine / "tile" / "crack").mkdir(parents=True)
    Image.fromarray(np.full((128, 128), 7, np.uint8)).save(mine / "tile" / "crack" / "000.png")
    (mine / "README").write_text("maps from my own detector\n")
    before = file_tree(mine)
    code, _, err = cli(capsys, *maps_cmd(base, cache, mine))
    assert code == 2 and "already holds files the harness did not write" in one_error(err) and "new or empty folder" in err
    assert file_tree(mine) == before


def test_maps_on_a_full_disk_keep_the_earlier_set(capsys, monkeypatch, base, cache, tmp_path) -> None:  # noqa: ANN001
    """ENOSPC in the middle of a rewrite left a truncated PNG and a stale ``normalisation.json`` (and a traceback):
    now one error line, and the earlier maps are byte-identical."""
    out = tmp_path / "maps"
    code, _, err = cli(capsys, *maps_cmd(base, cache, out))
    assert code == 0, err
    before = file_tree(out)
    real_save, calls = Image.Image.save, []

    def save(self: Image.Image, fp: Any, *a: Any, **k: Any) -> None:
        calls.append(fp)
        if len(calls) == 5:
            Path(fp).write_bytes(b"\x89PNG\r\n")  # what a full disk leaves: the start of a file
            raise OSError(errno.ENOSPC, "No space left on device", str(fp))
        real_save(self, fp, *a, **k)

    monkeypatch.setattr(Image.Image, "save", save)
    code, _, err = cli(capsys, *maps_cmd(base, cache, out, "--bits", "16"))
    monkeypatch.undo()
    assert code == 2 and "No space left on device" in one_error(err) and "free space" in err
    assert file_tree(out) == before


def test_show_crops_out(capsys, base, tmp_path) -> None:  # noqa: ANN001
    """``--out x.txt`` (after computing everything) and ``x.jpg`` raised; a read-only place too; an ``--out`` inside
    the dataset added a picture to a defect class. Now: .png/.jpg written, a folder takes the default name, the
    rest refused before any work, the dataset byte-identical."""
    maps = gt_maps(base, tmp_path / "gt", 8)
    argv = ["show-crops", "--category", "tile", "--dataset", "folder", "--data-root", str(base), *COMMON, "--maps",
            str(maps), "--images", "2", "--out"]  # fmt: skip
    code, _, err = cli(capsys, *argv, str(tmp_path / "x.jpg"))
    assert code == 0 and Image.open(tmp_path / "x.jpg").format == "JPEG", err
    (tmp_path / "pics").mkdir()
    code, _, err = cli(capsys, *argv, str(tmp_path / "pics"))
    assert code == 0 and Image.open(tmp_path / "pics" / "crops_tile.png").format == "PNG", err
    code, _, err = cli(capsys, *argv, str(tmp_path / "x.txt"))
    assert code == 2 and "written as PNG or JPEG" in one_error(err) and not (tmp_path / "x.txt").exists()
    code, _, err = cli(capsys, *argv, "/proc/fsad-bench-crops.png")
    assert code == 2 and "cannot write the picture /proc/fsad-bench-crops.png" in one_error(err)
    before = file_tree(base)
    code, _, err = cli(capsys, *argv, str(base / "tile" / "test" / "crack" / "crops.png"))
    assert code == 2 and "is inside the dataset folder" in one_error(err)
    assert file_tree(base) == before


def test_residual_methods_without_normals_are_not_told_to_pass_maps(capsys, base, cache, tmp_path) -> None:  # noqa: ANN001
    """``kmeans-residual`` on a category without normals advised ``--maps PATH`` and failed the same way with it."""
    data = Path(shutil.copytree(base, tmp_path / "data"))
    for p in (data / "tile" / "train" / "good").iterdir():
        p.unlink()
    maps = gt_maps(base, tmp_path / "gt", 8)
    code, _, err = cli(capsys, "run", "--task", "discovery", "--dataset", "folder", "--data-root", str(data),
                       "--categories", "tile", "--method", "kmeans-residual", "mebin-kmeans", *RUN, "--maps", str(maps),
                       "--out", str(tmp_path / "out"), "--cache-dir", str(cache))  # fmt: skip
    rows = {r["method"]: r for r in read_rows([tmp_path / "out"]).rows}
    assert code == 1 and rows["mebin-kmeans"]["status"] == "ok", err
    error = rows["kmeans-residual"]["error"]
    assert "--maps cannot stand in for them" in error and "pass --maps PATH" not in error
