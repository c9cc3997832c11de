"""Never lose work: real ``python -m bench run`` subprocesses killed with SIGKILL / SIGINT, then resumed.

Every test compares the final ``results.jsonl`` with one uninterrupted serial run of the same grid on the
deterministic fields (job key, method/category/shots/seed, class names, y_true, y_pred, accuracy), and checks
that no row was lost (the complete lines written before a kill are still the first lines of the file, byte
for byte), duplicated (one ``ok`` row per key) or half-written (every line parses, except at most one line
cut by each kill, which readers skip), and that no cache entry is corrupt (every ``.npy`` / ``.json`` entry
loads completely; a killed writer leaves at most ``.tmp-*`` files, which are never read).

The grids are small (synthetic-tiny, resnet18 with random weights, training-free methods so that the
predictions are exactly reproducible; one test with the trained ``direct`` baseline). Each subprocess costs
~8 s of start-up (imports, backbone) on an idle 2-core machine, so the file runs about twenty of them: about
3-4 minutes there, and much longer on a machine busy with other work.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest

from bench.cache import TMP_PREFIX, load_npy
from bench.results import ResultsStore, read_rows

REPO = Path(__file__).resolve().parents[1]
BASE = ["--dataset", "synthetic-tiny", "--backbone", "resnet18", "--weights", "random", "--no-progress"]
# 2 training-free methods (one uses the memory bank + nearest-neighbour cache) × 3 shots × 2 seeds on one
# category: 12 jobs in 2 groups.
GRID = ["--method", "protonet", "protonet-residual", "--categories", "tile", "--shots", "1-3", "--seeds", "1-2"]
GRID_JOBS = 12
# A trained method, two seeds (its random backbone depends on the seed: the per-process feature memo must too).
GRID_DIRECT = ["--method", "protonet", "direct", "--categories", "tile", "--shots", "1-3", "--seeds", "1-2"]
RUN_TIMEOUT = 420  # seconds for one subprocess on a loaded machine (normally 10-30 s)


# --------------------------------------------------------------------------------------------- helpers
def bench_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", BENCH_CACHE=str(cache), PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="0")
    return env


def run_args(root: Path, out: Path, cache: Path, grid: Sequence[str] = GRID, extra: Sequence[str] = ()) -> list[str]:
    return [sys.executable, "-m", "bench", "run", *BASE, "--data-root", str(root), *grid,
            "--out", str(out), "--cache-dir", str(cache), *extra]  # fmt: skip


def run_to_end(args: list[str], cache: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=REPO, env={**bench_env(cache), **(env or {})}, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def start(args: list[str], cache: Path, logs: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a run in its own session (so a Ctrl-C can be sent to its whole process group).

    SIGINT is reset to its default in the child, as in a terminal: pytest started as a background job of a shell
    without job control (``cmd &`` in a script) inherits SIGINT ignored, and so would the run.
    """
    logs.mkdir(parents=True, exist_ok=True)
    n = len(list(logs.glob("*.out")))
    return subprocess.Popen(
        args, cwd=REPO, env={**bench_env(cache), **(env or {})}, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        stdout=(logs / f"{n}.out").open("wb"), stderr=(logs / f"{n}.err").open("wb"),
    )  # fmt: skip


