"""The results store and the row schema: metrics of an episode, concurrent appends, unreadable lines, one row per
key, and the task every row belongs to."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from bench.results import OK_METRICS, ResultsStore, latest_ok, read_rows, row_problem, row_task
from bench.metrics import episode_metrics


def test_metrics() -> None:
    m = episode_metrics([0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 0, 2], ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class_recall"] == {"a": 0.5, "b": pytest.approx(2 / 3), "c": 1.0}
    assert m["confusion"] == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]
    assert m["chance"] == pytest.approx(1 / 3) and m["majority"] == pytest.approx(0.5)


def row(key: str, status: str = "ok", **fields: object) -> dict:
    """A minimal complete result row (the fields every reader needs, :data:`bench.results.REQUIRED_FIELDS`)."""
    base = {"key": key, "status": status, "method": "m", "category": "c", "shots": 1, "seed": 1}
    return {**base, **({"accuracy": 0.5} if status == "ok" else {}), **fields}


def _writer(path: str, n: int, tag: int) -> None:
    store = ResultsStore(path)
    for i in range(n):
        store.append(row(f"{tag}-{i}", payload="x" * 5000))


def test_store_concurrent_appends_and_truncated_line(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    procs = [mp.get_context("fork").Process(target=_writer, args=(str(path), 50, t)) for t in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    rows = read_rows([path]).rows
    assert len(rows) == 150 and len({r["key"] for r in rows}) == 150
    with path.open("ab") as f:
        f.write(b'{"key": "half-writ')  # a run killed mid-line
    res = read_rows([path])
    assert len(res.rows) == 150 and res.skipped_lines == 1
    ResultsStore(path).append(row("after"))  # starts on a fresh line
    res = read_rows([path])
    assert len(res.rows) == 151 and res.skipped_lines == 1
    assert "after" in ResultsStore(path).finished_keys()


def test_incomplete_rows_are_skipped_like_corrupt_lines(tmp_path: Path) -> None:
    """A line that parses but lacks a row's fields, or an ok row without a finite accuracy, is not a result."""
    path = tmp_path / "results.jsonl"
    lines = [row("good"), {"key": "zzz", "status": "ok"}, row("nan", accuracy=float("nan")), row("str", shots="1"),
             row("bool", seed=True), row("far", accuracy=1.5), row("err", "error"), [1, 2]]
    path.write_text("".join(__import__("json").dumps(x) + "\n" for x in lines))
    res = read_rows([path])
    assert [r["key"] for r in res.rows] == ["good", "err"] and res.skipped_lines == 6
    assert "missing or mistyped: method, category, shots, seed" in res.skipped_detail[0]


def test_latest_ok_prefers_success() -> None:
    rows = [{"key": "a", "status": "error"}, {"key": "a", "status": "ok", "v": 1}, {"key": "b", "status": "error"}]
    out = {r["key"]: r for r in latest_ok(rows)}
    assert out["a"]["status"] == "ok" and out["b"]["status"] == "error"


def test_rows_belong_to_a_task() -> None:
    """A row without ``task`` is a classification row (written before tasks existed); an ok row must carry its
    task's metric; an ok row of a task the harness does not know is not a result."""
    assert row_task(row("a")) == "classification" and row_task(row("a", task="classification")) == "classification"
    assert OK_METRICS["classification"] == "accuracy"
    assert row_problem(row("a", task="classification")) == ""
    assert "unknown task" in row_problem(row("a", task="no-such-task"))
    assert row_problem(row("a", "error", task="no-such-task")) == ""  # failures of any task stay visible


def test_a_second_task_never_shares_a_table_or_a_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seam for the next tasks: with a second task registered, its rows form their own groups in reports,
    the classification tables leave them out, and a job's key changes with its task (classification keys do not)."""
    import bench.results
    from bench.report.load import load_results
    from bench.report.tables import build_report

    monkeypatch.setitem(bench.results.OK_METRICS, "othertask", "auroc")  # a task without report tables of its own
    path = tmp_path / "results.jsonl"
    store = ResultsStore(path)
    base = {"dataset": "d", "protocol": "paper_fixed", "class_set": {"combined": "kept", "good": "excluded"},
            "n_classes": 2, "n_queries": 4}
    store.append(row("c1", **base, accuracy=0.5, chance=0.5, majority=0.5))
    store.append(row("d1", **base, task="othertask", auroc=0.9, accuracy=None))
    res = load_results([path])
    assert res.tasks() == ["classification", "othertask"]
    assert res.groups("classification") == ["d · paper_fixed · combined kept, good excluded"]
    assert res.groups("othertask") == ["othertask · d · paper_fixed · combined kept, good excluded"]
    doc = build_report(res, n_boot=200)
    assert not any("othertask" in s.title for s in doc.sections)
    assert any("othertask" in line and "left out" in line for line in doc.intro)


def test_job_keys_include_a_task_other_than_classification(tmp_path: Path) -> None:
    from bench.datasets import load_dataset
    from bench.run.config import RunConfig
    from bench.run.plan import job_identity
    from tests.test_datasets import make_tree

    samples = load_dataset("folder", make_tree(tmp_path))
    cfg = RunConfig(methods=["protonet"], dataset="folder", weights="random", backbone="resnet18")
    args = (cfg, samples, "protonet", {}, "prod", 1, 1, "e", "c")
    assert "task" not in job_identity(*args)  # the keys of existing results stay valid
    assert job_identity(*args, task="detection")["task"] == "detection"
