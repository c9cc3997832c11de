"""Numbers that mislead without a word (issue #20, items 12 and 13), tried for real through the CLI.

* 12: under protocol ``ncd`` an oracle that pools inside ground-truth masks is handed the ``good`` class (every good
  image has an empty mask, hence the same vector): its all-images figures are inflated by the good share. Every
  discovery row now carries the figures over the defect images only and the good share; reports show ACC defects for
  every row, mark the oracle ‡ with the good share stated, and never rank it.
* 13: a trained head can put most queries into one class and end below chance. Every classification row carries the
  most-predicted class's share (discovery rows: the largest cluster's), and reports flag a collapse by a stated rule;
  rows written before the fields existed still load, shown as unknown and never flagged.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from bench.cli import main
from bench.results import ResultsStore, read_rows
from bench.metrics import episode_metrics
from tests.test_report import make_row

COMMON = ["--backbone", "resnet18", "--weights", "random", "--threads", "1", "--no-progress"]
NEW_CLASSIFICATION = ("top_pred_share", "top_pred_class", "top_pred_true_share")
NEW_DISCOVERY = ("defects_only", "good_share", "top_cluster_share", "top_cluster_class", "top_cluster_true_share")


def write(path: Path, rows: list[dict]) -> Path:
    store = ResultsStore(path / "results.jsonl")
    for r in rows:
        store.append(r)
    return path


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text
    return code, text


# --------------------------------------------------------------------------------------------- 13: classification
def test_an_episode_records_its_most_predicted_class() -> None:
    """80 % of the queries put into a class of 1 in 10: share 0.8 of a class whose true share is 0.1."""
    y_true = [0] * 5 + [1] * 4 + [2]
    y_pred = [2] * 7 + [1, 1, 2]
    m = episode_metrics(y_true, y_pred, ["a", "b", "c"])
    assert (m["top_pred_share"], m["top_pred_class"], m["top_pred_true_share"]) == (0.8, "c", 0.1)
    assert m["accuracy"] == 0.3 < m["chance"]  # below chance
    tie = episode_metrics([0, 0, 0, 1], [0, 0, 1, 1], ["big", "small"])  # a tie: the class most over-filled
    assert (tie["top_pred_share"], tie["top_pred_class"], tie["top_pred_true_share"]) == (0.5, "small", 0.25)


@pytest.mark.parametrize(("share", "true_share", "flag"), [
    (0.8, 0.1, True),  # most queries into a small class
    (1.0, 0.5, True),  # everything into one of two equal classes
    (0.75, 0.7, False),  # a model that follows an imbalanced set
    (0.45, 0.1, False),  # over-filled, but less than half the queries
    (None, 0.1, None), (0.8, None, None),  # rows from before the fields: unknown, never flagged
])  # fmt: skip
def test_the_collapse_rule(share: float | None, true_share: float | None, flag: bool | None) -> None:
    from bench.report.load import collapse_flag

    assert collapse_flag(share, true_share) is flag


def test_a_real_run_writes_the_share_in_every_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run_cli(["run", "--dataset", "synthetic-tiny", *COMMON, "--categories", "tile", "--method", "protonet", "--shots", "1",
                          "--seeds", "1", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")], capsys)  # fmt: skip
    assert code == 0, text
    rows = read_rows([tmp_path / "out"]).rows
    assert rows and all(r["status"] == "ok" for r in rows)
    for r in rows:
        pred = np.bincount(r["y_pred"], minlength=r["n_classes"])
        assert r["top_pred_share"] == pred.max() / len(r["y_pred"]) and r["top_pred_class"] in r["class_names"]
        assert r["top_pred_true_share"] == r["y_true"].count(r["class_names"].index(r["top_pred_class"])) / len(r["y_true"])


def collapsed_row(category: str, shots: int, seed: int) -> dict:
    """A row of a head that put every query but one into the smallest class (below chance)."""
    row = make_row("collapsed", category, shots, seed)
    small = int(np.argmin(np.bincount(row["y_true"])))
    y_pred = [small] * (len(row["y_true"]) - 1) + [row["y_true"][-1]]
    row.update(y_pred=y_pred, **episode_metrics(row["y_true"], y_pred, row["class_names"]))
    return row


def old_row(category: str, shots: int, seed: int) -> dict:
    """A row written before the share was recorded."""
    row = make_row("old", category, shots, seed)
    for k in NEW_CLASSIFICATION:
        del row[k]
    return row


def test_reports_flag_a_collapsed_head_and_show_old_rows_as_unknown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.report.load import COLLAPSE_RULE  # the rule, as the footnote states it

    rows = [f(c, 1, s) for f in (collapsed_row, old_row, lambda c, k, s: make_row("protonet", c, k, s))
            for c in ("bottle", "cable") for s in (1, 2)]  # fmt: skip
    src = write(tmp_path / "runs", rows)
    code, text = run_cli(["leaderboard", str(src), "--out", str(tmp_path / "lb.md"), "--no-plots", "--boot", "200"], capsys)
    assert code == 0, text
    lb = (tmp_path / "lb.md").read_text()
    line = {name: next(x for x in lb.splitlines() if f"| {name} " in x) for name in ("collapsed", "old", "protonet")}
    assert "⚠ 4/4" in line["collapsed"]  # every run collapsed, and the mean share is shown
    share = np.mean([r["top_pred_share"] for r in rows if r["method"] == "collapsed"])
    assert f"{share:.2f} ⚠" in line["collapsed"]
    assert "| ?" in line["old"] and "⚠" not in line["old"]  # unknown, no flag
    assert "⚠" not in line["protonet"]
    assert COLLAPSE_RULE in lb  # the rule is stated under the table
    code, text = run_cli(["report", str(src), "--out", str(tmp_path / "rep"), "--no-plots", "--boot", "200"], capsys)
    assert code == 0, text
    md = (tmp_path / "rep" / "report.md").read_text()
    table = md[md.index("### Most-predicted class share"):]
    assert re.search(rf"\| collapsed +\| {share:.2f} ⚠ 4/4 +\|", table) and re.search(r"\| old +\| \? +\|", table)
    assert COLLAPSE_RULE in table


# --------------------------------------------------------------------------------------------- 12: discovery oracle
@pytest.fixture(scope="module")
def discovery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The oracle and the two reference rows on one category of the built-in data, protocol ncd (3 good of 24)."""
    base = tmp_path_factory.mktemp("discovery")
    code = main(["run", "--task", "discovery", "--dataset", "synthetic-tiny", *COMMON, "--categories", "tile", "--method",
                 "oracle-mask-kmeans", "one-cluster", "random-ids", "--seeds", "1", "--out", str(base / "out"),
                 "--cache-dir", str(base / "cache")])  # fmt: skip
    assert code == 0
    return base / "out"