def complete_lines(path: Path) -> list[bytes]:
    """The newline-terminated lines of ``path`` (a line cut by a kill is not one of them)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    return data[: data.rfind(b"\n") + 1].splitlines(keepends=True)


def plugin_env(gate: Path) -> dict[str, str]:
    """Environment for runs using tests/gated_plugin.py (``gated-protonet`` waits for the file ``gate``)."""
    path = os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "BENCH_TEST_GATE": str(gate)}


def with_plugin(args: list[str]) -> None:
    """Insert ``--plugin gated_plugin`` before the command of a ``run_args`` list (in place)."""
    i = args.index("-m") + 2
    args[i:i] = ["--plugin", "gated_plugin"]


def n_rows(path: Path) -> int:
    return len(complete_lines(path))


def wait_until(cond: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, timeout: float = RUN_TIMEOUT) -> None:
    """Poll ``cond`` every 10 ms; fail if the run ends (or the time runs out) before it holds."""
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}: cannot kill it at that moment")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def sigkill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)  # the main process only, like `kill -9 PID` or the OOM killer
    proc.wait(timeout=60)


def deterministic(rows: list[dict]) -> dict[str, tuple]:
    """key -> the fields that must not depend on interruptions, workers or order."""
    return {
        r["key"]: (r["method"], r["category"], r["shots"], r["seed"], tuple(r["class_names"]), tuple(r["y_true"]),
                   tuple(r["y_pred"]), r["accuracy"], r["episode"]["hash"])
        for r in rows
    }  # fmt: skip


def check_results(
    out: Path, reference: dict[str, tuple], before: Sequence[bytes] = (), max_cut_lines: int = 0, gated: int = 0
) -> list[dict]:
    """The final results equal the reference; nothing lost, duplicated or half-written. ``gated``: the number of
    ``gated-protonet`` rows expected besides the reference's, each predicting as protonet on its episode."""
    path = out / "results.jsonl"
    res = read_rows([path])
    assert res.skipped_lines <= max_cut_lines, f"unreadable lines: {res.skipped_detail}"
    ok = [r for r in res.rows if r.get("status") == "ok"]
    errors = [r.get("error") for r in res.rows if r.get("status") != "ok"]
    assert not errors, errors
    keys = [r["key"] for r in ok]
    assert len(keys) == len(set(keys)), "a job was stored twice"
    got_gated = deterministic([r for r in ok if r["method"] == "gated-protonet"])
    assert len(got_gated) == gated, f"{len(got_gated)} gated-protonet rows, expected {gated}"
    proto = {(v[2], v[3]): v[4:] for v in reference.values() if v[0] == "protonet"}
    assert all(v[4:] == proto[(v[2], v[3])] for v in got_gated.values()), "gated-protonet predicts as protonet"
    got = deterministic([r for r in ok if r["method"] != "gated-protonet"])
    assert set(got) == set(reference), f"missing {set(reference) - set(got)}, unexpected {set(got) - set(reference)}"
    diff = {k: (got[k], reference[k]) for k in reference if got[k] != reference[k]}
    assert not diff, f"results differ from the uninterrupted run: {diff}"
    coverage = {(m, c, s, seed) for m, c, s, seed, *_ in got.values()}
    assert coverage == {(m, c, s, seed) for m, c, s, seed, *_ in reference.values()}
    final = complete_lines(path)
    assert final[: len(before)] == list(before), "rows written before the kill were changed or lost"
    return ok


def check_cache(cache: Path) -> None:
    """Every cache entry loads completely (a killed writer may only leave .tmp-* files, never read)."""
    n = 0
    for p in cache.rglob("*"):
        if not p.is_file() or p.name.startswith(TMP_PREFIX) or p.name.startswith("."):
            continue
        if p.suffix == ".npy":
            assert load_npy(p, mmap=False) is not None, f"corrupt cache entry {p}"
            n += 1
        elif p.suffix == ".json":
            json.loads(p.read_text())
            n += 1
    assert n > 0, f"no cache entries under {cache}"


@pytest.fixture(scope="module")
def reference(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, tuple], Path]:
    """One uninterrupted serial run of GRID: its deterministic fields and its (warm) cache."""
    base = tmp_path_factory.mktemp("reference")
    run_to_end(run_args(tiny_root, base / "out", base / "cache"), base / "cache")
    rows = read_rows([base / "out" / "results.jsonl"]).rows
    assert len(rows) == GRID_JOBS and all(r["status"] == "ok" for r in rows)
    return deterministic(rows), base / "cache"


def warm_cache(reference: tuple[dict, Path], tmp_path: Path) -> Path:
    """A private copy of the reference run's cache (the runs after it only read it)."""
    dest = tmp_path / "cache"
    shutil.copytree(reference[1], dest)
    return dest


