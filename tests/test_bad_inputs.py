"""Bad input, tried for real: the CLI run as a user would against broken inputs.

Each case checks the exit status (2: a user problem that stops the run; 1: some jobs failed, the others
ran), a message that names the path or the problem and the fix, no traceback, and that the rows already in
the results folder are untouched (byte for byte). Most cases call :func:`bench.cli.main` in this process
(the same code path as ``python -m bench``, without paying the start-up of torch for each case); a few run
``python -m bench`` in a subprocess to check what a user really sees.

The data is a copy of synthetic-tiny in the MVTec layout (``--dataset folder``) broken on purpose.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import bench.results
from bench.cli import main
from bench.results import read_rows
from tests.helpers import file_tree

REPO = Path(__file__).resolve().parents[1]
COMMON = ["--backbone", "resnet18", "--weights", "random", "--no-progress"]
QUICK = ["--method", "protonet", "--shots", "3", "--seeds", "1"]  # the earlier run (`prior`) has shots 1 and 2


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def prior(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path]:
    """Rows of an earlier, finished run (copied into each test's --out) and its warm cache."""
    base = tmp_path_factory.mktemp("prior")
    code = main(["run", "--dataset", "folder", "--data-root", str(tiny_root), *COMMON, "--method", "protonet",
                 "--shots", "1,2", "--seeds", "1", "--out", str(base / "out"), "--cache-dir", str(base / "cache")])  # fmt: skip
    assert code == 0
    data = (base / "out" / "results.jsonl").read_bytes()
    assert data.count(b"\n") == 4  # 2 categories x 2 shots
    return data, base / "cache"


@pytest.fixture
def data(tiny_root: Path, tmp_path: Path) -> Path:
    """A private copy of the dataset to break."""
    return Path(shutil.copytree(tiny_root, tmp_path / "data", ignore=shutil.ignore_patterns("ground_truth", ".*")))


@pytest.fixture
def out(prior: tuple[bytes, Path], tmp_path: Path) -> Path:
    """A results folder that already holds finished rows."""
    d = tmp_path / "out"
    d.mkdir()
    (d / "results.jsonl").write_bytes(prior[0])
    return d


@pytest.fixture
def cache(prior: tuple[bytes, Path], tmp_path: Path) -> Path:
    """A private copy of the warm cache (features are keyed by image content, so unchanged images hit)."""
    return Path(shutil.copytree(prior[1], tmp_path / "cache"))


def run(capsys: pytest.CaptureFixture[str], data: Path | str, out: Path, cache: Path, *extra: str, dataset: str = "folder") -> tuple[int, str, str]:
    code = main(["run", "--dataset", dataset, "--data-root", str(data), *COMMON,
                 "--out", str(out), "--cache-dir", str(cache), *extra])  # fmt: skip
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err, cap.err
    return code, cap.out, cap.err


def assert_prior_intact(out: Path, prior: tuple[bytes, Path]) -> None:
    assert (out / "results.jsonl").read_bytes().startswith(prior[0]), "rows of the earlier run were changed or lost"


def png(path: Path) -> Path:
    return sorted(path.glob("*.png"))[0]


# --------------------------------------------------------------------------------------------- dataset
def test_missing_dataset_root(capsys, out, cache, prior, tmp_path) -> None:  # noqa: ANN001
    missing = tmp_path / "no" / "such" / "dataset"
    code, _, err = run(capsys, missing, out, cache, *QUICK)
    assert code == 2
    assert f"dataset root does not exist: {missing}" in err and "--data-root" in err
    assert_prior_intact(out, prior)


def test_wrong_layout_no_test_folder(capsys, data, out, cache, prior) -> None:  # noqa: ANN001
    for cat in ("tile", "screw"):
        shutil.rmtree(data / cat / "test")
    code, _, err = run(capsys, data, out, cache, *QUICK)
    assert code == 2
    assert "no category folders with a test/ sub-folder" in err and str(data) in err
    assert "<category>/{train/good,test/<defect_type>}" in err
    # a named category without test/
    code, _, err = run(capsys, data, out, cache, *QUICK, "--categories", "tile")
    assert code == 2 and f"{data / 'tile' / 'test'} is missing" in err
    assert_prior_intact(out, prior)


def test_category_with_one_defect_type(capsys, data, out, cache, prior) -> None:  # noqa: ANN001
    for t in ("crack", "stain"):
        shutil.rmtree(data / "tile" / "test" / t)
    # asked for explicitly: nothing left to run
    code, _, err = run(capsys, data, out, cache, *QUICK, "--categories", "tile")
    assert code == 2
    assert "tile: 1 defect type(s) (contamination) < min_defect_types=2" in err and "--min-defect-types" in err
    # among others: skipped with a note (MVTec AD's toothbrush), the rest runs
    code, stdout, _ = run(capsys, data, out, cache, *QUICK)
    assert code == 0 and "category tile skipped: 1 defect type(s)" in stdout
    rows = read_rows([out / "results.jsonl"]).rows
    assert {r["category"] for r in rows[4:]} == {"screw"}
    assert_prior_intact(out, prior)


def test_defect_type_with_too_few_images(capsys, data, out, cache, prior) -> None:  # noqa: ANN001
    folder = data / "tile" / "test" / "crack"
    for p in sorted(folder.glob("*.png"))[2:]:
        p.unlink()
    code, _, err = run(capsys, data, out, cache, "--method", "protonet", "--shots", "1,2", "--seeds", "1")
    assert code == 1  # tile's 1-shot job ran, its 2-shot job could not (screw's are finished already)
    assert f"defect type 'crack' of category 'tile' has 2 image(s) in {folder}" in err
    assert "2-shot needs at least 3" in err and "Use fewer --shots or add images" in err
    rows = read_rows([out / "results.jsonl"]).rows[4:]
    assert {(r["shots"], r["status"]) for r in rows} == {(1, "ok"), (2, "error")}
    assert_prior_intact(out, prior)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("zero-byte", "image file is empty (0 bytes): {path}"),
        ("truncated", "corrupt or truncated image: {path}"),
        ("not-an-image", "not a readable image: {path}"),
    ],
)
def test_broken_image_files(capsys, data, out, cache, prior, damage: str, message: str) -> None:  # noqa: ANN001
    path = sorted((data / "tile" / "test" / "crack").glob("*.png"))[3]  # a query image of every episode
    raw = path.read_bytes()
    if damage == "zero-byte":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    else:
        path.write_text("this is a text file with a .png name\n")
    code, _, err = run(capsys, data, out, cache, *QUICK)
    assert code == 1, err  # tile's job failed; screw's ran
    assert message.format(path=path) in err
    assert "Re-copy it" in err or "replace it" in err
    rows = read_rows([out / "results.jsonl"]).rows[4:]
    assert {(r["category"], r["status"]) for r in rows} == {("tile", "error"), ("screw", "ok")}
    assert_prior_intact(out, prior)