def hungarian_accuracy(y: np.ndarray, clusters: np.ndarray) -> float:
    table = np.zeros((clusters.max() + 1, y.max() + 1))
    np.add.at(table, (clusters, y), 1)
    r, c = linear_sum_assignment(table, maximize=True)
    return table[r, c].sum() / len(y)


def test_discovery_rows_carry_the_figures_over_defects(discovery: Path) -> None:
    rows = {r["method"]: r for r in read_rows([discovery]).rows}
    oracle = rows["oracle-mask-kmeans"]
    y, cl = np.array(oracle["y_true"]), np.array(oracle["clusters"])
    good = oracle["class_names"].index("good")
    assert oracle["oracle"] and oracle["good_share"] == (y == good).mean() == 3 / 24
    # the oracle's good images all share one cluster: the class is handed to it
    assert len(set(cl[y == good])) == 1
    d = oracle["defects_only"]
    assert d["n_images"] == 21 and d["cluster_accuracy"] == pytest.approx(hungarian_accuracy(y[y != good], cl[y != good]))
    one = rows["one-cluster"]
    assert one["top_cluster_share"] == 1.0 and one["top_cluster_true_share"] == one["largest_class_share"]
    assert one["defects_only"]["cluster_accuracy"] == 7 / 21  # the largest defect class's share


def test_reports_mark_the_oracle_and_never_rank_it(discovery: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run_cli(["leaderboard", str(discovery), "--out", str(tmp_path / "lb.md"), "--no-plots", "--boot", "200"], capsys)
    assert code == 0, text
    lb = (tmp_path / "lb.md").read_text()
    oracle = next(x for x in lb.splitlines() if "oracle-mask-kmeans" in x)
    assert oracle.startswith("| oracle ") and "oracle-mask-kmeans ‡" in oracle  # listed apart, not ranked
    row = next(r for r in read_rows([discovery]).rows if r["oracle"])
    assert f"{row['defects_only']['cluster_accuracy']:.3f}" in oracle  # its ACC defects beside its ACC
    assert "ACC defects" in lb and "whole good class (12 % of the images" in lb and "it is not ranked" in lb
    one = next(x for x in lb.splitlines() if "| one-cluster " in x)
    assert "1.00 ⚠ 1/1" in one  # one cluster: the collapse by construction
    code, text = run_cli(["report", str(discovery), "--out", str(tmp_path / "rep"), "--no-plots", "--boot", "200"], capsys)
    assert code == 0, text
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "oracle-mask-kmeans ‡" in md and "whole good class (12 % of the images" in md
    assert "ACC defects:" in (discovery / "summary.md").read_text()  # the end-of-run summary says it too


def test_old_discovery_rows_load_as_unknown(discovery: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = read_rows([discovery]).rows
    for r in rows:
        for k in NEW_DISCOVERY:
            r.pop(k)
    src = write(tmp_path / "old", rows)
    code, text = run_cli(["leaderboard", str(src), "--out", str(tmp_path / "lb.md"), "--no-plots", "--boot", "200"], capsys)
    assert code == 0, text
    lb = (tmp_path / "lb.md").read_text()
    table = [x for x in lb.splitlines() if x.startswith("| oracle ") or x.startswith("| ref. ")]
    assert len(table) == 3 and all("| ?" in x and "⚠" not in x for x in table)
    assert "not recorded in these rows" in lb and "it is not ranked" in lb
