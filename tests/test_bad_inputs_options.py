"""Bad run options, tried for real (issue #20): lists too long or with repeats, negative seeds, shots no category
can support, ``--scheduler`` without Dask, huge arguments echoed in messages, an ASCII-only locale, an interrupted
run's summary and a results path that is not a regular file.

As in ``tests/test_bad_inputs.py``: :func:`bench.cli.main` in this process (one subprocess for the locale), exit
status 2 with one short ``error:`` line naming the problem and the fix, no traceback, and the rows of an earlier run
byte-identical afterwards. The data is synthetic-tiny (7 images per defect type) in the MVTec layout.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.errors import Terminated
from bench.results import read_rows

REPO = Path(__file__).resolve().parents[1]
COMMON = ["--backbone", "resnet18", "--weights", "random", "--threads", "1", "--no-progress", "--method", "protonet"]
HUGE = "x" * 100_000  # a 100 KB argument


@pytest.fixture(scope="module")
def prior(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path]:
    """Rows of an earlier, finished run (shots 1 and 2, seed 1; copied into each test's --out) and its warm cache."""
    base = tmp_path_factory.mktemp("prior")
    code = main(["run", "--dataset", "folder", "--data-root", str(tiny_root), *COMMON, "--shots", "1,2", "--seeds", "1",
                 "--out", str(base / "out"), "--cache-dir", str(base / "cache")])  # fmt: skip
    assert code == 0
    return (base / "out" / "results.jsonl").read_bytes(), base / "cache"


@pytest.fixture
def out(prior: tuple[bytes, Path], tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    (d / "results.jsonl").write_bytes(prior[0])
    return d


@pytest.fixture
def cache(prior: tuple[bytes, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(prior[1], tmp_path / "cache"))


def run(capsys: pytest.CaptureFixture[str], data: Path, out: Path, cache: Path, *extra: str) -> tuple[int, str, str]:
    code = main(["run", "--dataset", "folder", "--data-root", str(data), *COMMON, "--out", str(out),
                 "--cache-dir", str(cache), *extra])  # fmt: skip
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err, cap.err[-3000:]
    return code, cap.out, cap.err


def assert_one_error_line(code: int, err: str, *parts: str) -> None:
    assert code == 2, err[-2000:]
    assert err.startswith("error: ") and err.count("\n") == 1 and len(err) < 1000, err[:2000]
    for part in parts:
        assert part in err, err


# ------------------------------------------------------------------------------------------------ grid lists
def test_a_list_beyond_the_bound_is_refused_before_it_is_built(capsys, tiny_root, out, cache, prior) -> None:  # noqa: ANN001
    """``--seeds 1-10000000000`` was a MemoryError (the list was built first); the bound is in the message and the
    help."""
    code, _, err = run(capsys, tiny_root, out, cache, "--shots", "1", "--seeds", "1-10000000000000000")
    assert_one_error_line(code, err, "--seeds 1-10000000000000000 gives more than 1,000 values", "give fewer")
    code, _, err = run(capsys, tiny_root, out, cache, "--shots", "1", "--seeds", "1-600", "500-1000")
    assert_one_error_line(code, err, "--seeds 1-600 500-1000 gives more than 1,000 values")
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "at most 1,000 values" in " ".join(capsys.readouterr().out.split())
    assert (out / "results.jsonl").read_bytes() == prior[0]


def test_shots_no_category_can_support_are_one_message_before_any_job(capsys, tiny_root, out, cache, prior) -> None:  # noqa: ANN001
    """``--shots 1-300`` wrote an error row for every shot count above 6 (7 images per defect type); now one message
    names the largest shot count that fits and the reason of the next, and no row is written."""
    code, _, err = run(capsys, tiny_root, out, cache, "--shots", "1-40", "--seeds", "1")
    assert_one_error_line(code, err, "--shots 7, 8, 9, 10, 11 ... and 29 more: no category has the images for more "
                          "than 6-shot", "7-shot needs at least 8", "Use --shots up to 6 (e.g. 1-6)")  # fmt: skip
    assert (out / "results.jsonl").read_bytes() == prior[0]


def test_negative_seeds_and_shots_are_named(capsys, tiny_root, out, cache, prior, tmp_path) -> None:  # noqa: ANN001
    code, _, err = run(capsys, tiny_root, out, cache, "--shots", "1", "--seeds", "-1")
    assert_one_error_line(code, err, "--seeds [-1] is not allowed: a non-empty list of integers ≥ 0 (-1 is below 0")
    code, _, err = run(capsys, tiny_root, out, cache, "--shots=-2-1", "--seeds", "1")
    assert_one_error_line(code, err, "integers ≥ 1 (-2, -1, 0 are below 1")
    grid = tmp_path / "grid.yaml"
    grid.write_text("seeds: [3, -4]\n")
    code, _, err = run(capsys, tiny_root, out, cache, "--config", str(grid), "--shots", "1")
    assert_one_error_line(code, err, "-4 is below 0")
    assert (out / "results.jsonl").read_bytes() == prior[0]


def test_repeated_shots_and_seeds_run_once(capsys, tiny_root, out, cache, prior) -> None:  # noqa: ANN001
    """``--shots 1,1`` planned every job twice and called the copies "already finished"; now each cell is planned once
    (as ``--categories tile tile``), with a note."""
    code, stdout, err = run(capsys, tiny_root, out, cache, "--shots", "1,1", "2", "--seeds", "1,1")
    assert code == 0, err
    assert "note: --shots gives 1 more than once; each runs once." in stdout
    assert "note: --seeds gives 1 more than once; each runs once." in stdout
    assert "0 job(s) ran, 4 already finished, 0 failed (of 4 planned)" in stdout, stdout
    assert (out / "results.jsonl").read_bytes() == prior[0]


def test_scheduler_without_dask_is_refused(capsys, tiny_root, out, cache, prior) -> None:  # noqa: ANN001
    """``--scheduler`` was ignored without ``--backend dask`` (and with one job): the grid ran on this machine."""
    for extra in ([], ["--backend", "loky", "--jobs", "2"], ["--backend", "dask"]):
        code, _, err = run(capsys, tiny_root, out, cache, "--shots", "1", "--seeds", "1", "--scheduler", "tcp://127.0.0.1:9",
                           *extra)  # fmt: skip
        assert_one_error_line(code, err, "--scheduler 'tcp://127.0.0.1:9' is used by --backend dask with --jobs N ≥ 2",
                              "Add --backend dask --jobs N, or drop --scheduler")  # fmt: skip
    assert (out / "results.jsonl").read_bytes() == prior[0]


# ------------------------------------------------------------------------------------------------ short messages
@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", HUGE], "unknown method 'xxxxxxxx"),
        (["--dataset", HUGE], "unknown dataset 'xxxxxxxx"),
        (["--categories", HUGE], "not found under"),
        (["--categories", *[f"c{i}" for i in range(200_000)]], "--categories gives 200,000 values (c0, c1, c2, c3, c4 ... "
                                                               "and 199,995 more): a run takes at most 1,000"),
        (["--categories", "tile", *[f"c{i}" for i in range(900)]], "category c0, c1, c2, c3, c4 ... and 895 more not found"),
        (["--set", f"{HUGE}=1"], "no method of this run has an option 'xxxx"),
        (["--set", f"pool={HUGE}"], "invalid options for method 'protonet'"),
        (["--backbone", HUGE], "unknown backbone 'xxxx"),
        (["--weights", HUGE], "weights file not found: xxxx"),
        (["--config", HUGE], "config file not found: xxxx"),
        (["--scheduler", HUGE, "--backend", "dask", "--jobs", "2", "--shots", "3"], "cannot connect to the Dask scheduler xxxx"),
        (["--protocol", HUGE], "argument --protocol: invalid choice: 'xxxx"),
    ],
    ids=["method", "dataset", "category", "categories-200000", "categories-900", "set-key", "set-value", "backbone",
         "weights", "config", "scheduler", "protocol"],
)
def test_messages_quote_huge_arguments_in_short(capsys, tiny_root, out, cache, prior, args, message) -> None:  # noqa: ANN001
    """Every message that quotes a user's value is short (a 2,000,000-name --categories printed 19 MB in 84 s)."""
    if "--scheduler" in args:  # without it the run stops earlier, at "--backend dask needs the optional dependency"
        pytest.importorskip("distributed", reason="the optional dependency `distributed` is not installed (pip install -e '.[dask]')")
    try:
        code, _, err = run(capsys, tiny_root, out, cache, "--shots", "1", "--seeds", "1", *args)
    except SystemExit as exc:  # argparse's own errors
        code, err = exc.code, capsys.readouterr().err
        err = err[err.index("error: "):]
    assert code == 2 and "Traceback" not in err and message in err and len(err) < 1000, err[:3000]
    assert (out / "results.jsonl").read_bytes() == prior[0]


def test_plugin_name_is_quoted_in_short(capsys) -> None:  # noqa: ANN001
    code = main(["--plugin", HUGE, "list", "methods"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot import plugin module 'xxxx" in err and len(err) < 1000, err[:3000]


# ------------------------------------------------------------------------------------------------ stopped runs, locale
@pytest.mark.parametrize("stop, status, word", [(KeyboardInterrupt, 130, "interrupted"), (Terminated, 143, "terminated")])
def test_summary_is_written_when_a_run_is_stopped(capsys, monkeypatch, tiny_root, out, cache, prior, stop, status, word) -> None:  # noqa: ANN001
    """Ctrl-C (SIGTERM the same) after the first new job: summary.md holds the rows finished so far."""
    import bench.run.classification as classification

    task = classification.JOBS
    done: list[str] = []

    def run_then_stop(cfg, samples, job, out_dir):  # noqa: ANN001, ANN202
        if done:
            raise stop()
        done.append(job.category)
        return task.run(cfg, samples, job, out_dir)

    monkeypatch.setattr(classification, "JOBS", dataclasses.replace(task, run=run_then_stop))
    code, _, err = run(capsys, tiny_root, out, cache, "--shots", "3", "--seeds", "1")
    assert code == status and word in err and f"their table: {out / 'summary.md'}" in err, err
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "1-shot" in summary and "3-shot" in summary and f"| {done[0]} " in summary, summary
    rows = read_rows([out / "results.jsonl"]).rows
    assert len(rows) == 5 and (out / "results.jsonl").read_bytes().startswith(prior[0])


def test_ascii_locale_prints_and_writes_the_summary(tiny_root, out, cache, prior) -> None:  # noqa: ANN001
    """``PYTHONUTF8=0 LC_ALL=C``: stdout is ASCII; the table's ``±`` raised UnicodeEncodeError and summary.md was lost."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONIOENCODING", "PYTHONUTF8", "LANG", "LC_CTYPE")}
    env.update(PYTHONUTF8="0", LC_ALL="C", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--dataset", "folder", "--data-root", str(tiny_root), *COMMON,
         "--shots", "1", "--seeds", "1,2", "--out", str(out), "--cache-dir", str(cache)],
        env=env, capture_output=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    stdout, stderr = proc.stdout.decode("ascii"), proc.stderr.decode("ascii")  # nothing but ASCII reaches the streams
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr[-3000:]
    assert "\\xb1" in stdout and "2 job(s) ran, 2 already finished" in stdout, stdout  # ± as an escape
    assert "± 0.0 (2)" in (out / "summary.md").read_text(encoding="utf-8")
    assert (out / "results.jsonl").read_bytes().startswith(prior[0])


# ------------------------------------------------------------------------------------------------ results path
@pytest.mark.timeout(120)  # before the fix, a FIFO blocked the run's first read for ever
@pytest.mark.parametrize("kind, what", [("folder", "a folder"), ("fifo", "a FIFO (named pipe)"), ("device", "a device")])
def test_results_path_that_is_not_a_regular_file(capsys, tiny_root, cache, tmp_path, kind, what) -> None:  # noqa: ANN001
    """A ``results.jsonl`` that is a folder, a FIFO or (a link to) /dev/null is refused before any job: a FIFO hung
    the run, /dev/null swallowed every row."""
    out = tmp_path / "out"
    out.mkdir()
    path = out / "results.jsonl"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(os.devnull)
    code, _, err = run(capsys, tiny_root, out, cache, "--shots", "1", "--seeds", "1")
    assert_one_error_line(code, err, f"the results file {path} is {what}", "Move it away, or choose another --out")
    assert sorted(p.name for p in out.iterdir()) == ["results.jsonl"] and not path.is_file()
