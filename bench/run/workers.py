"""Where a run's groups execute: this process, local worker processes (joblib's loky) or a Dask cluster.

:func:`worker_pool` gives a :class:`WorkerPool` that maps a task over groups, lazily in this process or spread over
workers (results in the order they finish), with the torch threads split between the workers; a worker that dies
stops the run with a message instead of a traceback. :func:`worker_setup` is the prologue of every task: Ctrl-C
ignored and an orphan watchdog in local workers, the torch threads, the run's plugins and cache root. The signal
handling is explained at :func:`sigint_held`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from bench.errors import BenchError, clip
from bench.paths import set_cache_root
from bench.registry import import_plugins

_WATCHDOG: threading.Thread | None = None


def exit_when_orphaned(parent_pid: int) -> None:
    """In a local worker process: exit as soon as the process that started it is gone.

    loky workers do not notice on POSIX when the main process is killed (SIGKILL, OOM killer): they would go
    on running queued groups and appending rows next to a resumed run. Finished rows are safe either way
    (complete lines, never two ``ok`` rows per key); this stops the orphans from burning the CPU.
    """
    global _WATCHDOG
    if _WATCHDOG is not None or os.getppid() != parent_pid:
        return

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.25)
        os._exit(3)

    _WATCHDOG = threading.Thread(target=watch, name="bench-parent-watchdog", daemon=True)
    _WATCHDOG.start()


@contextlib.contextmanager
def sigint_held(local_workers: bool = True) -> Iterator[None]:
    """In the main process: hold back SIGINT (Ctrl-C) while local worker processes may be started.

    Ctrl-C in a terminal goes to the whole process group, workers included. A loky worker hit by it between two
    tasks dies printing a traceback (``KeyboardInterrupt`` in loky's own loop, e.g. in its memory check after a
    task). Workers are therefore made deaf to SIGINT and the main process alone handles it: it stops the pool
    (joblib terminates the workers on ``KeyboardInterrupt``) and prints how to resume. The signal mask is
    inherited through fork and exec, so a worker started here, or later by the executor's manager thread (which
    is created here too and inherits the mask), starts with SIGINT blocked; its first task then ignores SIGINT
    and unblocks it (:func:`worker_setup`). A Ctrl-C pressed meanwhile is delivered to this process when the
    block ends, so it is delayed by the few milliseconds that starting the pool's dispatch takes, never lost.

    The resource trackers are started first, outside the block: starting the standard library's (Python 3.11)
    ends with an unconditional ``SIG_UNBLOCK`` of SIGINT, which would lift the block before the workers start.
    """
    if not local_workers or not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield  # Dask workers run in their own processes, started by the cluster, not by this process
        return
    from multiprocessing import resource_tracker

    from joblib.externals.loky.backend import resource_tracker as loky_resource_tracker

    resource_tracker.ensure_running()
    # loky's tracker unlinks whatever a worker terminated by the Ctrl-C left registered, and then warns about
    # "leaked semlock objects" (often with FileNotFoundError: the object was already gone), after a run that
    # stopped exactly as it should. It takes its warning filters from sys.warnoptions when it starts (``-W``),
    # so it alone starts with its own warnings off; this process and the workers keep theirs.
    quiet = "ignore:resource_tracker:UserWarning"
    sys.warnoptions.append(quiet)
    try:
        loky_resource_tracker.ensure_running()
    finally:
        sys.warnoptions.remove(quiet)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def ignore_sigint() -> None:
    """In a local worker process: ignore Ctrl-C (see :func:`sigint_held`; the main process stops the pool)."""
    if hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # also discards one that arrived while it was blocked
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def worker_setup(
    plugins: Sequence[str], cache_dir: str | Path | None, threads: int | None, parent_pid: int | None
) -> None:
    """Prologue of every task, in a worker process or in this one: Ctrl-C ignored and an orphan watchdog (local
    workers, ``parent_pid`` set), torch threads, the run's plugins and its cache root."""
    if parent_pid is not None:  # a local (loky) worker: the main process handles Ctrl-C and stops the pool
        ignore_sigint()
        exit_when_orphaned(parent_pid)
    if threads:
        torch.set_num_threads(threads)
    import_plugins(plugins)  # worker processes do not inherit the main process's imports (loky, Dask)
    if cache_dir:  # a reused or remote worker: the cache root of this run, not the one it started with
        set_cache_root(cache_dir)


AUTO_THREADS = "auto"
"""``--threads auto``: torch threads from the machine's free cores (:func:`auto_threads`)."""


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's or ``taskset``'s share, not the host's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform
        return max(1, os.cpu_count() or 1)


