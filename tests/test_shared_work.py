"""Work that does not depend on the seed is done once (issue #23): the memory bank shared by every run seed
(``--bank-seed``), the nearest-neighbour search, ``--threads auto``, the pretraining's stop episode in the rows, and the
prepared GPU check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import cli

TINY = ["--dataset", "synthetic-tiny", "--categories", "screw", "--shots", "1", "--seeds", "1,2", "--weights", "random",
        "--backbone", "resnet18", "--threads", "1", "--no-progress"]  # fmt: skip


def rows_of(out: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """A run's rows by (method, seed)."""
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    return {(r["method"], r["seed"]): r for r in rows}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One cache for the module: its runs share the tiny category's features (computed once)."""
    return str(tmp_path_factory.mktemp("shared-cache"))


@pytest.fixture(scope="module")
def bank_runs(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None, cache: str) -> dict[str, dict]:
    """The same tiny grid (a residual and a raw method, seeds 1 and 2) with the default bank seed, then with
    ``--bank-seed per-run-seed``."""
    from bench.cli import main

    work = tmp_path_factory.mktemp("bank-runs")
    runs = {}
    for name, extra in (("default", []), ("per-run-seed", ["--bank-seed", "per-run-seed"])):
        code = main(["run", "--method", "protonet-residual", "knn", *TINY, *extra, "--out", str(work / name),
                     "--cache-dir", cache])  # fmt: skip
        assert code == 0
        runs[name] = rows_of(work / name)
    return runs


def test_every_seed_reads_one_bank_by_default(bank_runs: dict[str, dict]) -> None:
    rows = bank_runs["default"]
    assert {r["bank_seed"] for r in rows.values()} == {1}
    assert {r["features"]["bank"] for r in rows.values()} == {"seed 1"}
    seed2 = rows[("protonet-residual", 2)]["cache"]
    # built by seed 1's job, read by seed 2's: no second coreset, no second nearest-neighbour search
    assert seed2["bank"]["misses"] == 0 and seed2["bank"]["hits"] >= 1
    assert seed2["nn"]["misses"] == 0 and seed2["nn"]["hits"] > 0


def test_a_bank_per_run_seed_stays_an_option(bank_runs: dict[str, dict]) -> None:
    rows = bank_runs["per-run-seed"]
    assert rows[("protonet-residual", 2)]["bank_seed"] == 2
    assert {r["features"]["bank"] for r in rows.values()} == {"per-run-seed"}
    assert rows[("protonet-residual", 2)]["cache"]["bank"]["misses"] == 1  # its own coreset (seed 1's was built)


