"""A fixed grid gives the result rows recorded in ``tests/data/golden_grid.json``.

The rows were recorded with the harness as it stood before ``bench/`` was laid out by stage (commit d60e6ec):
four methods (``protonet-residual``, ``knn``, ``logreg`` and ``contrastive`` with a short schedule) on
``synthetic-tiny``, 1 and 2 shots, seeds 1 and 2, two random-init backbones, one torch thread. They were recorded
again at that code (9d01cc5) with PyTorch's kernels pinned to AVX2 (``tests/pinned.py``), as the test now runs:
unpinned, one prediction of a trained row differed between two Xeons. Any change that
moves code without meaning to change what it computes must give the same job keys (so existing results folders
still resume), the same predictions, accuracies, per-class recalls and confusion matrices. The code version
(``env``), timings and cache counts are not compared. Fields added since the recording are checked against the
recorded ones they follow from (:func:`assert_top_prediction`), so the golden file stays as recorded.

Regenerate (only for a change that is *meant* to change results, and say so in its commit)::

    python tests/test_golden_grid.py --write
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

if __package__ in (None, ""):  # run as a script (--write)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.pinned import run_bench  # noqa: E402

GOLDEN = Path(__file__).parent / "data" / "golden_grid.json"
BACKBONES = ("resnet18", "resnet34")
ARGS = [
    "run", "--method", "protonet-residual", "knn", "logreg", "contrastive", "--dataset", "synthetic-tiny",
    "--shots", "1,2", "--seeds", "1,2", "--weights", "random", "--threads", "1", "--no-progress",
    "--set", "max_episodes=2", "--set", "episode_groups=2", "--set", "episode_classes=5", "--set", "episode_queries=3",
    "--set", "finetune_passes=0,2",
]  # fmt: skip
FIELDS = ("key", "method", "category", "shots", "seed", "class_names", "y_true", "y_pred", "accuracy",
          "per_class_recall", "confusion")  # fmt: skip


def assert_top_prediction(r: dict[str, Any]) -> None:
    """A field added after the recording, pinned through the recorded predictions: the most-predicted class's share,
    its class (ties: the fewest true queries) and its true share follow from ``y_true`` and ``y_pred``, which the
    golden rows fix."""
    names, yt, yp = r["class_names"], r["y_true"], r["y_pred"]
    top = max(range(len(names)), key=lambda i: (yp.count(i), -yt.count(i)))
    assert (r["top_pred_share"], r["top_pred_class"], r["top_pred_true_share"]) == (
        yp.count(top) / len(yp), names[top], yt.count(top) / len(yt)), r["key"]


def run_grid(work: Path) -> list[dict[str, Any]]:
    """Run the fixed grid into ``work`` (results and a fresh cache) and return its rows' compared fields, sorted."""
    from bench.results import read_rows

    rows = []
    for backbone in BACKBONES:
        out = work / backbone
        run_bench([*ARGS, "--backbone", backbone, "--out", str(out), "--cache-dir", str(work / "cache")])
        for r in read_rows([out]).rows:
            assert r["status"] == "ok", r.get("error")
            assert r.get("task", "classification") == "classification"
            assert_top_prediction(r)
            rows.append({"backbone": backbone, **{k: r[k] for k in FIELDS}})
    return sorted(rows, key=lambda r: (r["backbone"], r["method"], r["category"], r["shots"], r["seed"]))


@pytest.mark.slow
def test_fixed_grid_gives_the_recorded_rows(tmp_path: Path) -> None:
    golden = json.loads(GOLDEN.read_text())
    rows = run_grid(tmp_path)
    assert len(rows) == len(golden["rows"]) == 64
    for got, want in zip(rows, golden["rows"]):
        assert got == want, f"{want['backbone']} {want['method']} {want['category']} {want['shots']}-shot seed {want['seed']}"


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    with tempfile.TemporaryDirectory(prefix="golden-grid-") as tmp:
        result = run_grid(Path(tmp))
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python -m bench", *ARGS, "--backbone", "|".join(BACKBONES)])
    lines = ",\n".join(json.dumps(r, sort_keys=True) for r in result)  # one row a line: readable diffs
    GOLDEN.write_text(f'{{"command": {json.dumps(command)}, "fields": {json.dumps(list(FIELDS))}, "rows": [\n{lines}\n]}}\n')
    print(f"wrote {len(result)} rows to {GOLDEN}")
