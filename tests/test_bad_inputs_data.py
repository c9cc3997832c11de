"""Bad datasets, tried for real (issue #20, items 5, 8, 9 and the 1×1 image): folders that differ only in case,
backups and copies beside the data, defect sets without ``train/``, a ``combined`` type too small for the shots
(said before the first job, counted once, stored once on resume), and images too small to describe.

As in ``test_bad_inputs.py``: the CLI called in this process, the exit status, a message that names the problem
and the fix, no traceback, and the user's files byte-identical afterwards. The data are synthetic-tiny in the
MVTec layout (``--dataset folder``) and a tiny tree in the MTD layout (``write_mtd``).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from bench.cli import main
from bench.datasets import load_dataset
from bench.datasets.mtd import CATEGORY, write_mtd
from bench.results import ResultsStore, read_rows
from tests.helpers import file_tree

COMMON = ["--backbone", "resnet18", "--weights", "random", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def mtd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mtd(tmp_path_factory.mktemp("mtd") / "Magnetic-Tile-Defect", n_free=5, n_per_type=3)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module: features are keyed by image content, so the runs share what they extract."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def data(tiny_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_root, tmp_path / "data", ignore=shutil.ignore_patterns("ground_truth", ".*")))


@pytest.fixture
def mtd(mtd_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(mtd_root, tmp_path / "Magnetic-Tile-Defect"))


def run(capsys: pytest.CaptureFixture[str], root: Path, out: Path, cache: Path, *extra: str, dataset: str = "folder",
        ) -> tuple[int, str, str]:  # fmt: skip
    code = main(["run", "--dataset", dataset, "--data-root", str(root), *COMMON, "--out", str(out),
                 "--cache-dir", str(cache), *extra])  # fmt: skip
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err, cap.err
    return code, cap.out, cap.err


def refused(capsys: pytest.CaptureFixture[str], root: Path, tmp_path: Path, cache: Path, *messages: str,
            dataset: str = "folder") -> None:  # fmt: skip
    """The run stops before any job with one ``error:`` line holding ``messages``; nothing written, nothing changed."""
    before = file_tree(root)
    code, _, err = run(capsys, root, tmp_path / "out", cache, "--method", "protonet", "--shots", "1", "--seeds", "1",
                       dataset=dataset)  # fmt: skip
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for m in messages:
        assert m in err, (m, err)
    assert not (tmp_path / "out" / "results.jsonl").exists()
    assert file_tree(root) == before


# --------------------------------------------------------------------------------------------- item 5: MTD folders
def test_mtd_folders_differing_only_in_case_are_refused(capsys, mtd, tmp_path, cache) -> None:  # noqa: ANN001
    shutil.copytree(mtd / "MT_Crack", mtd / "MT_crack")  # merged into one class 'crack': support copy among queries
    refused(capsys, mtd, tmp_path, cache, "differ only in letter case", f"{mtd / 'MT_Crack'}/", f"{mtd / 'MT_crack'}/",
            "Keep one of them", dataset="mtd")  # fmt: skip


def test_mtd_backup_and_nameless_folders_are_left_out_with_a_warning(mtd, caplog) -> None:  # noqa: ANN001
    shutil.copytree(mtd / "MT_Crack", mtd / "MT_Crack_old")  # was a sixth class of duplicates
    shutil.copytree(mtd / "MT_Fray", mtd / "MT_")  # was a class with an empty name
    (mtd / "MT_Uneven").rename(mtd / "mt_uneven")  # lower-cased by a copy: still MTD's uneven
    with caplog.at_level(logging.WARNING, logger="bench.datasets.mtd"):
        s = load_dataset("mtd", mtd)
    assert s.defect_types(CATEGORY) == ["blowhole", "break", "crack", "fray", "uneven"]
    assert len(s.table[s.table.label == "crack"]) == 3
    warned = caplog.text
    assert "left out MT_/, MT_Crack_old/" in warned and "not one of MTD's published folders" in warned


def test_copy_of_an_image_in_another_mtd_type_is_refused(capsys, mtd, tmp_path, cache) -> None:  # noqa: ANN001
    img = sorted((mtd / "MT_Crack" / "Imgs").glob("*.jpg"))[0]
    for suffix in (".jpg", ".png"):  # the image and its mask, under a new name in another type
        shutil.copy(img.with_suffix(suffix), (mtd / "MT_Fray" / "Imgs" / "copy").with_suffix(suffix))
    refused(capsys, mtd, tmp_path, cache, "have the same bytes", str(img), str(mtd / "MT_Fray" / "Imgs" / "copy.jpg"),
            "test/crack and test/fray", "Remove the copies", dataset="mtd")  # fmt: skip


def test_defect_folders_differing_only_in_case_are_refused(capsys, data, tmp_path, cache) -> None:  # noqa: ANN001
    crack = data / "tile" / "test" / "crack"
    shutil.copytree(crack, crack.with_name("Crack"))
    refused(capsys, data, tmp_path, cache, "defect-type folders that differ only in letter case",
            f"{crack.with_name('Crack')}/, {crack}/", "Keep one of them")  # fmt: skip
    shutil.rmtree(crack.with_name("Crack"))
    (data / "screw" / "test" / "good").rename(data / "screw" / "test" / "Good")  # would be a defect type 'Good'
    refused(capsys, data, tmp_path, cache, f"{data / 'screw' / 'test' / 'Good'}/ is spelt differently from good/",
            f"Rename it to {data / 'screw' / 'test' / 'good'}/")  # fmt: skip


def test_copy_of_a_query_in_train_good_is_refused(capsys, data, tmp_path, cache) -> None:  # noqa: ANN001
    query = sorted((data / "screw" / "test" / "good").glob("*.png"))[0]
    shutil.copy(query, data / "screw" / "train" / "good" / "extra.png")  # the bank would hold a query
    refused(capsys, data, tmp_path, cache, "have the same bytes", "category 'screw': test/good and train/good")


@pytest.mark.parametrize("size", [(1, 1), (200, 20)])
def test_image_too_small_to_describe_is_refused(capsys, data, tmp_path, cache, size) -> None:  # noqa: ANN001
    path = sorted((data / "tile" / "test" / "crack").glob("*.png"))[-1]
    Image.new("RGB", size, (90, 90, 90)).save(path)
    refused(capsys, data, tmp_path, cache, f"image {path} is {size[0]}×{size[1]} px, smaller than 32 px on a side",
            "Replace it with the original image or remove it")  # fmt: skip


# --------------------------------------------------------------------------------------------- item 8: no train/
def test_defect_classes_without_train_folder_run_the_methods_that_need_no_normals(capsys, data, tmp_path, cache) -> None:  # noqa: ANN001
    for cat in ("tile", "screw"):
        shutil.rmtree(data / cat / "train")
    code, _, err = run(capsys, data, tmp_path / "out", cache, "--method", "protonet", "protonet-residual",
                       "--shots", "1", "--seeds", "1", "--categories", "tile")  # fmt: skip
    assert code == 1, err  # the bank method failed, the other ran
    rows = read_rows([tmp_path / "out" / "results.jsonl"]).rows
    assert {(r["method"], r["status"]) for r in rows} == {("protonet", "ok"), ("protonet-residual", "error")}
    assert "needs normal (defect-free) training images" in err and "train/good is empty or missing" in err
    assert "choose a method that needs none (e.g. protonet" in err


# --------------------------------------------------------------------------------------------- item 9: combined
def test_combined_too_small_for_the_shots_said_first_counted_once_stored_once(capsys, data, tmp_path, cache) -> None:  # noqa: ANN001
    combined = data / "tile" / "test" / "combined"
    combined.mkdir()
    for p in sorted((data / "tile" / "test" / "crack").glob("*.png"))[:2]:
        ImageOps.mirror(Image.open(p)).save(combined / p.name)  # 2 images: 1-shot runs, 2-shot cannot
    reason = f"defect type 'combined' of category 'tile' has 2 image(s) in {combined}, but 2-shot needs at least 3"
    fix = "Pass --exclude-combined (drops the combined type), use --shots 1, or add images."
    # no category can run 2-shot: refused before the first job, with the fix (exit 2, nothing written)
    code, out, err = run(capsys, data, tmp_path / "out", cache, "--method", "protonet", "--shots", "1,2", "--seeds", "1",
                         "--categories", "tile")  # fmt: skip
    assert code == 2 and reason in err and fix in err and not (tmp_path / "out" / "results.jsonl").exists(), err
    # screw can: tile's 2-shot jobs are said to fail before the first job, and fail once each
    args = ["--method", "protonet", "knn", "--shots", "1,2", "--seeds", "1"]
    code, out, err = run(capsys, data, tmp_path / "out", cache, *args)
    assert code == 1, err
    warning = out.index("WARNING: 2 of 8 job(s) cannot run and will be recorded as failed (1 distinct reason(s))")
    assert warning < out.index("### ") and reason in out[warning:] and fix in out[warning:]  # before any job's result
    assert "failed jobs: 2, 1 distinct error(s)" in err and err.count(reason) == 1 and fix in err
    assert "protonet, knn: 2 job(s) (categories tile; shots 2; seeds 1)" in err
    first = (tmp_path / "out" / "results.jsonl").read_bytes()
    assert first.count(b"\n") == 8
    # resume: the failed jobs are tried again, fail again, and the file does not grow
    code, out, err = run(capsys, data, tmp_path / "out", cache, *args)
    assert code == 1 and "resuming: 6 of 8 jobs already finished" in out and "failed jobs: 2, 1 distinct error(s)" in err
    assert (tmp_path / "out" / "results.jsonl").read_bytes() == first
    # the fix the message gives works
    code, out, err = run(capsys, data, tmp_path / "out", cache, *args, "--exclude-combined")
    assert code == 0, err


def test_failure_row_stored_once_per_key_and_error(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results.jsonl")
    base = {"method": "m", "category": "c", "shots": 1, "seed": 1}
    fail = {"key": "k1", "status": "error", "error": "too few images", **base}
    assert store.append_new(fail) and not store.append_new(fail)
    assert not ResultsStore(store.path).append_new(fail)  # another process (a resume) reads the file
    assert store.append_new({**fail, "error": "another reason"})  # new information: kept, the newest is shown
    assert store.append_new({"key": "k1", "status": "ok", "error": None, "accuracy": 0.5, **base})
    assert not store.append_new(fail)  # finished: nothing more for this key
    assert store.append_new({**fail, "key": "k2"})
    assert [(r["key"], r["status"]) for r in read_rows([store.path]).rows] == [
        ("k1", "error"), ("k1", "error"), ("k1", "ok"), ("k2", "error")]  # fmt: skip


def test_mirrored_copy_is_not_a_copy(data: Path) -> None:
    """The byte check refuses copies, not look-alikes: a mirrored image is a new image (no false alarm)."""
    from bench.datasets import check_image_files

    src = sorted((data / "tile" / "test" / "crack").glob("*.png"))[0]
    ImageOps.mirror(Image.open(src)).save(data / "tile" / "test" / "stain" / "mirrored.png")
    Image.fromarray(np.full((32, 40, 3), 7, np.uint8)).save(data / "tile" / "test" / "stain" / "small-but-enough.png")
    check_image_files(load_dataset("folder", data))  # no error