def test_grayscale_and_rgba_images_work(capsys, data, out, cache, prior) -> None:  # noqa: ANN001
    converted = []
    for folder, mode in [("train/good", "L"), ("test/crack", "L"), ("test/stain", "RGBA"), ("test/contamination", "LA")]:
        for p in sorted((data / "tile" / folder).glob("*.png"))[:3]:
            Image.open(p).convert(mode).save(p)
            converted.append(p)
    assert {Image.open(p).mode for p in converted} == {"L", "RGBA", "LA"}
    code, _, err = run(capsys, data, out, cache, "--method", "protonet", "protonet-residual", "--shots", "3", "--seeds", "1", "--categories", "tile")
    assert code == 0, err
    rows = read_rows([out / "results.jsonl"]).rows[4:]
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    assert_prior_intact(out, prior)


def test_categories_without_normal_images(capsys, data, out, cache, prior) -> None:  # noqa: ANN001
    """Defect classes only (an empty train/good): bank-free methods run, memory-bank methods fail per job, said once."""
    for cat in ("tile", "screw"):
        for p in (data / cat / "train" / "good").glob("*.png"):
            p.unlink()
    code, _, err = run(capsys, data, out, cache, "--method", "protonet", "protonet-residual", "--shots", "1,2", "--seeds", "1")
    assert code == 1, err  # some jobs failed, the others ran
    rows = read_rows([out / "results.jsonl"]).rows[4:]
    assert {(r["method"], r["status"]) for r in rows} == {("protonet", "ok"), ("protonet-residual", "error")} and len(rows) == 8
    reason = "method 'protonet-residual' needs normal (defect-free) training images for the PatchCore memory bank"
    assert all(reason in r["error"] and "train/good is empty" in r["error"] for r in rows if r["status"] == "error")
    assert "failed jobs: 4, 1 distinct error(s)" in err
    assert err.count(reason) == 1 and "protonet-residual: 4 job(s) (categories screw, tile; shots 1,2; seeds 1)" in err
    assert "choose a method that needs none (e.g. protonet" in err
    assert_prior_intact(out, prior)


# --------------------------------------------------------------------------------------------- names, weights
@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "protonett"], "unknown method 'protonett'. Did you mean 'protonet'"),
        (["--method", "protonet", "--dataset", "synthetic-tiyn"], "unknown dataset 'synthetic-tiyn'. Did you mean 'synthetic-tiny'"),
        (["--method", "protonet", "--backbone", "resnet1"], "unknown backbone 'resnet1'. Did you mean resnet18"),
        (["--method", "protonet", "--device", "cuda"], "no CUDA device is available; use --device cpu or auto"),
    ],
)
def test_unknown_names(capsys, out, cache, prior, tiny_root, args: list[str], message: str) -> None:  # noqa: ANN001
    if "--device" in args:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA device is available here")
    code = main(["run", "--dataset", "synthetic-tiny", "--data-root", str(tiny_root), *COMMON, "--shots", "1", "--seeds", "1",
                 "--out", str(out), "--cache-dir", str(cache), *args])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert_prior_intact(out, prior)