# --------------------------------------------------------------------------------------------- SIGKILL
def test_kill_during_feature_extraction(tiny_root: Path, reference: tuple[dict, Path], tmp_path: Path) -> None:
    """Cold cache: kill as soon as the first feature entries are on disk (no row yet), resume."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = run_args(tiny_root, out, cache)
    proc = start(args, cache, tmp_path / "logs")
    feats = cache / "features"
    wait_until(lambda: feats.is_dir() and any(feats.rglob("*.npy")), proc, "the first cached feature")
    sigkill(proc)
    before = complete_lines(out / "results.jsonl")
    assert len(before) < GRID_JOBS
    check_cache(cache)
    run_to_end(args, cache)
    check_results(out, reference[0], before, max_cut_lines=1)
    check_cache(cache)


def test_kill_at_several_moments_then_resume(tiny_root: Path, reference: tuple[dict, Path], tmp_path: Path) -> None:
    """Warm cache: kill right after the first row, then (resumed) mid-way, then resume to the end."""
    out, cache = tmp_path / "out", warm_cache(reference, tmp_path)
    results = out / "results.jsonl"
    args = run_args(tiny_root, out, cache)
    moments = [
        ("the first row", lambda n0: n_rows(results) >= 1),
        ("half of the rows", lambda n0: n_rows(results) >= GRID_JOBS // 2),
    ]
    for what, cond in moments:
        n0 = n_rows(results)
        proc = start(args, cache, tmp_path / "logs")
        wait_until(lambda: cond(n0), proc, what)
        sigkill(proc)
        before = complete_lines(results)
        assert n0 < len(before) < GRID_JOBS, (what, n0, len(before))
        check_results_partial(out, reference[0], before)
    proc = run_to_end(args, cache)
    assert f"resuming: {len(before)} of {GRID_JOBS} jobs already finished" in proc.stdout
    check_results(out, reference[0], before, max_cut_lines=len(moments))
    check_cache(cache)


def check_results_partial(out: Path, reference: dict[str, tuple], before: Sequence[bytes]) -> None:
    """After a kill: every complete row is a finished job equal to the reference, each at most once."""
    rows = [json.loads(line) for line in before]
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys))
    got = deterministic([r for r in rows if r["status"] == "ok"])
    assert all(got[k] == reference[k] for k in got)


def test_kill_resume_trained_method(tiny_root: Path, reference: tuple[dict, Path], tmp_path: Path) -> None:
    """A trained method (direct) killed between jobs resumes to the same predictions.

    Two seeds: the resumed process runs seed 2 without having run seed 1 first, so a per-process memo keyed
    without the seed-dependent random backbone would change seed 2's predictions (a bug this once had).
    """
    ref_out, cache = tmp_path / "ref", warm_cache(reference, tmp_path)
    run_to_end(run_args(tiny_root, ref_out, cache, GRID_DIRECT), cache)
    ref_rows = read_rows([ref_out / "results.jsonl"]).rows
    assert len(ref_rows) == 12 and all(r["status"] == "ok" for r in ref_rows)
    out = tmp_path / "out"
    args = run_args(tiny_root, out, cache, GRID_DIRECT)
    proc = start(args, cache, tmp_path / "logs")
    wait_until(lambda: any(json.loads(x)["method"] == "direct" for x in complete_lines(out / "results.jsonl")), proc, "a direct row")
    sigkill(proc)
    before = complete_lines(out / "results.jsonl")
    run_to_end(args, cache)
    check_results(out, deterministic(ref_rows), before, max_cut_lines=1)


def test_kill_parallel_run_worker_then_main(tiny_root: Path, reference: tuple[dict, Path], tmp_path: Path) -> None:
    """--jobs 2. (1) SIGKILL one worker process: the run stops with a clear message and exit 2. (2) Resume and
    SIGKILL the main process only, its workers busy: they exit by themselves. (3) Resume to the end serially (a grid
    started with --jobs 2 can be finished with any --jobs).

    GRID plus ``gated-protonet`` (tests/gated_plugin.py), whose jobs wait for a gate file opened only in (3): the
    run cannot finish before a kill, however fast the machine (CI, 2026-12-07: a warm resume wrote its last row
    before the main process was killed)."""
    psutil = pytest.importorskip("psutil")
    out, cache = tmp_path / "out", warm_cache(reference, tmp_path)
    results = out / "results.jsonl"
    gate = tmp_path / "gate"
    grid = [*GRID[:3], "gated-protonet", *GRID[3:]]
    args = run_args(tiny_root, out, cache, grid, extra=["--jobs", "2"])
    with_plugin(args)
    env = plugin_env(gate)
    logs = tmp_path / "logs"

    def loky_workers(proc: subprocess.Popen[bytes]) -> list:
        # Direct children only: a worker's own child (its `git rev-parse` for the row's code version, caught between
        # fork and exec) carries the worker's command line too (CI, 2026-12-07: three "workers", one of them git).
        # A child may exit between the listing and the read of its command line (CI, 2026-12-07: a git process).
        def cmdline(c: Any) -> str:
            try:
                return " ".join(c.cmdline())
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                return ""

        return [c for c in psutil.Process(proc.pid).children() if "popen_loky_posix" in cmdline(c)]

    proc = start(args, cache, logs, env)
    wait_until(lambda: n_rows(results) >= 1, proc, "the first row")
    workers = loky_workers(proc)
    assert len(workers) == 2, workers
    workers[0].kill()
    code = proc.wait(timeout=120)
    err = (logs / "0.err").read_text()
    assert code == 2, err[-3000:]
    assert "a worker process died" in err and "run the same command again to resume" in err and "Traceback" not in err
    before = complete_lines(results)
    assert not any(json.loads(x)["method"] == "gated-protonet" for x in before), "a gated job finished before its gate opened"
    check_results_partial(out, reference[0], before)

    n0 = len(before)
    proc = start(args, cache, logs, env)
    wait_until(lambda: len(loky_workers(proc)) == 2, proc, "two workers")
    wait_until(lambda: n_rows(results) >= GRID_JOBS, proc, "the rows of GRID's methods (the gated ones wait)")
    children = psutil.Process(proc.pid).children(recursive=True)  # loky workers and resource trackers
    sigkill(proc)
    gone, alive = psutil.wait_procs(children, timeout=20)
    for p in alive:
        p.kill()
    assert not alive, f"processes still running 20 s after their main process was killed: {alive}"
    assert complete_lines(results)[:n0] == before
    before = complete_lines(results)
    assert len(before) == GRID_JOBS

    gate.touch()
    run_to_end(args[: args.index("--jobs")], cache, env)
    check_results(out, reference[0], before, max_cut_lines=2, gated=GRID_JOBS // 2)


@pytest.mark.slow
def test_kill_at_random_moments(tiny_root: Path, reference: tuple[dict, Path], tmp_path: Path) -> None:
    """Cold cache, two SIGKILLs at random times (start-up, feature extraction, bank, jobs), then resume."""
    seed = int(os.environ.get("BENCH_KILL_SEED", "0")) or random.SystemRandom().randrange(1, 10**6)
    rng = random.Random(seed)
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = run_args(tiny_root, out, cache)
    before: list[bytes] = []
    delays = []
    for _ in range(2):
        proc = start(args, cache, tmp_path / "logs")
        delay = rng.uniform(3.0, 15.0)
        delays.append(round(delay, 2))
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            sigkill(proc)
        assert complete_lines(out / "results.jsonl")[: len(before)] == before, f"rows lost (BENCH_KILL_SEED={seed})"
        before = complete_lines(out / "results.jsonl")
        check_cache(cache) if (cache / "features").exists() else None
    run_to_end(args, cache)
    print(f"kill delays {delays} s (BENCH_KILL_SEED={seed})")
    check_results(out, reference[0], before, max_cut_lines=2)
    check_cache(cache)


# --------------------------------------------------------------------------------------------- Ctrl-C
def test_loky_resource_tracker_is_quiet_about_what_an_interrupt_leaves() -> None:
    """After a Ctrl-C, loky's resource tracker unlinks what the terminated workers left registered and warned
    "leaked semlock objects" (CI, 2026-12-06, after a run that stopped as it should). The tracker started by
    bench.run.workers.sigint_held has its warnings off; a tracker started without it still warns (the control)."""
    code = (
        "import sys\n"
        "from joblib.externals.loky.backend import resource_tracker as r\n"
        "if sys.argv[1] == 'bench':\n"
        "    from bench.run.workers import sigint_held\n"
        "    with sigint_held(): pass\n"
        "else:\n"
        "    r.ensure_running()\n"
        "r.register('/loky-bench-test-%d' % __import__('os').getpid(), 'semlock')\n"
    )
    for mode, warns in (("bench", False), ("plain", True)):
        proc = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, timeout=120)
        time.sleep(0.5)  # the tracker writes its warning as it exits, just after this process
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert ("leaked semlock" in proc.stderr) is warns, (mode, proc.stderr[-2000:])


@pytest.mark.parametrize("jobs", [1, 2])
def test_ctrl_c_stops_cleanly_and_prints_how_to_resume(tiny_root: Path, reference: tuple[dict, Path], tmp_path: Path, jobs: int) -> None:
    """Ctrl-C after the first row, while later jobs are still running; then the same command resumes.

    The later jobs are ``gated-protonet`` (tests/gated_plugin.py: protonet that waits for a gate file), so the
    run cannot finish before the signal arrives however fast or loaded the machine is. With ``--jobs 2`` this
    also checks that a ``--plugin`` method is known in the worker processes.
    """
    out, cache = tmp_path / "out", warm_cache(reference, tmp_path)
    gate = tmp_path / "gate"
    grid = ["--method", "protonet", "gated-protonet", "--categories", "tile", "--shots", "1-3", "--seeds", "1-2"]
    args = run_args(tiny_root, out, cache, grid, extra=["--jobs", str(jobs)])
    with_plugin(args)
    env = plugin_env(gate)
    proc = start(args, cache, tmp_path / "logs", env)
    wait_until(lambda: n_rows(out / "results.jsonl") >= 1, proc, "the first row")
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground process group
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the run did not stop within 60 s of Ctrl-C")
    err = (tmp_path / "logs" / "0.err").read_text()
    assert code == -signal.SIGINT, err[-3000:]  # ended by SIGINT after cleaning up: a shell shows exit status 130
    assert "interrupted" in err and "run the same command again to resume" in err, err[-3000:]
    assert str(out / "results.jsonl") in err
    assert "Traceback" not in err, err[-3000:]
    assert "leaked" not in err, err[-3000:]  # loky's resource tracker: the pool was not shut down before exit
    assert group_gone(proc.pid, timeout=20), "worker processes still running 20 s after the run stopped"
    res = read_rows([out / "results.jsonl"])
    assert res.skipped_lines == 0 and res.rows, "a clean stop leaves only complete rows"
    assert {r["method"] for r in res.rows} == {"protonet"}, "a gated job finished before its gate opened"
    before = complete_lines(out / "results.jsonl")
    check_results_partial(out, reference[0], before)
    if jobs == 1:  # resuming after a kill is tested above; once here is enough
        gate.touch()
        run_to_end(args, cache, env)
        final = read_rows([out / "results.jsonl"]).rows
        assert complete_lines(out / "results.jsonl")[: len(before)] == before
        assert len(final) == 12 and len({r["key"] for r in final}) == 12 and all(r["status"] == "ok" for r in final)
        proto = {k: v for k, v in deterministic([r for r in final if r["method"] == "protonet"]).items()}
        assert proto == {k: v for k, v in reference[0].items() if v[0] == "protonet"}
        gated = {(v[2], v[3]): v[6] for v in deterministic([r for r in final if r["method"] != "protonet"]).values()}
        assert gated == {(v[2], v[3]): v[6] for v in proto.values()}, "gated-protonet predicts as protonet"


def test_sigterm_stops_like_ctrl_c(tiny_root: Path, reference: tuple[dict, Path], tmp_path: Path) -> None:
    """SIGTERM to the run's process alone (``kill PID``, a batch system's limit) during a ``--jobs 2`` run: the pool
    is shut down, finished rows are kept, the resume hint is printed, no loky leak warnings, exit by SIGTERM."""
    out, cache = tmp_path / "out", warm_cache(reference, tmp_path)
    grid = ["--method", "protonet", "gated-protonet", "--categories", "tile", "--shots", "1-3", "--seeds", "1-2"]
    args = run_args(tiny_root, out, cache, grid, extra=["--jobs", "2"])
    with_plugin(args)
    proc = start(args, cache, tmp_path / "logs", plugin_env(tmp_path / "gate"))
    wait_until(lambda: n_rows(out / "results.jsonl") >= 1, proc, "the first row")
    os.kill(proc.pid, signal.SIGTERM)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the run did not stop within 60 s of SIGTERM")
    err = (tmp_path / "logs" / "0.err").read_text()
    assert code == -signal.SIGTERM, err[-3000:]  # a shell shows exit status 143
    assert "terminated (SIGTERM)" in err and "run the same command again to resume" in err, err[-3000:]
    assert "Traceback" not in err and "leaked" not in err, err[-3000:]
    assert group_gone(proc.pid, timeout=20), "worker processes still running 20 s after the run stopped"
    res = read_rows([out / "results.jsonl"])
    assert res.skipped_lines == 0 and res.rows and {r["method"] for r in res.rows} == {"protonet"}
    check_results_partial(out, reference[0], complete_lines(out / "results.jsonl"))


def group_gone(pgid: int, timeout: float) -> bool:
    """Whether every process of the process group ``pgid`` has ended within ``timeout`` seconds."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _sigint_state_in_worker() -> tuple[bool, bool]:
    """(SIGINT blocked when the task starts, SIGINT ignored after the worker prologue), in a worker process."""
    from bench.run.workers import ignore_sigint

    blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    ignore_sigint()
    return blocked, signal.getsignal(signal.SIGINT) == signal.SIG_IGN and signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_workers_started_by_a_run_never_see_ctrl_c() -> None:
    """A worker started under ``sigint_held`` has SIGINT blocked from its first instruction (no window before
    its first task in which a Ctrl-C kills it with a traceback) and ignores it after the task prologue."""
    from joblib.externals.loky import get_reusable_executor

    from bench.run.workers import sigint_held

    with sigint_held():
        executor = get_reusable_executor(max_workers=1, reuse=False)
        future = executor.submit(_sigint_state_in_worker)
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, []), "the main process's mask is restored"
    try:
        assert future.result(timeout=120) == (True, True)
    finally:
        executor.shutdown(wait=True, kill_workers=True)


