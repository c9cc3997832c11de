"""The Dask path: a grid run on a local ``distributed`` cluster equals the serial run.

The cluster is real (a scheduler and two worker processes, one thread each, on the loopback interface);
``bench run --jobs 2 --backend dask --scheduler <address>`` sends its groups (classification: one per
(category, seed, method)) to it through joblib's Dask backend, the workers write the rows and the cache themselves
(see docs/distributed.md).
Skipped with a reason when the optional dependency ``distributed`` is not installed.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed", reason="the optional dependency `distributed` is not installed (pip install -e '.[dask]')")

from bench.cli import main  # noqa: E402
from bench.results import read_rows  # noqa: E402

TINY = ["--dataset", "synthetic-tiny", "--backbone", "resnet18", "--weights", "random", "--no-progress"]
# Training-free methods (exactly reproducible in any process), both categories, 2 seeds: 8 groups, 16 jobs.
GRID = ["--method", "protonet", "protonet-residual", "--shots", "1,3", "--seeds", "1-2"]


@pytest.fixture(scope="module")
def cluster():  # noqa: ANN201
    with distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1", dashboard_address=None, silence_logs=logging.ERROR
    ) as c:
        yield c


def _fields(rows: list[dict]) -> dict[str, tuple]:
    return {r["key"]: (r["method"], r["category"], r["shots"], r["seed"], r["y_true"], r["y_pred"], r["accuracy"]) for r in rows}


def test_dask_cluster_run_equals_serial(cluster, tiny_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    common = [*TINY, "--data-root", str(tiny_root), *GRID]
    assert main(["run", *common, "--out", str(tmp_path / "serial"), "--cache-dir", str(tmp_path / "cache-serial")]) == 0
    serial = read_rows([tmp_path / "serial" / "results.jsonl"]).rows
    assert len(serial) == 16 and all(r["status"] == "ok" for r in serial)

    address = cluster.scheduler_address
    assert address.startswith("tcp://127.0.0.1:")
    dask_out, dask_cache = tmp_path / "dask", tmp_path / "cache-dask"
    args = ["run", *common, "--jobs", "2", "--backend", "dask", "--scheduler", address, "--out", str(dask_out), "--cache-dir", str(dask_cache)]
    code = main(args)
    out = capsys.readouterr().out
    assert code == 0, out
    res = read_rows([dask_out / "results.jsonl"])
    assert res.skipped_lines == 0
    rows = res.rows
    assert _fields(rows) == _fields(serial)
    assert len({r["key"] for r in rows}) == len(rows) == 16
    # the rows were written by the cluster's workers, each with its share of this machine's torch threads
    import torch

    assert {r["env"]["torch_threads"] for r in rows} == {max(1, torch.get_num_threads() // 2)}
    # ... into this run's cache (the workers were started before it and know nothing of --cache-dir)
    assert any((dask_cache / "features").rglob("*.npy"))
    assert any((dask_cache / "banks").rglob("*.npy"))

    # resume through the cluster: nothing left to do
    assert main(args) == 0
    assert "16 of 16 jobs already finished" in capsys.readouterr().out
    assert len(read_rows([dask_out / "results.jsonl"]).rows) == 16


def test_unreachable_scheduler_is_a_clear_error(tiny_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        code = main(["run", *TINY, "--data-root", str(tiny_root), "--method", "protonet", "--shots", "1", "--seeds", "1-2",
                     "--jobs", "2", "--backend", "dask", "--scheduler", "tcp://127.0.0.1:9", "--out", str(tmp_path / "o"),
                     "--cache-dir", str(tmp_path / "cache")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot connect to the Dask scheduler tcp://127.0.0.1:9" in err and "--scheduler" in err


def test_local_cluster_run_from_the_command_line_is_quiet(tiny_root: Path, tmp_path: Path) -> None:
    """``--backend dask`` without ``--scheduler`` starts a local cluster itself; Dask's INFO logging (its
    ``distributed`` logger is at INFO: 45 lines of cluster start-up and shutdown) stays out of stderr unless -v."""
    args = [sys.executable, "-m", "bench", "run", *TINY, "--data-root", str(tiny_root), "--method", "protonet",
            "--categories", "tile", "--shots", "1", "--seeds", "1-2", "--jobs", "2", "--backend", "dask",
            "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(args, cwd=repo, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_rows([tmp_path / "o" / "results.jsonl"]).rows
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    assert "INFO" not in proc.stderr, proc.stderr[-3000:]


def test_dask_workers_pretrain_before_the_jobs(cluster, tiny_root: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """The preparation stage goes through the cluster too: each (method, seed) model is pretrained once by a Dask
    worker before the jobs, which all load it from the cache; the predictions equal a serial run's with the same
    torch threads per process."""
    import torch

    threads = max(1, torch.get_num_threads() // 2)  # what each of the cluster's two workers gets
    small = ["max_episodes=2", "episode_groups=2", "episode_classes=5", "episode_queries=3", "finetune_passes=0,1"]
    common = [*TINY, "--data-root", str(tiny_root), "--method", "contrastive", "--categories", "tile", "--shots", "1,2",
              "--seeds", "1-2", *[a for s in small for a in ("--set", s)]]  # fmt: skip
    assert main(["run", *common, "--threads", str(threads), "--out", str(tmp_path / "serial"),
                 "--cache-dir", str(tmp_path / "cache-serial")]) == 0  # fmt: skip
    assert main(["run", *common, "--jobs", "2", "--backend", "dask", "--scheduler", cluster.scheduler_address,
                 "--out", str(tmp_path / "dask"), "--cache-dir", str(tmp_path / "cache-dask")]) == 0  # fmt: skip
    order = lambda r: (r["seed"], r["shots"])  # noqa: E731
    serial = sorted(read_rows([tmp_path / "serial" / "results.jsonl"]).rows, key=order)
    dask_rows = sorted(read_rows([tmp_path / "dask" / "results.jsonl"]).rows, key=order)
    assert len(dask_rows) == 4 and all(r["status"] == "ok" for r in dask_rows)
    assert all(r["method_info"]["pretrained_from_cache"] for r in dask_rows)
    assert len(list((tmp_path / "cache-dask" / "pretrained").glob("*.pt"))) == 2  # one model per seed
    assert [r["y_pred"] for r in dask_rows] == [r["y_pred"] for r in serial]