def test_perf_grid_from_a_run_folder_prints_its_figures(
    bank_runs: dict[str, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``bench perf grid --from FOLDER`` summarises a run's rows (no run); a folder without rows is one error line on
    stderr and exit 2."""
    from bench.cli import main

    rows = list(bank_runs["default"].values())
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["perf", "grid", "--from", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{len(rows)}/{len(rows)} jobs ok; methods ['knn', 'protonet-residual']" in out
    seconds = {s: sum(r["timing"]["total"] for r in rows if r["seed"] == s) for s in (1, 2)}
    assert f"per seed (s): 1 {seconds[1]:.1f}, 2 {seconds[2]:.1f}" in out
    bank = [sum(r["cache"]["bank"][k] for r in rows if "bank" in r["cache"]) for k in ("hits", "misses")]
    assert f"bank {100 * bank[0] / sum(bank):.0f}% ({bank[0]} hits / {bank[1]} misses)" in out

    for folder in (tmp_path / "missing", tmp_path / "empty"):
        if folder.name == "empty":
            folder.mkdir()
            (folder / "results.jsonl").write_text("")
        assert main(["perf", "grid", "--from", str(folder)]) == 2
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith("error: ")
        assert "pass the --out folder" in err


def test_job_keys_change_only_where_the_bank_changed(bank_runs: dict[str, dict]) -> None:
    """Seed 1 (bank seed 1 either way) and methods that read no bank keep the keys they had before --bank-seed
    (results folders resume); a residual job of seed 2 reads another bank and never reuses the other's row."""
    shared, per_seed = bank_runs["default"], bank_runs["per-run-seed"]
    for method, seed in shared:
        same = seed == 1 or method == "knn"
        assert (shared[(method, seed)]["key"] == per_seed[(method, seed)]["key"]) is same, (method, seed)
    assert shared[("protonet-residual", 1)]["accuracy"] == per_seed[("protonet-residual", 1)]["accuracy"]
    assert shared[("protonet-residual", 1)]["y_pred"] == per_seed[("protonet-residual", 1)]["y_pred"]


def test_pretraining_key_holds_the_bank_seed() -> None:
    """A pretrained model on residuals against another bank is another model: its cache key names the bank seed where
    it is not the run seed (and stays as it was where it is)."""
    from bench.method import TaskContext
    from bench.methods.contrastive import Contrastive

    def key(seed: int, bank_seed: int | None) -> str:
        ctx = TaskContext(dataset="d", category="c", seed=seed, shots=1, train_paths=[], store_factory=_store,
                          bank_seed=bank_seed)  # fmt: skip
        return Contrastive(Contrastive.Config(features="residual"), ctx).pretrain_key(_Source())

    assert key(1, None) == key(1, 1)
    assert key(2, None) == key(2, 2) != key(2, 1)


class _Source:
    def identity(self) -> dict[str, str]:
        return {"pseudo": "fixed"}


class _Config:
    def key(self) -> str:
        return "features-key"


class _Store:
    config = _Config()


def _store() -> Any:
    return _Store()


@pytest.mark.parametrize("value", ["x", "-1", "1.5"])
def test_a_bad_bank_seed_is_one_error_line(capsys: pytest.CaptureFixture[str], value: str) -> None:
    code, _, err = cli(capsys, "run", "--method", "protonet-residual", *TINY, "--bank-seed", value, "--out", "/nonexistent")
    assert code == 2
    assert err.strip().count("\n") == 0 and "--bank-seed" in err and "per-run-seed" in err, err


def test_the_blocked_search_of_the_nn_benchmark_is_exact() -> None:
    """``benchmarks/nn_search.py`` times faiss's exact search against the same search written as blocked GEMMs; the
    comparison only means something if the blocked one finds the same rows (blocks smaller than both sets here, so
    the running argmin crosses bank blocks and query blocks)."""
    import importlib.util

    import numpy as np

    from bench.features.knn import MemoryBank, brute_force_nearest

    spec = importlib.util.spec_from_file_location("nn_search", Path(__file__).parents[1] / "benchmarks" / "nn_search.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    rng = np.random.default_rng(3)
    bank = rng.standard_normal((1000, 24), dtype=np.float32)
    queries = np.concatenate([rng.standard_normal((300, 24), dtype=np.float32), bank[[999, 517, 0]] + 1e-3])
    dist, idx = mod.torch_blocked_nearest(bank, queries, query_block=64, bank_block=96)
    ref_d, ref_i = brute_force_nearest(bank, queries)
    assert (idx == ref_i).all() and (idx == MemoryBank(bank).nearest(queries)[1]).all()
    assert np.allclose(dist[:300], ref_d[:300], rtol=1e-4)
    assert np.allclose(dist[300:], ref_d[300:], atol=1e-2)  # float32 cancellation near zero, as in faiss
    assert list(idx[-3:]) == [999, 517, 0]  # the last bank block and the first


def test_the_relation_benchmark_compares_the_same_update() -> None:
    """``python -m bench perf relation`` runs both implementations of RelationNet's pretraining update on the same
    inputs (tiny sizes here) and prints time, peak memory and losses that agree."""
    import re
    import subprocess
    import sys

    script = Path(__file__).parents[1] / "benchmarks" / "relation_episode.py"
    cmd = [sys.executable, str(script), "--dim", "6", "--grid", "3", "--repeats", "1", "--threads", "1"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300).stdout
    losses = [float(v) for v in re.findall(r"last loss (\S+)", out)]
    assert len(losses) == 2 and abs(losses[0] - losses[1]) < 1e-5, out
    assert "810 pairs" in out and "peak memory" in out, out


@pytest.mark.parametrize(("cores", "load", "workers", "per_worker"), [
    (8, 0.2, 1, 8),   # a quiet machine: every core
    (8, 3.4, 1, 5),   # three cores busy elsewhere
    (8, 3.4, 2, 2),   # the free five split over two workers, never more than the free cores
    (8, 20.0, 1, 1),  # overloaded: one thread, not eight waiting on each other
    (2, 0.0, 4, 1),   # more workers than cores: one each
])  # fmt: skip
def test_auto_threads_uses_the_free_cores(monkeypatch: pytest.MonkeyPatch, cores: int, load: float, workers: int,
                                          per_worker: int) -> None:
    import os

    from bench.run import workers as w

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    per, why = w.auto_threads(workers)
    assert per == per_worker
    assert f"of {cores}" in why and f"{per} torch thread" in why
    assert w.resolve_threads("auto", workers)[0] == per_worker * workers  # what worker_pool splits
    assert w.resolve_threads(3, workers) == (3, "")


def test_a_run_with_auto_threads_records_the_choice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str], cache: str) -> None:
    import os

    import torch

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(os, "getloadavg", lambda: (1.2, 1.0, 1.0))
    old = torch.get_num_threads()
    try:
        args = list(TINY)
        args[args.index("--threads") + 1] = "auto"
        code, out, _ = cli(capsys, "run", "--method", "knn", *args, "--seeds", "1", "--out", str(tmp_path / "r"),
                           "--cache-dir", cache)  # fmt: skip
        assert code == 0
        assert "--threads auto: 3 free core(s) of 4" in out
        rows = list(rows_of(tmp_path / "r").values())
        assert rows and all(r["env"]["torch_threads"] == 3 and r["threads"] == "auto" for r in rows)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("value", ["0", "two", "-2"])
def test_a_bad_thread_count_is_one_error_line(capsys: pytest.CaptureFixture[str], value: str) -> None:
    code, _, err = cli(capsys, "run", "--method", "knn", "--dataset", "synthetic-tiny", "--threads", value,
                       "--out", "/nonexistent")  # fmt: skip
    assert code == 2 and err.strip().count("\n") == 0 and "--threads" in err and "auto" in err, err


def _loop_stop(accuracies: list[float], max_episodes: int) -> dict[str, Any]:
    """``pretrain_stop`` of :func:`pretrain_loop` run with a step whose batch accuracies are ``accuracies``."""
    from types import SimpleNamespace

    import numpy as np
    import torch

    from bench.methods._pretrain import pretrain_loop, pretrain_stop

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method = SimpleNamespace(config=SimpleNamespace(max_episodes=max_episodes, stop_accuracy=0.4),
                             ctx=SimpleNamespace(rng=lambda stream: np.random.default_rng(0)))  # fmt: skip
    source = SimpleNamespace(episode=lambda rng: (None, None), seconds=0.0)
    acc = iter(accuracies)
    info = pretrain_loop(method, model, opt, lambda batch: (model.weight.sum() ** 2, next(acc)), source)  # type: ignore[arg-type]
    return pretrain_stop(info)


def test_the_stop_episode_is_where_the_rule_fired_or_the_cap() -> None:
    assert _loop_stop([0.1, 0.3, 0.5, 0.9], 10) == {"pretrain_stop_episode": 3, "pretrain_stopped_by": "rule"}
    assert _loop_stop([0.1, 0.2, 0.3], 3) == {"pretrain_stop_episode": 3, "pretrain_stopped_by": "cap"}


def test_every_pretrained_row_records_where_pretraining_stopped(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                one_torch_thread: None, cache: str) -> None:
    """The 1-shot job pretrains (the cap: the rule cannot fire at stop_accuracy 1); the 2-shot job loads that model
    from the cache and says where it stopped too; a method without pretraining says nothing."""
    args = list(TINY)
    args[args.index("--seeds") + 1] = "1"
    args[args.index("--shots") + 1] = "1,2"
    code, _, _ = cli(capsys, "run", "--method", "contrastive", "contrastive-raw", *args, "--set", "max_episodes=3",
                     "--set", "stop_accuracy=1.0", "--set", "episode_groups=2", "--set", "episode_classes=3",
                     "--set", "episode_queries=2", "--set", "finetune_passes=0,1", "--out", str(tmp_path / "r"),
                     "--cache-dir", cache)  # fmt: skip
    assert code == 0
    rows = [json.loads(line) for line in (tmp_path / "r" / "results.jsonl").read_text().splitlines()]
    info = {(r["method"], r["shots"]): r["method_info"] for r in rows}
    for shots, cached in ((1, False), (2, True)):
        got = info[("contrastive", shots)]
        assert (got["pretrain_stop_episode"], got["pretrain_stopped_by"], got["pretrained_from_cache"]) == (3, "cap", cached)
    assert info[("contrastive-raw", 1)]["pretrain_stop_episode"] is None


GPU_CHECK = Path(__file__).parents[1] / "benchmarks" / "gpu_check.sh"


def test_the_gpu_check_is_valid_bash() -> None:
    import subprocess

    proc = subprocess.run(["bash", "-n", str(GPU_CHECK)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_every_command_of_the_gpu_check_parses(tmp_path: Path) -> None:
    """The GPU check is run rarely, on a machine lent for minutes: a typo in a method name or an option must show up
    here, not there. Its dry mode prints each step's command; each ``bench run`` is parsed by the harness's own parser
    and checked as a run's configuration (methods, ``--set`` options; ``--device cuda`` checked as ``cpu``, since CI
    has no GPU), and each test it names exists."""
    import os
    import re
    import shlex
    import subprocess

    from bench.cli.main import build_parser
    from bench.cli.run import build_config

    env = {**os.environ, "GPU_CHECK_DRY": "1", "OUT": str(tmp_path), "PYTHON": "python"}
    proc = subprocess.run(["bash", str(GPU_CHECK)], capture_output=True, text=True, env=env, cwd=GPU_CHECK.parents[1])
    assert proc.returncode == 0, proc.stderr
    steps = dict(re.findall(r"^== ([\w-]+): (.*)$", proc.stdout, re.M))
    assert {"grid-cuda", "grid-cpu", "detection-cuda", "discovery-cuda", "tests-cuda"} <= set(steps)
    for name, command in steps.items():
        argv = shlex.split(command)
        assert argv[:2] == ["python", "-m"], command
        if argv[2] == "bench":
            bench_args = ["cpu" if a == "cuda" else a for a in argv[3:]]
            assert ("cuda" in argv) == name.endswith("-cuda"), name
            cfg = build_config(build_parser("run").parse_args(bench_args))
            assert cfg.method_configs, name  # every method known to its task, every --set option used
        else:
            assert argv[2] == "pytest", command
            for target in [a for a in argv[3:] if a.startswith("tests/")]:
                file, _, test = target.partition("::")
                path = GPU_CHECK.parents[1] / file
                assert path.is_file(), target
                assert not test or f"def {test}(" in path.read_text(), target


def test_unsupervised_anomaly_clustering_is_computed_once_for_every_seed(tmp_path: Path, one_torch_thread: None,
                                                                         capsys: pytest.CaptureFixture[str], cache: str) -> None:
    """Its patch scores depend on the set, not on the seed (every image compared): seed 2 reads seed 1's and gives
    the same clusters; with a seeded subset of references (max_refs) each seed computes its own."""
    args = ["run", "--task", "discovery", "--dataset", "synthetic-tiny", "--categories", "screw", "--seeds", "1,2",
            "--weights", "random", "--backbone", "resnet18", "--threads", "1", "--no-progress",
            "--cache-dir", cache]  # fmt: skip
    assert cli(capsys, *args, "--method", "anomaly-clustering", "--out", str(tmp_path / "all"))[0] == 0
    rows = rows_of(tmp_path / "all")
    one, two = rows[("anomaly-clustering", 1)], rows[("anomaly-clustering", 2)]
    assert (one["method_info"]["scores_from_cache"], two["method_info"]["scores_from_cache"]) == (False, True)
    assert one["clusters"] == two["clusters"]
    assert cli(capsys, *args, "--method", "anomaly-clustering", "--set", "max_refs=2", "--out", str(tmp_path / "some"))[0] == 0
    assert {r["method_info"]["scores_from_cache"] for r in rows_of(tmp_path / "some").values()} == {None}


def test_direct_reads_its_pooled_features_from_the_cache_in_a_new_process(tmp_path: Path, one_torch_thread: None,
                                                                         capsys: pytest.CaptureFixture[str], cache: str) -> None:
    """A second run (here: the process's memory emptied, as in a worker or a resumed run) computes no pooled feature
    and predicts exactly what the first did."""
    from bench.methods import direct

    args = list(TINY)
    args[args.index("--seeds") + 1] = "1"
    runs = {}
    for name in ("first", "second"):
        direct._POOLED_CACHE.clear()
        code, _, _ = cli(capsys, "run", "--method", "direct", *args, "--set", "epochs=2", "--out", str(tmp_path / name),
                         "--cache-dir", cache)  # fmt: skip
        assert code == 0
        runs[name] = rows_of(tmp_path / name)[("direct", 1)]
    first, second = runs["first"]["train_log"]["pooled"], runs["second"]["train_log"]["pooled"]
    assert first["computed"] > 0 and first["disk"] == 0
    assert second["computed"] == 0 and second["disk"] == first["computed"]
    assert runs["first"]["y_pred"] == runs["second"]["y_pred"]
    assert runs["first"]["accuracy"] == runs["second"]["accuracy"]


@pytest.mark.slow
def test_a_parallel_run_pretrains_each_model_once_before_the_jobs(tmp_path: Path) -> None:
    """--jobs 2: the shot-independent pretrainings (one per method and seed) run first, spread over the workers, so
    every job loads its model from the cache; the predictions equal a serial run's, which pretrains inside the
    first shot's job (each run with its own cache)."""
    from bench.cli import main

    small = ["max_episodes=2", "episode_groups=2", "episode_classes=5", "episode_queries=3", "finetune_passes=0,1",
             "finetune_steps=2"]  # fmt: skip
    common = ["run", "--method", "contrastive", "relationnet-residual-pretrain", "--dataset", "synthetic-tiny",
              "--categories", "screw", "--shots", "1,2", "--seeds", "1,2", "--weights", "random", "--backbone",
              "resnet18", "--no-progress", *[a for s in small for a in ("--set", s)]]  # fmt: skip
    assert main([*common, "--jobs", "2", "--threads", "2", "--out", str(tmp_path / "par"), "--cache-dir", str(tmp_path / "c1")]) == 0
    assert main([*common, "--threads", "1", "--out", str(tmp_path / "ser"), "--cache-dir", str(tmp_path / "c2")]) == 0
    read = lambda name: sorted(  # noqa: E731
        (json.loads(line) for line in (tmp_path / name / "results.jsonl").read_text().splitlines()),
        key=lambda r: (r["method"], r["seed"], r["shots"]))
    par, ser = read("par"), read("ser")
    assert len(par) == len(ser) == 8 and all(r["status"] == "ok" for r in par + ser)
    assert all(r["method_info"]["pretrained_from_cache"] for r in par)  # the stage pretrained all four models
    assert sum(not r["method_info"]["pretrained_from_cache"] for r in ser) == 4  # one per (method, seed)
    assert {r["env"]["torch_threads"] for r in par + ser} == {1}
    assert [r["y_pred"] for r in par] == [r["y_pred"] for r in ser]
    assert [r["train_log"]["pretrain"]["loss"] for r in par] == [r["train_log"]["pretrain"]["loss"] for r in ser]