def test_plugin_method_runs_in_worker_processes(tiny_root: Path, reference: tuple[dict, Path], tmp_path: Path) -> None:
    """``--plugin`` methods are known in the ``--jobs 2`` workers (fresh processes that import only bench)."""
    gate = tmp_path / "gate"
    gate.touch()
    out, cache = tmp_path / "out", warm_cache(reference, tmp_path)
    grid = ["--method", "gated-protonet", "--categories", "tile", "--shots", "1", "--seeds", "1-2"]
    args = run_args(tiny_root, out, cache, grid, extra=["--jobs", "2"])
    with_plugin(args)
    run_to_end(args, cache, plugin_env(gate))
    rows = read_rows([out / "results.jsonl"]).rows
    assert [r["status"] for r in rows] == ["ok", "ok"], [r.get("error") for r in rows]


# --------------------------------------------------------------------------------------------- concurrency
def test_two_concurrent_runs_into_one_folder(tiny_root: Path, reference: tuple[dict, Path], tmp_path: Path) -> None:
    """The same grid twice at once, same results folder and same (cold) cache: both finish, nothing corrupt,
    every job stored once, results equal to the serial run."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = run_args(tiny_root, out, cache)
    procs = [start(args, cache, tmp_path / f"logs{i}") for i in range(2)]
    for i, p in enumerate(procs):
        code = p.wait(timeout=RUN_TIMEOUT)
        assert code == 0, (tmp_path / f"logs{i}" / "0.err").read_text()[-3000:]
    check_results(out, reference[0])
    check_cache(cache)
    assert (out / "summary.md").read_text().strip()
    assert not list(out.glob(".write-test*")) and not list(out.glob(".summary.md.tmp*"))


def _append_same_keys(path: str, n: int) -> None:
    store = ResultsStore(path)
    for i in range(n):
        store.append_new({"key": f"job-{i}", "status": "ok", "method": "m", "category": "c", "shots": 1, "seed": 1,
                          "accuracy": 0.5, "pid": os.getpid(), "payload": "x" * 3000})


def test_append_new_stores_each_finished_key_once(tmp_path: Path) -> None:
    """Four processes finishing the same 40 jobs: one ok row per key, no torn lines."""
    path = tmp_path / "results.jsonl"
    ResultsStore(path).append({"key": "job-0", "status": "error", "method": "m", "category": "c", "shots": 1, "seed": 1,
                               "error": "earlier failure"})
    procs = [mp.get_context("fork").Process(target=_append_same_keys, args=(str(path), 40)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    res = read_rows([path])
    assert res.skipped_lines == 0
    ok = [r["key"] for r in res.rows if r["status"] == "ok"]
    assert sorted(ok) == sorted(f"job-{i}" for i in range(40))
    store = ResultsStore(path)
    assert store.is_finished("job-7") and not store.is_finished("job-99")
    assert store.finished_keys() == set(ok)
    assert ResultsStore(tmp_path / "missing.jsonl").finished_keys() == set()  # a fresh --out folder
