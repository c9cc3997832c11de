"""Every registered method runs on REAL images: the partial MVTec AD ``screw`` category in ``../shared/data``.

One ``bench run`` of all registered methods (registry-parametrised: a new method file is included without
editing this file) on the real folder layout through the ``mvtec_ad`` adapter: 1024 × 1024 grayscale PNGs
(converted to RGB), 264 train/good images, 5 defect types with 17–21 images each. Random-init ResNet-18, so the
accuracies carry no meaning (see the README on random weights): the test checks that each method runs end to
end without error and writes a complete row. Schedules are shortened (``CHEAP``) and the coreset is 1 % so the
module stays around two minutes. Skipped, with the reason shown, when the real images are absent
(``BENCH_SHARED_DATA`` or ``../shared/data``). Methods that classify defect regions (``region-*``: they need masks,
which the subset does not hold) run in a second ``bench run`` on the same images under ``--protocol mvtec-fs``, with
the MVTec-FS polygons of ``../shared/data/mvtec_fs``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.cli import main
from bench.method import METHODS
from bench.methods import import_all
from bench.results import read_rows

import_all()

SHOTS = 2  # the smallest shot count at which every trained method takes fine-tuning steps
CHEAP = {
    "max_episodes": 1,  # pretraining episodes (paper: up to 1000)
    "contrastive-maml.max_episodes": 2,  # MAML: one meta-batch of one task (a support and a query episode)
    "episode_groups": 3,  # support groups per pseudo episode (paper 9)
    "finetune_passes": "[0, 1]",  # contrastive passes at 1 and 2 shots (paper 0/45)
    "finetune_steps": 3,  # RelationNet full-batch steps (paper 45)
    "epochs": 2,  # direct (paper 100)
    "maml_tasks": 1,
}
COUNTS = {"manipulated_front": 20, "scratch_head": 21, "scratch_neck": 20, "thread_side": 19, "thread_top": 17}


@pytest.fixture(scope="module")
def rows(shared_screw: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """One run of every registered method on the real screw subset (features and bank shared by all)."""
    work = tmp_path_factory.mktemp("real-screw")
    names = sorted(n for n in METHODS.names() if not METHODS.get(n).obj.cls.takes_masks)
    regions = sorted(n for n in METHODS.names() if METHODS.get(n).obj.cls.takes_masks)
    opts = [a for k, v in CHEAP.items() for a in ("--set", f"{k}={v}")]
    common = ["--dataset", "mvtec_ad", "--data-root", str(shared_screw), "--categories", "screw", "--shots", str(SHOTS),
              "--seeds", "1", "--backbone", "resnet18", "--weights", "random", "--coreset-ratio", "0.01",
              "--no-progress", "--cache-dir", str(work / "cache")]  # fmt: skip
    code = main(["run", "--method", *names, *common, "--out", str(work / "out"), *opts])
    fs = shared_screw.parent / "mvtec_fs" / "CONFIG"
    code_fs = main(["run", "--method", *regions, *common, "--out", str(work / "fs"), "--protocol", "mvtec-fs",
                    "--mvtec-fs", str(fs)]) if regions else 0  # fmt: skip
    found = {r["method"]: r for r in read_rows([work / "out" / "results.jsonl", *([work / "fs" / "results.jsonl"] if regions else [])]).rows}
    shutil.rmtree(work, ignore_errors=True)
    assert code == 0 and code_fs == 0, {m: r.get("error") for m, r in found.items() if r["status"] != "ok"}
    return found


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.parametrize("name", sorted(METHODS.names()))
def test_method_runs_on_the_real_screw_subset(rows: dict[str, dict], name: str) -> None:
    row = rows.get(name)
    assert row is not None, f"{name}: no result row"
    assert row["status"] == "ok", row.get("error")
    assert row["dataset"] == "mvtec_ad" and row["category"] == "screw" and row["shots"] == SHOTS
    if row["unit"] == "region":  # MVTec-FS: every valid.csv instance of the images we hold is a query
        assert row["protocol"] == "mvtec_fs" and row["n_queries"] == 52 == len(row["y_pred"])
        assert row["localisation"] == {"queries": "gt", "support": "gt"}
        return
    assert row["class_names"] == sorted(COUNTS)
    assert row["n_queries"] == sum(COUNTS.values()) - SHOTS * len(COUNTS) == len(row["y_pred"])
    assert 0.0 <= row["accuracy"] <= 1.0 and row["chance"] == pytest.approx(0.2)
    assert row["weights"]["weights"] == "random" and row["weights"]["pretrained"] is False
