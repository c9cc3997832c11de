"""Fixed detection and discovery grids give the result rows recorded in ``tests/data/golden_detection.json`` and
``tests/data/golden_discovery.json``.

The two neighbouring tasks' counterpart of ``test_golden_grid.py`` (issue #21: record them before code moves). Both
grids run on ``synthetic-tiny`` (both categories) with the default backbone (``tf_efficientnet_lite0``) in random
init, one torch thread, PyTorch's kernels pinned to AVX2 (``tests/pinned.py``) and a fresh cache:

* detection: ``patchcore-kshot``, ``gaussian`` and ``coft-ad`` (2 fine-tuning steps, 2 pseudo anomalies per shot),
  4 views per shot, 1 and 2 shots, seeds 1 and 2 (24 jobs);
* discovery: the training-free discoverers and ``anomalyncd`` on a 2-block ViT at 32 px for one epoch, seeds 1 and 2
  (36 jobs).

Any change that moves code without meaning to change what it computes must give the same job keys (so existing
results folders still resume) and the same values in the fields listed below: the drawn shots, scores, image,
per-type and pixel AUROC (detection); cluster ids, matched labels, ACC, NMI, ARI and the matched confusion
(discovery). Only these fields are compared, so fields added to rows later do not break the test; the code version
(``env``), timings and cache counts are never compared. The values are stored as the rows wrote them.

Regenerate (only for a change that is *meant* to change results, and say so in its commit)::

    python tests/test_golden_tasks.py --write              # both; or --write detection / --write discovery
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

DATA = Path(__file__).parent / "data"
COMMON = ["--dataset", "synthetic-tiny", "--backbone", "tf_efficientnet_lite0", "--weights", "random", "--threads", "1",
          "--no-progress"]  # fmt: skip
GRIDS: dict[str, dict[str, Any]] = {
    "detection": {
        "args": ["run", "--task", "detection", "--method", "patchcore-kshot", "gaussian", "coft-ad", *COMMON,
                 "--shots", "1,2", "--seeds", "1,2", "--set", "views=4", "--set", "coft-ad.steps=2",
                 "--set", "coft-ad.negative_pool=2"],
        "fields": ("key", "method", "category", "shots", "seed", "support", "defect_types", "n_test", "y_true",
                   "scores", "image_auroc", "auroc_per_type", "pixel_auroc", "pixel_auroc_images"),
        "order": ("method", "category", "shots", "seed"),
        "jobs": 24,
    },
    "discovery": {
        "args": ["run", "--task", "discovery", "--method", "one-cluster", "random-ids", "kmeans", "kmeans-residual",
                 "anomaly-clustering", "anomaly-clustering-semi", "mebin-kmeans", "oracle-mask-kmeans", "anomalyncd",
                 *COMMON, "--seeds", "1,2", "--set", "anomalyncd.vit_img_size=32", "--set", "anomalyncd.vit_depth=2",
                 "--set", "anomalyncd.mask_layers=1", "--set", "anomalyncd.epochs=1",
                 "--set", "anomalyncd.batch_size=8"],
        "fields": ("key", "method", "category", "seed", "class_names", "y_true", "clusters", "y_pred",
                   "cluster_to_class", "cluster_accuracy", "nmi", "ari", "confusion", "confusion_columns"),
        "order": ("method", "category", "seed"),
        "jobs": 36,
    },
}  # fmt: skip


def golden_file(task: str) -> Path:
    return DATA / f"golden_{task}.json"


def run_task_grid(task: str, work: Path) -> list[dict[str, Any]]:
    """Run the task's fixed grid into ``work`` (results and a fresh cache); its rows' compared fields, sorted."""
    from bench.results import read_rows

    grid, out = GRIDS[task], work / "out"
    run_bench([*grid["args"], "--out", str(out), "--cache-dir", str(work / "cache")])
    rows = []
    for r in read_rows([out]).rows:
        assert r["status"] == "ok", r.get("error")
        assert r["task"] == task
        rows.append({k: r[k] for k in grid["fields"]})  # a field missing from the rows is a failure too
    return sorted(rows, key=lambda r: tuple(r[k] for k in grid["order"]))


def check(task: str, work: Path) -> None:
    golden = json.loads(golden_file(task).read_text())
    assert golden["fields"] == list(GRIDS[task]["fields"]), "the compared fields changed: regenerate on purpose"
    rows = run_task_grid(task, work)
    assert len(rows) == len(golden["rows"]) == GRIDS[task]["jobs"]
    for got, want in zip(rows, golden["rows"]):
        where = " ".join(f"{k}={want[k]}" for k in GRIDS[task]["order"])
        for k in GRIDS[task]["fields"]:
            assert got[k] == want[k], f"{task} {where}: {k} differs"


@pytest.mark.slow
def test_fixed_detection_grid_gives_the_recorded_rows(tmp_path: Path) -> None:
    check("detection", tmp_path)


@pytest.mark.slow
def test_fixed_discovery_grid_gives_the_recorded_rows(tmp_path: Path) -> None:
    check("discovery", tmp_path)


def write(task: str) -> None:
    with tempfile.TemporaryDirectory(prefix=f"golden-{task}-") as tmp:
        result = run_task_grid(task, Path(tmp))
    path = golden_file(task)
    path.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python -m bench", *GRIDS[task]["args"]])
    fields = json.dumps(list(GRIDS[task]["fields"]))
    lines = ",\n".join(json.dumps(r, sort_keys=True, allow_nan=False) for r in result)  # one row a line: readable diffs
    path.write_text(f'{{"command": {json.dumps(command)}, "fields": {fields}, "rows": [\n{lines}\n]}}\n')
    print(f"wrote {len(result)} rows to {path}")


if __name__ == "__main__" and sys.argv[1:2] == ["--write"]:
    for name in sys.argv[2:] or list(GRIDS):
        if name not in GRIDS:
            sys.exit(f"unknown task {name!r}: one of {', '.join(GRIDS)}")
        write(name)