def test_unknown_method_as_a_user_sees_it(tmp_path: Path) -> None:
    """The real command line: one line on stderr, exit 2, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--method", "contrastiv", "--dataset", "synthetic-tiny", "--weights", "random",
         "--out", str(tmp_path / "o")], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "BENCH_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: unknown method 'contrastiv'. Did you mean 'contrastive'")
    assert "Traceback" not in proc.stderr


def test_unreadable_weights_file(capsys, out, cache, prior, tiny_root, tmp_path) -> None:  # noqa: ANN001
    bad = tmp_path / "resnet18.pth"
    bad.write_bytes(os.urandom(4096))
    code = main(["run", "--dataset", "synthetic-tiny", "--data-root", str(tiny_root), "--backbone", "resnet18", "--weights", str(bad),
                 "--no-progress", *QUICK, "--out", str(out), "--cache-dir", str(cache)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert f"cannot read weights file {bad}" in err and "re-download it" in err
    missing = tmp_path / "nowhere.pth"
    code = main(["run", "--dataset", "synthetic-tiny", "--data-root", str(tiny_root), "--backbone", "resnet18", "--weights", str(missing),
                 "--no-progress", *QUICK, "--out", str(out), "--cache-dir", str(cache)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and f"weights file not found: {missing}" in err
    assert_prior_intact(out, prior)


def test_mismatched_weights_file(capsys, out, cache, prior, tiny_root, tmp_path) -> None:  # noqa: ANN001
    import timm
    import torch

    state = timm.create_model("resnet18", pretrained=False).state_dict()
    path = tmp_path / "resnet18-for-resnet34.pth"
    torch.save(state, path)
    code = main(["run", "--dataset", "synthetic-tiny", "--data-root", str(tiny_root), "--backbone", "resnet34", "--weights", str(path),
                 "--no-progress", *QUICK, "--out", str(out), "--cache-dir", str(cache)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert f"weights file {path} does not match backbone 'resnet34'" in err and "choose the matching --backbone" in err
    assert_prior_intact(out, prior)


# --------------------------------------------------------------------------------------------- results, disk
def test_results_file_with_corrupt_lines(capsys, caplog, out, cache, prior, tiny_root) -> None:  # noqa: ANN001
    """A garbage line in the middle and a line cut by a kill: warned about (file and line), left in place,
    their jobs run again; every other row stays as it was."""
    lines = prior[0].splitlines(keepends=True)
    broken_key = __import__("json").loads(lines[1])["key"]
    corrupt = lines[0] + b"\x00\x00garbage {not json\n" + b"".join(lines[2:]) + lines[1][:40]
    (out / "results.jsonl").write_bytes(corrupt)
    args = ["run", "--dataset", "folder", "--data-root", str(tiny_root), *COMMON, "--method", "protonet", "--shots", "1,2",
            "--seeds", "1", "--out", str(out), "--cache-dir", str(cache)]  # fmt: skip
    with caplog.at_level("WARNING"):
        code = main(args)
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "skipped 2 unreadable or incomplete line(s)" in caplog.text and f"{out / 'results.jsonl'}:2" in caplog.text
    assert "resuming: 3 of 4 jobs already finished" in cap.out
    data = (out / "results.jsonl").read_bytes()
    assert data.startswith(corrupt)  # nothing rewritten or dropped
    res = read_rows([out / "results.jsonl"])
    assert res.skipped_lines == 2
    ok = [r["key"] for r in res.rows if r["status"] == "ok"]
    assert len(ok) == len(set(ok)) == 4 and broken_key in ok


class _OsWithFullDisk:
    """``os`` as bench.results sees it, with a disk that is full."""

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    @staticmethod
    def write(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_while_writing_the_cache(capsys, monkeypatch, data, out, prior, tmp_path) -> None:  # noqa: ANN001
    """ENOSPC from the cache write (simulated in np.save): one clear message, exit 2, rows and cache intact;
    once there is space again the same command resumes."""
    cache = tmp_path / "fresh-cache"  # cold: features have to be written

    def full(*a: Any, **k: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full)
    code, _, err = run(capsys, data, out, cache, *QUICK)
    assert code == 2
    assert "No space left on device" in err and "--cache-dir" in err and "run the same command again to resume" in err
    assert_prior_intact(out, prior)
    assert not [p for p in (cache / "features").rglob("*") if p.is_file()], "a partial cache entry was left"
    assert (out / "results.jsonl").read_bytes() == prior[0], "an error row was written for a full disk"
    monkeypatch.undo()
    code, stdout, err = run(capsys, data, out, cache, *QUICK)
    assert code == 0, err
    assert len(read_rows([out / "results.jsonl"]).rows) == 6


def test_full_disk_while_writing_results(capsys, monkeypatch, data, out, cache, prior) -> None:  # noqa: ANN001
    monkeypatch.setattr(bench.results, "os", _OsWithFullDisk())
    code, _, err = run(capsys, data, out, cache, *QUICK)
    assert code == 2
    assert f"failed writing results to {out / 'results.jsonl'}" in err and "earlier rows are intact" in err
    assert "Free some space" in err
    monkeypatch.undo()
    assert_prior_intact(out, prior)
    assert read_rows([out / "results.jsonl"]).skipped_lines == 0


@pytest.mark.parametrize("how", ["chmod-555", "file-in-the-way", "proc"])
def test_read_only_output_folder(capsys, data, cache, prior, tmp_path, how: str) -> None:  # noqa: ANN001
    if how == "chmod-555":
        out = tmp_path / "ro"
        out.mkdir()
        (out / "results.jsonl").write_bytes(prior[0])
        out.chmod(0o555)
        probe = out / "probe"
        try:
            probe.write_text("")
        except PermissionError:
            pass
        else:  # root ignores permission bits: the other two cases cover a folder that cannot be written
            probe.unlink()
            out.chmod(0o755)
            pytest.skip("running as root: chmod 555 does not stop root (covered by file-in-the-way and proc)")
    elif how == "file-in-the-way":
        (tmp_path / "not-a-folder").write_text("a file where the output folder's parent should be\n")
        out = tmp_path / "not-a-folder" / "results"
    else:
        out = Path("/proc/fsad-bench-results")  # procfs: nothing can be created there, not even by root
    try:
        code, _, err = run(capsys, data, out, cache, *QUICK)
    finally:
        if how == "chmod-555":
            out.chmod(0o755)
    assert code == 2
    assert f"cannot write to the output folder {out}" in err and "Choose another with --out" in err
    if how == "chmod-555":
        assert (out / "results.jsonl").read_bytes() == prior[0]


# --------------------------------------------------------------------------------------------- data loss, stale results


def _mvtec_like(root: Path, categories: tuple[str, ...] = ("wood", "bottle")) -> Path:
    """A small real-looking MVTec AD tree: 000.png, 000_mask.png, ground_truth/, a licence file at the top."""
    rng = np.random.default_rng(0)
    for cat in categories:
        for folder, n in [("train/good", 3), ("test/good", 2), ("test/scratch", 2), ("test/color", 2)]:
            (root / cat / folder).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / cat / folder / f"{i:03d}.png")
                if folder.startswith("test/") and folder != "test/good":
                    gt = root / cat / "ground_truth" / folder.split("/")[1]
                    gt.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(np.zeros((32, 32), np.uint8)).save(gt / f"{i:03d}_mask.png")
    (root / "license.txt").write_text("CC BY-NC-SA 4.0\n")
    return root


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_generator_never_touches_a_real_dataset(capsys, out, cache, prior, tmp_path) -> None:  # noqa: ANN001
    """The user forgot --dataset mvtec_ad: the default dataset is the synthetic one, whose categories include wood.
    The real folder must stay byte-identical, and the error must say which --dataset was probably meant."""
    real = _mvtec_like(tmp_path / "mvtec")
    before = file_tree(real)
    for args in (["--categories", "wood"], ["--dataset", "synthetic-mvtec"], ["--dataset", "synthetic-tiny"]):
        code = main(["run", "--method", "protonet", "--data-root", str(real), *COMMON, "--shots", "1", "--seeds", "1",
                     "--out", str(out), "--cache-dir", str(cache), *args])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2, err
        line = _one_error_line(err)
        assert f"--data-root {real} holds " in line and "which the synthetic generator did not write" in line
        assert "It looks like MVTec AD: to benchmark it, pass --dataset mvtec_ad" in line
        assert file_tree(real) == before, f"{args}: the real dataset was changed"
    assert_prior_intact(out, prior)


@pytest.mark.parametrize("layout, dataset", [("mvtec_3d", "mvtec_3d"), ("own", "folder")])
def test_generator_suggests_the_dataset_that_fits(capsys, out, cache, tmp_path, layout: str, dataset: str) -> None:  # noqa: ANN001
    from bench.datasets.synthetic import write_mvtec3d

    root = tmp_path / "data"
    if layout == "mvtec_3d":
        write_mvtec3d(root, categories=("toy_bagel",), n_train=1, n_per_type=1, types=("crack",), resolution=16)
    else:
        _mvtec_like(root, categories=("widget",))
    before = file_tree(root)
    code = main(["run", "--method", "protonet", "--dataset", "synthetic-tiny", "--data-root", str(root), *COMMON,
                 "--out", str(out), "--cache-dir", str(cache)])  # fmt: skip
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and f"pass --dataset {dataset} --data-root {root}" in line
    assert file_tree(root) == before


def test_data_root_that_is_a_file(capsys, out, cache, tmp_path) -> None:  # noqa: ANN001
    f = tmp_path / "notes.txt"
    f.write_text("not a folder\n")
    code = main(["run", "--method", "protonet", "--dataset", "synthetic-tiny", "--data-root", str(f), *COMMON,
                 "--out", str(out), "--cache-dir", str(cache)])  # fmt: skip
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and f"--data-root {f} is a file, not a folder" in line
    assert f.read_text() == "not a folder\n"


def test_replaced_image_reruns_its_jobs(capsys, data, out, cache, prior, tmp_path) -> None:  # noqa: ANN001
    """Resume keys cover image bytes: an image replaced under its own name (and its old modification time) makes
    the category's jobs new; their rows are the numbers of the new images, and `bench report` shows those."""
    from bench.report.load import load_results

    args = (*QUICK, "--categories", "tile")
    code, _, err = run(capsys, data, out, cache, *args)
    assert code == 0, err
    old = read_rows([out / "results.jsonl"]).rows[4:]
    assert len(old) == 1 and old[0]["status"] == "ok"
    target = sorted((data / "tile" / "test" / "crack").glob("*.png"))[3]  # a query of the episode
    st = target.stat()
    # a stain image, mirrored: new bytes (an exact copy of another class's image is refused before any job)
    stain = Image.open(sorted((data / "tile" / "test" / "stain").glob("*.png"))[5])
    stain.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    code, stdout, err = run(capsys, data, out, cache, *args)
    assert code == 0, err
    assert "resuming" not in stdout and "1 job(s) ran, 0 already finished" in stdout
    rows = read_rows([out / "results.jsonl"]).rows[4:]
    assert len(rows) == 2 and rows[1]["key"] != old[0]["key"]
    assert rows[1]["dataset_content"] != old[0]["dataset_content"]
    assert rows[1]["dataset_manifest"] == old[0]["dataset_manifest"]  # same names: the old key would have matched
    code, _, err = run(capsys, data, tmp_path / "fresh", cache, *args)  # the same images from scratch
    fresh = read_rows([tmp_path / "fresh" / "results.jsonl"]).rows[0]
    for k in ("key", "y_pred", "accuracy"):
        assert rows[1][k] == fresh[k], k
    assert rows[1]["y_pred"] != old[0]["y_pred"], "the edit should change a prediction (else the test proves little)"
    shown = load_results([out]).frame
    shown = shown[(shown.category == "tile") & (shown.shots == 3)]
    assert list(shown.accuracy) == [100 * fresh["accuracy"]]  # the report shows the new number, not the old
    assert_prior_intact(out, prior)


