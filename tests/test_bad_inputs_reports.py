"""Bad input to the report commands, tried for real (issue #20: items 7, 10, 11, the injections and the tracebacks of
``report`` / ``leaderboard`` / ``detect``).

``bench report`` and ``bench leaderboard`` are called in this process through :func:`bench.cli.main` on result rows
fabricated in the store's schema (their metrics computed by the harness's own metric functions), then broken the way
a hand edit, a failed job or a one-seed run breaks them. Each case checks the exit status, the message (the problem
and the fix), no traceback, and that the results files are byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from bench.metrics.detection import image_auroc
from bench.metrics.discovery import discovery_metrics
from bench.report.stats import prob_improvement, stratified_bootstrap_mean, t_interval
from bench.report.summary import summary_table
from bench.results import ResultsStore
from bench.metrics import episode_metrics
from tests.helpers import cli

NAMES = ["crack", "hole", "scratch"]
FAST = ["--no-plots", "--boot", "200"]


# --------------------------------------------------------------------------------------------- fabricated rows
def base_row(method: str, category: str, shots: int, seed: int, task: str = "classification", **extra: Any) -> dict[str, Any]:
    ident = json.dumps([task, method, category, shots, seed])
    return {
        "key": hashlib.sha256(ident.encode()).hexdigest()[:16], "task": task, "status": "ok", "error": None,
        "method": method, "method_config": {}, "method_config_hash": "h" + hashlib.sha256(method.encode()).hexdigest()[:8],
        "features": {"backbone": "resnet18", "weights": "random"}, "weights": {"backbone": "resnet18", "weights": "random"},
        "dataset": "folder", "category": category, "shots": shots, "seed": seed,
        "protocol": {"classification": "paper_fixed", "detection": "kshot_normals", "discovery": "ncd"}[task],
        "class_set": {"combined": "kept", "good": "excluded"}, "env": {"harness": "0.1.0"},
        "created": f"2024-06-01T00:00:{seed:02d}+00:00", **extra,
    }  # fmt: skip


def rng_for(*parts: object) -> np.random.Generator:
    return np.random.default_rng(int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16))


def cls_row(method: str, category: str, shots: int, seed: int, quality: float = 0.6) -> dict[str, Any]:
    rng = rng_for(method, category, shots, seed)
    y_true = np.repeat(np.arange(3), 6)
    y_pred = np.where(rng.random(18) < quality, y_true, (y_true + 1 + rng.integers(0, 2, 18)) % 3)
    row = base_row(method, category, shots, seed, class_names=NAMES, n_classes=3, n_queries=18,
                   y_true=y_true.tolist(), y_pred=y_pred.tolist())  # fmt: skip
    row.update(episode_metrics(y_true.tolist(), y_pred.tolist(), NAMES))
    return row


def disc_row(method: str, category: str, seed: int) -> dict[str, Any]:
    rng = rng_for(method, category, seed)
    y_true = np.repeat(np.arange(3), 8)
    clusters = np.where(rng.random(24) < 0.7, y_true, rng.integers(0, 3, 24))
    row = base_row(method, category, 0, seed, task="discovery", class_names=NAMES, n_classes=3, n_queries=24,
                   y_true=y_true.tolist(), clusters=clusters.tolist(), transductive=True, k_known=True)  # fmt: skip
    row.update(discovery_metrics(y_true, clusters, NAMES))
    return row


def det_row(method: str, category: str, shots: int, seed: int) -> dict[str, Any]:
    rng = rng_for(method, category, shots, seed)
    y_true = np.repeat([0, 1], 10)
    scores = (y_true + rng.normal(0, 0.8, 20)).round(4)
    return base_row(method, category, shots, seed, task="detection", extra_data="imagenet", synthetic_negatives=False,
                    y_true=y_true.tolist(), scores=scores.tolist(), image_auroc=image_auroc(y_true, scores),
                    pixel_auroc=None)  # fmt: skip


def failed(row: dict[str, Any], error: str) -> dict[str, Any]:
    keep = ("key", "task", "method", "method_config", "method_config_hash", "features", "weights", "dataset", "category",
            "shots", "seed", "protocol", "class_set", "env", "created")  # fmt: skip
    return {**{k: row[k] for k in keep}, "status": "error", "error": error}


def store(folder: Path, rows: list[dict[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    s = ResultsStore(folder / "results.jsonl")
    for r in rows:
        s.append(r)
    return folder / "results.jsonl"


def hashes(*files: Path) -> dict[str, str]:
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


# --------------------------------------------------------------------------------------------- item 7: one rule for rows
def test_discovery_row_with_null_ari_is_recomputed_from_its_clusters(tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    rows = [disc_row("kmeans", c, 1) for c in ("screw", "tile")]
    true_ari = rows[0]["ari"]
    rows[0]["ari"] = None
    res_file = store(tmp_path / "res", rows)
    before = hashes(res_file)
    code, _, err = cli(capsys, "report", str(res_file.parent), "--out", str(tmp_path / "rep"), *FAST)
    assert code == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "recomputed the metrics of 1 row(s) from their stored predictions" in md and "ari null stored" in md
    assert "recomputed the metrics of 1 row(s)" in caplog.text  # a warning line too
    ari = np.mean([true_ari, rows[1]["ari"]])
    assert f"{ari:.3f}" in md.split("dataset figures")[1]
    assert hashes(res_file) == before


def test_row_without_metric_or_predictions_is_refused_and_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    disc = [disc_row("kmeans", c, 1) for c in ("screw", "tile")]
    disc[0]["ari"] = None
    del disc[0]["clusters"]
    det = [det_row("patchcore-kshot", c, 1, 1) for c in ("screw", "tile")]
    det[1]["scores"] = det[1]["scores"][:-1]  # malformed: one score short
    cls = [cls_row("protonet", c, 1, 1) for c in ("screw", "tile")]
    cls[0]["y_pred"][0] = 7  # a label outside the class list
    res_file = store(tmp_path / "res", disc + det + cls)
    before = hashes(res_file)
    code, _, err = cli(capsys, "report", str(res_file), "--out", str(tmp_path / "rep"), *FAST)
    assert code == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "refused 3 finished row(s) whose metrics are missing or cannot be checked" in md
    assert "ari is null and the row stores no clusters to recompute it from" in md
    assert "1/2 †" in md and "(1/2)†" in md  # each refused row counts as a missing run: coverage n/N
    assert "refused 3 finished row(s)" in caplog.text
    code, _, _ = cli(capsys, "leaderboard", str(res_file), "--out", str(tmp_path / "lb.md"), *FAST)
    lb = (tmp_path / "lb.md").read_text()
    assert code == 0 and "1 refused (ari is null" in lb and "1 refused (scores is not a list" in lb
    assert hashes(res_file) == before


def test_hand_edited_accuracy_shows_one_number_everywhere(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [cls_row("protonet", c, 1, 1) for c in ("screw", "tile")]
    truth = rows[0]["accuracy"]
    rows[0]["accuracy"] = 0.99  # its y_pred, confusion and per-class recall say otherwise
    res_file = store(tmp_path / "res", rows)
    before = hashes(res_file)
    code, _, _ = cli(capsys, "report", str(res_file), "--out", str(tmp_path / "rep"), "--format", "md", "csv", "--category", "screw", *FAST)
    assert code == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "99.00" not in md and f"{100 * truth:.2f}" in md
    assert "accuracy 0.99 stored" in md.splitlines()[3]  # said in the intro
    code, _, _ = cli(capsys, "leaderboard", str(res_file), "--out", str(tmp_path / "lb.md"), *FAST)
    mean = 100 * np.mean([truth, rows[1]["accuracy"]])
    assert code == 0 and f"{mean:.2f}" in (tmp_path / "lb.md").read_text()
    assert "99.0" not in summary_table(res_file) and f"{100 * truth:.1f}" in summary_table(res_file)
    assert hashes(res_file) == before


# --------------------------------------------------------------------------------------------- item 10: failed, not "not run"
def test_leaderboards_say_failed_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    why = "contrastive needs normal images (train/good) of screw: drop the method or add train/good"
    rows = [cls_row("protonet", c, 1, 1) for c in ("screw", "tile")]
    rows += [failed(cls_row("contrastive", c, 1, 1), why) for c in ("screw", "tile")]
    rows += [cls_row("direct", "screw", 1, 1), failed(cls_row("direct", "tile", 1, 1), "RuntimeError: CUDA out of memory")]
    rows += [det_row("patchcore-kshot", c, 1, 1) for c in ("screw", "tile")]
    rows += [failed(det_row("coft-ad", c, 1, 1), "RuntimeError: boom") for c in ("screw", "tile")]
    rows += [disc_row("kmeans", c, 1) for c in ("screw", "tile")]
    rows += [failed(disc_row("anomalyncd", c, 1), "ValueError: no maps") for c in ("screw", "tile")]
    res_file = store(tmp_path / "res", rows)
    code, _, _ = cli(capsys, "leaderboard", str(res_file), "--out", str(tmp_path / "lb.md"), *FAST)
    assert code == 0
    lb = (tmp_path / "lb.md").read_text()
    assert "not run" not in lb
    assert f"contrastive: 2 failed ({why})" in lb and "direct: 1 failed (RuntimeError: CUDA out of memory)" in lb
    assert "| failed | contrastive" in lb.replace("  ", "").replace(" |", "|").replace("|", " | ").replace("  ", " ")
    assert "coft-ad: 2 failed (RuntimeError: boom)" in lb  # detection: the config was dropped without a word
    assert "anomalyncd: 2 failed (ValueError: no maps)" in lb


# --------------------------------------------------------------------------------------------- item 11: one seed
def test_one_seed_shows_no_interval_and_no_probability(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [cls_row(m, c, 1, 1, q) for m, q in (("protonet", 0.9), ("direct", 0.3)) for c in ("screw", "tile")]
    rows += [det_row(m, c, 1, 1) for m in ("patchcore-kshot", "gaussian") for c in ("screw", "tile")]
    res_file = store(tmp_path / "res", rows)
    code, _, _ = cli(capsys, "leaderboard", str(res_file), "--out", str(tmp_path / "lb.md"), "--boot", "200")
    assert code == 0
    lb = (tmp_path / "lb.md").read_text()
    assert "[–, –]" not in lb and "| 1.00 " not in lb and "| 0.00 " not in lb  # no P(> next) from 2 paired runs
    assert "n/a (n=2)" in lb and "intervals only where every category has ≥ 3 seeds" in lb
    assert "band =" not in lb and "no band: no point has ≥ 3 seeds in every category" in lb
    code, _, _ = cli(capsys, "report", str(res_file), "--out", str(tmp_path / "rep"), "--boot", "200")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert code == 0 and "[–, –]" not in md and "± –" not in md and "band =" not in md
    assert "n/a (n=2)" in md.split("probability of improvement")[1]


def test_intervals_and_probabilities_need_three_draws() -> None:
    two = {"screw": [60.0, 70.0], "tile": [40.0, 50.0]}
    assert np.isnan(stratified_bootstrap_mean(two, n_boot=200).low)  # two seeds: the "interval" was the two values
    three = {k: [*v, 65.0] for k, v in two.items()}
    iv = stratified_bootstrap_mean(three, n_boot=200)
    assert iv.low < iv.mean < iv.high
    assert np.isnan(t_interval([0.5, 0.6]).low) and np.isfinite(t_interval([0.5, 0.6, 0.7]).low)
    assert np.isnan(prob_improvement([0.9], [0.1])) and np.isnan(prob_improvement([0.9, 0.8], [0.1, 0.2]))
    assert prob_improvement([0.9, 0.8, 0.7], [0.1, 0.2, 0.8]) == pytest.approx(2 / 3)


# --------------------------------------------------------------------------------------------- injection
EVIL_CATEGORY = "x\n\\input{secret}"
EVIL_METHOD = "![i](http:evil.png)"
EVIL_HTML = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def evil_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [cls_row(EVIL_METHOD, c, 1, 1) for c in (EVIL_CATEGORY, EVIL_HTML)]
    rows += [failed(cls_row("protonet", EVIL_HTML, 1, 1), f"RuntimeError: {EVIL_HTML} `x` [l](http://e)")]
    return store(tmp_path_factory.mktemp("evil"), rows)


def test_latex_comment_cannot_be_ended_by_a_name(evil_results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = cli(capsys, "report", str(evil_results), "--format", "latex", "--category", EVIL_CATEGORY, "--out", str(tmp_path), *FAST)
    assert code == 0
    tex = (tmp_path / "report.tex").read_text()
    live = [line for line in tex.splitlines() if "\\input{secret}" in line and not line.startswith("%")]
    assert not live, live
    assert "% \\input{secret}" in tex  # the command line's second line, commented


def test_markdown_names_are_escaped(evil_results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "report", str(evil_results), "--out", str(tmp_path / "rep"), "--category", EVIL_HTML, *FAST)[0] == 0
    assert cli(capsys, "leaderboard", str(evil_results), "--out", str(tmp_path / "lb.md"), *FAST)[0] == 0
    for text in ((tmp_path / "rep" / "report.md").read_text(), (tmp_path / "lb.md").read_text(), summary_table(evil_results)):
        command = [line for line in text.splitlines() if line.startswith("Generated by: ")]
        assert all(re.fullmatch(r"Generated by: `[^`\n]*`", line) for line in command), command  # a code span: shown verbatim
        text = "\n".join(line for line in text.splitlines() if line not in command)
        assert not re.search(r"(?<!\\)<img|!\[i\]\(|\[l\]\(|(?<!\\)`x", text), text
        assert "\\<img src=x onerror=alert(1)>" in text and "!\\[i\\](http:evil.png)" in text


# --------------------------------------------------------------------------------------------- tracebacks
@pytest.fixture(scope="module")
def small_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return store(tmp_path_factory.mktemp("small"), [cls_row("protonet", c, 1, 1) for c in ("screw", "tile")])


@pytest.mark.parametrize("command", ["report", "leaderboard"])
@pytest.mark.parametrize("how", ["file-in-the-way", "proc"])
def test_unwritable_out_is_one_error_line(small_results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, how: str) -> None:
    if how == "file-in-the-way":
        (tmp_path / "f").write_text("a file where the output folder should be\n")
        out = tmp_path / "f" / "sub"
    else:
        out = Path("/proc/fsad-bench-report")  # procfs: nothing can be created there, not even by root
    before = hashes(small_results)
    code, _, err = cli(capsys, command, str(small_results), "--out", str(out / "lb.md" if command == "leaderboard" else out), *FAST)
    assert code == 2 and err.startswith("error: cannot write to ") and "Choose a writable" in err and "--out" in err
    assert len(err.strip().splitlines()) == 1 and hashes(small_results) == before


@pytest.fixture
def alarm() -> Iterator[None]:
    """Fail instead of hanging when a command blocks (opening a FIFO with no writer blocks forever)."""

    def hung(*_: object) -> None:
        raise TimeoutError("the command hung")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.usefixtures("alarm")
@pytest.mark.parametrize("kind", ["folder", "fifo"])
@pytest.mark.parametrize("command", ["report", "leaderboard"])
def test_results_file_that_is_a_folder_or_a_fifo(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, command: str) -> None:
    run = tmp_path / "run"
    run.mkdir()
    if kind == "folder":
        (run / "results.jsonl").mkdir()
    else:
        os.mkfifo(run / "results.jsonl")
    code, _, err = cli(capsys, command, str(run), "--out", str(tmp_path / "out" / "x.md"), *FAST)
    what = "a folder" if kind == "folder" else "a FIFO (named pipe)"
    assert code == 2 and f"{run / 'results.jsonl'} is {what}, not a results file" in err and "Pass a results.jsonl file" in err


def test_detect_out_folder_is_refused_before_computing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.datasets.synthetic import generate

    root = generate(tmp_path / "data", "tiny")
    (tmp_path / "folder").mkdir()
    code, out, err = cli(capsys, "detect", "--dataset", "folder", "--data-root", str(root), "--backbone", "resnet18",
                         "--weights", "random", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "folder"))  # fmt: skip
    assert code == 2 and f"--out {tmp_path / 'folder'} is a folder; give a file name" in err
    assert out == "" and not (tmp_path / "cache").exists()  # nothing computed