def auto_threads(workers: int = 1) -> tuple[int, str]:
    """``--threads auto``: the torch threads per process for ``workers`` processes, and how they were chosen.

    The free cores are the cores of :func:`machine_cores` less the 1-minute load average (rounded; other users' work
    and ours: one busy core stays busy), at least 1; each worker gets an equal share, at least 1. Oversubscription is
    what this avoids: on a busy 2-core machine 2 torch threads per process were 8-16× slower than 1 (issue #23: a
    contrastive step 2,500 ms vs 372 ms at load 11), while on a quiet one 2 threads are 1.5× faster than 1.

    Returns:
        (threads per process, a line that says why, for the run's notes).
    """
    cores = machine_cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform: assume a quiet machine
        load = 0.0
    free = max(1, cores - min(cores, round(load)))
    per = max(1, free // max(1, workers))
    why = (f"--threads auto: {free} free core(s) of {cores} (1-minute load {load:.1f}) over {workers} process(es): "
           f"{per} torch thread(s) each")
    return per, why


def resolve_threads(threads: int | str | None, workers: int) -> tuple[int | None, str]:
    """The run's ``--threads`` as :func:`worker_pool` takes it (torch threads in total, split over the workers), and
    the note that explains an automatic choice ("" for a number or the default)."""
    if threads != AUTO_THREADS:
        return threads, ""  # type: ignore[return-value]
    per, why = auto_threads(workers)
    return per * max(1, workers), why


@dataclass(frozen=True)
class WorkerPool:
    """Where tasks run: this process (``workers == 1``) or ``workers`` worker processes.

    Attributes:
        workers: how many processes run tasks at a time.
        threads: torch threads per process (``None``: leave this process's setting).
        parent_pid: for workers started by this process (loky): its pid, so they exit when it dies.
        local: whether this process starts the workers (loky) rather than a cluster (Dask).
    """

    workers: int = 1
    threads: int | None = None
    parent_pid: int | None = None
    local: bool = True

    @property
    def parallel(self) -> bool:
        return self.workers > 1

    def map_unordered(self, task: Callable[..., Any], calls: Iterable[tuple[Any, ...]]) -> Iterator[Any]:
        """``task(*args)`` for each ``args`` of ``calls``: lazily in order in this process, else on the workers in
        the order they finish (the pool starts here)."""
        if not self.parallel:
            return (task(*args) for args in calls)
        from joblib import Parallel, delayed

        with sigint_held(self.local):  # see sigint_held: workers start with Ctrl-C blocked
            return Parallel(return_as="generator_unordered")(delayed(task)(*args) for args in calls)


def dask_client(scheduler: str | None, n_workers: int) -> Any:
    """A Dask client of ``scheduler`` (``tcp://HOST:8786``), or of a local cluster of ``n_workers`` processes."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise BenchError("--backend dask needs the optional dependency: pip install -c constraints.txt -e '.[dask]'") from None
    try:
        return Client(scheduler) if scheduler else Client(processes=True, n_workers=n_workers, threads_per_worker=1)
    except (OSError, TimeoutError, ValueError) as exc:  # ValueError: an address Dask cannot parse (no port)
        raise BenchError(
            f"cannot connect to the Dask scheduler {clip(scheduler or '(local cluster)', 100)} ({type(exc).__name__}: "
            f"{str(exc)[:200]}). Check --scheduler (e.g. tcp://HOST:8786) and that the scheduler is running "
            "and reachable from this machine."
        ) from None


@contextlib.contextmanager
def worker_pool(
    n_workers: int, backend: str = "loky", scheduler: str | None = None, threads: int | None = None,
    results: Path | None = None,
) -> Iterator[WorkerPool]:
    """The pool of a run: this process for one worker, else ``n_workers`` loky processes or Dask workers, each with
    ``threads // n_workers`` torch threads (``threads`` = all of this process's by default), BLAS and OpenMP pools
    capped the same (so N workers never run N × T threads).

    Raises:
        BenchError: a worker process died (killed for lack of memory, say): the message says how to go on and that
            the rows finished so far are in ``results``.
    """
    if n_workers <= 1:
        yield WorkerPool(threads=threads)
        return
    from joblib import parallel_config

    per_worker = max(1, (threads or torch.get_num_threads()) // n_workers)
    local = backend == "loky"  # workers started by this process (Dask's are started by the cluster)
    client = dask_client(scheduler, n_workers) if backend == "dask" else None
    try:
        with parallel_config(backend=backend, n_jobs=n_workers, inner_max_num_threads=per_worker if local else None):
            yield WorkerPool(n_workers, per_worker, os.getpid() if local else None, local)
    except Exception as exc:
        # A worker process that died (OOM killer, segfault, kill -9) is a machine problem, not a bug: say what
        # happened and how to go on instead of printing joblib's or Dask's traceback.
        if type(exc).__name__ not in ("TerminatedWorkerError", "BrokenProcessPool", "KilledWorker"):
            raise
        raise BenchError(
            f"a worker process died while running the grid ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            "It may have been killed by the system for lack of memory: try fewer --jobs. Every finished job is "
            f"saved in {results}; run the same command again to resume."
        ) from None
    finally:
        if client is not None:
            client.close()