def test_repeated_category_is_used_once(capsys, data, out, cache, prior) -> None:  # noqa: ANN001
    import json

    code, _, err = run(capsys, data, out, cache, *QUICK, "--categories", "tile", "tile")
    assert code == 0, err
    rows = read_rows([out / "results.jsonl"]).rows[4:]
    assert len(rows) == 1 and rows[0]["n_queries"] == 3 * (7 - 3)  # 3 types x (7 images - 3 support)
    ep = json.loads((out / rows[0]["episode"]["file"]).read_text())
    support, queries = [p for group in ep["support"] for p in group], ep["queries"]
    assert len(set(support)) == len(support) == 3 * 3 and len(set(queries)) == len(queries) == 12
    assert not set(support) & set(queries)
    assert_prior_intact(out, prior)


def test_hidden_and_system_entries_are_left_out(capsys, data, out, cache, prior) -> None:  # noqa: ANN001
    """A Jupyter checkpoint folder inside test/ is not a defect type, macOS resource forks (._*.png) are not
    images, a hidden category folder is not a category; one note per category says what was left out."""
    tile = data / "tile"
    (tile / "test" / ".ipynb_checkpoints").mkdir()
    shutil.copy(png(tile / "test" / "crack"), tile / "test" / ".ipynb_checkpoints" / "000-checkpoint.png")
    for folder in ("test/crack", "test/stain", "train/good"):
        (tile / folder / "._000.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64))
    (tile / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tile / "test" / "crack" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (tile / "test" / "__MACOSX").mkdir()
    shutil.copytree(data / "screw", data / ".screw-backup")
    code, stdout, err = run(capsys, data, out, cache, *QUICK)
    assert code == 0, err
    rows = read_rows([out / "results.jsonl"]).rows[4:]
    assert {r["category"] for r in rows} == {"tile", "screw"}
    tile_row = next(r for r in rows if r["category"] == "tile")
    assert tile_row["class_names"] == ["contamination", "crack", "stain"] and tile_row["status"] == "ok"
    notes = [ln for ln in stdout.splitlines() if ln.startswith("note: category tile")]
    assert notes == ["note: category tile: left out 5 hidden or system entries (test/.ipynb_checkpoints/, "
                     "test/__MACOSX/, test/crack/._000.png and 2 more)"], stdout  # fmt: skip
    assert "note: dataset root: left out 1 hidden or system entry (.screw-backup/)" in stdout
    assert_prior_intact(out, prior)


def test_out_inside_the_dataset_folder_is_refused(capsys, data, cache, prior) -> None:  # noqa: ANN001
    before = file_tree(data)
    for out in (data / "results", data / "tile" / "test" / "results", data):
        code, _, err = run(capsys, data, out, cache, *QUICK)
        line = _one_error_line(err)
        assert code == 2 and f"--out {out} is inside the dataset folder {data}" in line and "outside" in line
        assert file_tree(data) == before, "a folder was made inside the dataset"


def test_decompression_bomb_image_is_named(capsys, monkeypatch, data, out, cache, prior) -> None:  # noqa: ANN001
    """PIL's decompression-bomb guard (here with a lowered limit and one 1024 x 1024 image) names no file."""
    path = sorted((data / "tile" / "test" / "crack").glob("*.png"))[3]
    Image.open(path).resize((1024, 1024)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200_000)  # errors above 400,000 pixels; the others have 16,384
    code, _, err = run(capsys, data, out, cache, *QUICK)
    assert code == 1, err
    assert f"image {path} is too large to decode safely" in err and "downscale it" in err
    rows = read_rows([out / "results.jsonl"]).rows[4:]
    assert {(r["category"], r["status"]) for r in rows} == {("tile", "error"), ("screw", "ok")}
    assert_prior_intact(out, prior)


# --------------------------------------------------------------------------------------------- non-finite numbers, cache
def test_damaged_feature_cache_entries_are_recomputed(capsys, caplog, data, out, cache, prior, tmp_path) -> None:  # noqa: ANN001
    """Feature files overwritten with NaN or with garbage of the right size are detected (checksum, size), named
    in a warning and recomputed: the job's numbers are those of an undamaged cache."""
    from bench.cache import file_sha256, load_npy

    args = (*QUICK, "--categories", "tile")
    code, _, err = run(capsys, data, out, cache, *args)
    assert code == 0, err
    ref = read_rows([out / "results.jsonl"]).rows[-1]
    (feature_dir,) = (cache / "features").iterdir()
    queries = sorted((data / "tile" / "test" / "crack").glob("*.png"))[3:6]
    nan_inplace, garbage, nan_saved = (feature_dir / f"{file_sha256(q)}.npy" for q in queries)
    for entry in (nan_inplace, garbage):
        raw = bytearray(entry.read_bytes())
        with entry.open("rb") as f:
            np.lib.format.read_magic(f)
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            start = f.tell()
        n = int(np.prod(shape)) * dtype.itemsize
        fill = np.full(n // 4, np.nan, np.float32).tobytes() if entry == nan_inplace else os.urandom(n)
        raw[start : start + n] = fill
        entry.write_bytes(bytes(raw))
    np.save(nan_saved, np.full(load_npy(nan_saved).shape, np.nan, np.float32))  # a plain .npy of NaN, valid header
    with caplog.at_level("WARNING"):
        code, _, err = run(capsys, data, tmp_path / "out2", cache, *args)
    assert code == 0, err
    row = read_rows([tmp_path / "out2" / "results.jsonl"]).rows[0]
    for k in ("key", "y_pred", "accuracy"):
        assert row[k] == ref[k], k
    assert row["cache"]["features"]["misses"] == 3
    for entry in (nan_inplace, garbage, nan_saved):
        assert str(entry) in caplog.text
        arr = load_npy(entry)
        assert arr is not None and np.isfinite(arr).all()
    assert f"cache entry {nan_inplace} is damaged (its checksum does not match its data); recomputing it" in caplog.text


def test_weights_file_with_nan_values_is_refused(capsys, out, cache, prior, tiny_root, tmp_path) -> None:  # noqa: ANN001
    import timm
    import torch

    state = timm.create_model("resnet18", pretrained=False).state_dict()
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "resnet18-nan.pth"
    torch.save(state, path)
    code = main(["run", "--dataset", "synthetic-tiny", "--data-root", str(tiny_root), "--backbone", "resnet18", "--weights", str(path),
                 "--no-progress", *QUICK, "--out", str(out), "--cache-dir", str(cache)])  # fmt: skip
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2
    assert f"weights file {path} holds non-finite values (NaN or inf) in 1 tensor(s), e.g. layer2.0.conv1.weight" in line
    assert "re-download it" in line
    assert (out / "results.jsonl").read_bytes() == prior[0]


def test_non_finite_scores_fail_the_job(capsys, monkeypatch, data, out, cache, prior) -> None:  # noqa: ANN001
    from bench.method import get_method

    cls = get_method("protonet").cls
    monkeypatch.setattr(cls, "predict", lambda self, q: np.full((len(q), 3), np.nan, np.float32))
    code, _, err = run(capsys, data, out, cache, *QUICK, "--categories", "tile")
    assert code == 1
    assert "method protonet returned non-finite scores (NaN or inf) for 12 of 12 queries" in err
    rows = read_rows([out / "results.jsonl"]).rows[4:]
    assert [r["status"] for r in rows] == ["error"] and rows[0].get("accuracy") is None
    assert_prior_intact(out, prior)


def test_cache_prune_while_a_bank_is_built(capsys, caplog, monkeypatch, data, out, cache, prior, tmp_path) -> None:  # noqa: ANN001
    """A concurrent `bench cache prune` removing the feature entries of the train images between the steps of
    building a memory bank (deterministically: just before the coreset reads them and again before the chosen rows
    are gathered; removed as prune removes entries, one unlink each, two of them to keep the test fast): the
    entries are recomputed and the job succeeds with the numbers of an undisturbed run."""
    import bench.features.store
    from bench import cache as bcache
    from bench.cache import file_sha256

    args = ("--method", "protonet-residual", "--shots", "3", "--seeds", "1", "--categories", "tile")
    code, _, err = run(capsys, data, out, cache, *args)
    assert code == 0, err
    ref = read_rows([out / "results.jsonl"]).rows[-1]
    bcache.clear(cache, kinds=["banks", "nn"])  # the bank is built again; the train features are cached
    (feature_dir,) = (cache / "features").iterdir()
    train = [feature_dir / f"{file_sha256(p)}.npy" for p in sorted((data / "tile" / "train" / "good").glob("*.png"))[:2]]
    assert all(e.is_file() for e in train)
    real = bench.features.store.approximate_greedy_coreset
    removed = []

    def coreset_with_prunes(*a: Any, **k: Any) -> Any:
        removed.append(sum(e.unlink() is None for e in train if e.exists()))
        sel = real(*a, **k)
        removed.append(sum(e.unlink() is None for e in train if e.exists()))
        return sel

    monkeypatch.setattr(bench.features.store, "approximate_greedy_coreset", coreset_with_prunes)
    monkeypatch.setattr(bench.features.store, "SHARED_STORES", {})  # a new feature store: no bank held in memory
    with caplog.at_level("WARNING"):
        code, _, err = run(capsys, data, tmp_path / "out2", cache, *args)
    assert code == 0, err
    assert removed == [2, 2]  # gone at both moments (so recomputed in between)
    assert "vanished or broke while a memory bank was built" in caplog.text
    row = read_rows([tmp_path / "out2" / "results.jsonl"]).rows[0]
    assert row["status"] == "ok"
    for k in ("key", "y_pred", "accuracy"):
        assert row[k] == ref[k], k


# --------------------------------------------------------------------------------------------- run options
ALIAS_BOMB = (  # a ~330-byte YAML value of 9**6 = 531,441 strings through nested aliases ("billion laughs")
    '[&a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a], '
    "&c [*b,*b,*b,*b,*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c,*c], &e [*d,*d,*d,*d,*d,*d,*d,*d,*d], "
    "[*e,*e,*e,*e,*e,*e,*e,*e,*e]]"
)


@pytest.mark.parametrize(
    "args, config, message",
    [
        (["--shots", "0"], None, "--shots [0] is not allowed: a non-empty list of integers ≥ 1"),
        (["--seeds", "-1"], None, "--seeds [-1] is not allowed: a non-empty list of integers ≥ 0 (-1 is below 0"),
        (["--shots", "3-1"], None, "empty range '3-1' for --shots"),
        (["--coreset-ratio", "-0.5"], None, "--coreset-ratio -0.5 is not allowed: a share of the memory bank kept, in (0, 1]"),
        (["--coreset-ratio", "nan"], None, "--coreset-ratio nan is not allowed"),
        (["--min-defect-types", "0"], None, "--min-defect-types 0 is not allowed: at least 1"),
        (["--jobs", "0"], None, "--jobs 0 is not allowed: at least 1 worker process"),
        (["--threads", "-1"], None, "--threads -1 is not allowed: at least 1"),
        (["--device", "tpu"], None, "--device 'tpu' is not allowed: auto, cpu, cuda or cuda:N"),
        (["--set", "pool=[1"], None, "--set pool=...: cannot read the value '[1'"),
        (["--set", "pool=!!python/object/apply:os.system [\"true\"]"], None, "could not determine a constructor for the tag"),
        ([], 'shots: [1, "two"]\n', "cannot read 'two' as a list of integers (--shots"),
        ([], "set: [pool, max]\n", "'set' in {config} must be a mapping of method options"),
        ([], "set: {1: 2}\n", "'set' in {config} must be a mapping of method options"),
        ([], "- a\n- b\n", "config file {config} must hold a mapping of options"),
        ([], "method: [[protonet]]\n", "option 'methods' must be a name (text)"),
        ([], "1: 2\n", "unknown option(s) in {config}: 1."),
        ([], f"categories: {ALIAS_BOMB}\n", "option 'categories' must be a name (text), got ['lol', 'lol', 'lol', 'lol', ...]"),
        ([], f"shots: {ALIAS_BOMB}\n", "as a list of integers (--shots"),
        ([], f"set: {{pool: {ALIAS_BOMB}}}\n", "option 'pool' must be a name (text)"),
    ],
    ids=["shots-0", "seeds-negative", "shots-empty-range", "coreset-negative", "coreset-nan", "min-types-0", "jobs-0",
         "threads-negative", "device-tpu", "set-bad-yaml", "set-python-tag", "yaml-shots-word", "yaml-set-list",
         "yaml-set-int-key", "yaml-not-mapping", "yaml-method-nested", "yaml-int-key", "alias-bomb-categories",
         "alias-bomb-shots", "alias-bomb-set"],
)
def test_bad_option_values_stop_before_any_job(capsys, out, cache, prior, tiny_root, tmp_path, args, config, message) -> None:  # noqa: ANN001
    """Every run option is checked before the first job: one short `error:` line, exit 2, no row written.

    The alias-bomb cases: the error message must stay short (it once printed 312 MB)."""
    extra = list(args)
    if config is not None:
        path = tmp_path / "grid.yaml"
        path.write_text(config)
        extra += ["--config", str(path)]
        message = message.format(config=path)
    method = [] if config and "method:" in config else ["--method", "protonet"]
    code = main(["run", "--dataset", "synthetic-tiny", "--data-root", str(tiny_root), *COMMON, *method,
                 "--out", str(out), "--cache-dir", str(cache), *extra])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and len(err) < 1000, err[:2000]
    assert message in err, err
    assert (out / "results.jsonl").read_bytes() == prior[0]


def test_list_options_take_spaces_commas_and_ranges(capsys, out, cache, prior, tiny_root) -> None:  # noqa: ANN001
    """`--shots 1 2` and `--seeds 1 2` as well as `1,2` and `1-2` (they once gave 'unrecognized arguments')."""
    code = main(["run", "--dataset", "folder", "--data-root", str(tiny_root), *COMMON, "--method", "protonet",
                 "--categories", "tile", "--shots", "1", "2-3", "--seeds", "1", "2", "--out", str(out), "--cache-dir", str(cache)])  # fmt: skip
    cap = capsys.readouterr()
    assert code == 0, cap.err
    rows = read_rows([out / "results.jsonl"]).rows[4:]
    assert sorted((r["shots"], r["seed"]) for r in rows) == [(s, d) for s in (1, 2, 3) for d in (1, 2) if (s, d) not in ((1, 1), (2, 1))]
    assert "resuming: 2 of 6 jobs already finished" in cap.out


def test_summary_keeps_configurations_apart(capsys, out, cache, prior, tiny_root) -> None:  # noqa: ANN001
    """Two runs into one folder that differ in a --set option are two blocks of the summary,
    not one cell with their seeds pooled; a single seed shows no '± 0.0'."""
    code = main(["run", "--dataset", "folder", "--data-root", str(tiny_root), *COMMON, "--method", "protonet",
                 "--set", "pool=max", "--shots", "1,2", "--seeds", "1", "--out", str(out), "--cache-dir", str(cache)])  # fmt: skip
    cap = capsys.readouterr()
    assert code == 0, cap.err
    summary = (out / "summary.md").read_text()
    assert "### protonet \\[pool=max\\]" in summary and "### protonet \\[pool=mean\\]" in summary, summary  # Markdown-escaped
    assert "(2)" not in summary and "± 0.0" not in summary, summary
    assert summary in cap.out


def test_report_skips_a_row_without_its_fields(capsys, out, cache, prior) -> None:  # noqa: ANN001
    """A line that parses but is not a complete row (``{"key": "zzz", "status": "ok"}``) is skipped and counted like
    a corrupt one, never a traceback."""
    with (out / "results.jsonl").open("a") as f:
        f.write('{"key": "zzz", "status": "ok"}\n{"key": "yyy", "status": "ok", "method": "m", "category": "c", '
                '"shots": 1, "seed": 1, "accuracy": "NaN"}\n')
    code = main(["report", str(out), "--format", "md", "--out", str(out / "report")])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err, err
    assert "skipped 2 unreadable or incomplete line(s)" in err
    only_bad = out / "bad.jsonl"
    only_bad.write_text('{"key": "zzz", "status": "ok"}\n')
    assert main(["report", str(only_bad), "--format", "md", "--out", str(out / "report2")]) == 2
    assert capsys.readouterr().err.startswith("error: no result rows in")


def test_category_names_cannot_break_tables_or_spreadsheets(capsys, tiny_root, tmp_path) -> None:  # noqa: ANN001
    """A category named with a newline stays one Markdown table row; one starting with '=' is text in the CSVs."""
    data = tmp_path / "data"
    shutil.copytree(tiny_root / "tile", data / "=HYPERLINK(x)")
    shutil.copytree(tiny_root / "screw", data / "two\nlines")
    out = tmp_path / "out"
    code = main(["run", "--dataset", "folder", "--data-root", str(data), *COMMON, "--method", "protonet", "--shots", "1",
                 "--seeds", "1", "--out", str(out), "--cache-dir", str(tmp_path / "cache")])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "| two lines " in (out / "summary.md").read_text()
    assert main(["report", str(out), "--format", "md", "csv", "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "two lines" in md and "two\nlines" not in md
    csvs = "".join(p.read_text() for p in (tmp_path / "rep" / "csv").glob("*.csv"))
    assert "'=HYPERLINK(x)" in csvs and ",=HYPERLINK" not in csvs and "\n=HYPERLINK" not in csvs


def test_plugin_given_as_a_file_path(capsys, tmp_path) -> None:  # noqa: ANN001
    code = main(["--plugin", "plugins/my_method.py", "list", "methods"])
    err = capsys.readouterr().err
    assert code == 2 and "--plugin takes a module name, not a file path" in err
    assert "PYTHONPATH=plugins python -m bench --plugin my_method" in err
