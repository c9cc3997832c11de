"""One job: its :class:`~bench.method.TaskContext` and method (:func:`make_context`, :func:`build_method`: the only
place either is assembled; ``bench run`` and ``bench tsne`` both call them), and the one job skeleton of every task
(:func:`run_task_job`), which runs a task's :class:`JobCore` (classification: :mod:`bench.run.classification`,
detection: :mod:`bench.run.detection`, discovery: :mod:`bench.run.discovery`) and returns the job's result row.

A failed job becomes a row with its error, never a crash of the grid; only problems that would fail every job (the
weights, a full or read-only disk) stop the run.
"""

from __future__ import annotations

import abc
import errno
import logging
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from bench.compat import release_free_memory
from bench.datasets import Samples
from bench.errors import BenchError
from bench.features.store import FeatureStore, shared_store
from bench.images import DECODING
from bench.method import Method, TaskContext, config_hash, get_method
from bench.run.config import RunConfig
from bench.run.envinfo import environment
from bench.run.plan import Job
from bench.tasks import get_task

log = logging.getLogger(__name__)

# Errors of the machine, not of the job: every later job would fail the same way (and its error row might not
# even be writable), so the run stops with one message instead of filling the results with error rows.
FATAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def feature_store(cfg: RunConfig) -> FeatureStore:
    """The run's feature store in this process (one per feature config, device and cache root: the backbone is
    loaded once per process, :func:`bench.features.store.shared_store`)."""
    return shared_store(cfg.features, cfg.torch_device(), cfg.cache_root())


def make_context(
    cfg: RunConfig, samples: Samples, job: Job, store: FeatureStore, train_paths: list[str] | None = None
) -> TaskContext:
    """The :class:`TaskContext` of ``job``: its category's normal images (``train_paths`` when given: a detection job
    gives its k shots only), the shared feature store, the memory-bank settings, the device, the cache root and the
    pseudo-defect textures of the run."""
    return TaskContext(
        dataset=samples.dataset,
        category=job.category,
        seed=job.seed,
        shots=job.shots,
        train_paths=samples.train_paths(job.category) if train_paths is None else list(train_paths),
        store_factory=lambda: store,
        coreset_ratio=cfg.coreset_ratio,
        bank_seed=cfg.bank_seed_of(job.seed),
        device=cfg.torch_device(),
        cache_root=cfg.cache_root(),
        textures=cfg.textures,
        feature_config=cfg.features,
    )


def build_method(job: Job, ctx: TaskContext) -> Method:
    """The method of ``job`` with the configuration planned for it, ready to ``fit``."""
    spec = get_method(job.method)
    method = spec.cls(job.config, ctx)
    method.name = spec.name
    return method


def base_row(cfg: RunConfig, samples: Samples, job: Job, store: Any) -> dict[str, Any]:
    """The fields of a job's row that do not depend on its outcome (identity, data, configuration)."""
    return {
        "key": job.key,
        "task": job.task,
        "method": job.method,
        "method_config": job.method_config,
        "method_config_hash": config_hash(job.method_config),
        "features": {**cfg.features.record(), "coreset_ratio": cfg.coreset_ratio, "bank": cfg.bank_record(),
                     "key": cfg.features.key(), "decoding": DECODING},
        "weights": store.weights_info.record() if store is not None else None,
        "dataset": samples.dataset,
        "data_root": str(samples.root),
        "dataset_manifest": samples.manifest_hash(job.category),
        "dataset_content": job.dataset_content,
        "dataset_info": samples.info,
        "category": job.category,
        "shots": job.shots,
        "seed": job.seed,
        "threads": cfg.threads,  # as asked (None: torch's default; "auto"); env.torch_threads: the number chosen
        "bank_seed": cfg.bank_seed_of(job.seed),  # the memory bank's coreset seed (features.bank: how it was chosen)
        "protocol": cfg.protocol,  # as the user named it (classification's core records its id)
        "class_set": {
            "combined": "excluded" if cfg.exclude_combined else "kept",
            "good": "included" if cfg.include_good else "excluded",
            "min_defect_types": cfg.min_defect_types,
        },
        "textures": cfg.textures or "procedural",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


_READ_ONLY_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}


def fatal_disk_error(exc: OSError, cfg: RunConfig, out: Path) -> BenchError:
    """The message that stops a run on a full, over-quota or read-only disk (:data:`FATAL_ERRNOS`), or a cache it
    may not write: the fix of a read-only one is to make it writable, not to free space."""
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in _READ_ONLY_ERRNOS:
        fix = ("that folder is read-only: make it writable (remount the disk read-write, or fix the folder's "
               "permissions) or point --cache-dir / --out at a writable folder")  # fmt: skip
    else:
        fix = "free space there or point them at another disk"
    return BenchError(
        f"{exc.strerror or exc}{where} while running the grid. The cache is at {cfg.cache_root()} (--cache-dir) and "
        f"the results at {out} (--out): {fix}, then run the same command again to resume. Every finished job is "
        f"saved in {out / 'results.jsonl'}."
    )


def _cache_not_writable(exc: OSError, cfg: RunConfig) -> bool:
    """A permission error on a cache write: every later job would need to write there too."""
    if exc.errno not in (errno.EACCES, errno.EPERM) or not exc.filename:
        return False
    return Path(str(exc.filename)).is_relative_to(cfg.cache_root())


def record_failure(row: dict[str, Any], exc: Exception, cfg: RunConfig, out: Path) -> None:
    """Inside a job's ``except Exception``: the failure becomes the row's status and error (a failed job is a row,
    not a crash of the grid). A harness error keeps its own one-line message; anything else also keeps the end of its
    traceback.

    Raises:
        BenchError: a full, over-quota or read-only disk (:data:`FATAL_ERRNOS`), or a cache this user may not
            write: every later job would fail too.
    """
    if isinstance(exc, BenchError):
        row.update(status="error", error=str(exc))
        return
    if isinstance(exc, OSError) and (exc.errno in FATAL_ERRNOS or _cache_not_writable(exc, cfg)):
        raise fatal_disk_error(exc, cfg, out) from None
    log.debug("job failed", exc_info=True)
    row.update(status="error", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-4000:])


def record_costs(row: dict[str, Any], store: FeatureStore, stats_before: dict, ctx: TaskContext, t0: float) -> None:
    """The job's cache hits and misses (the store's counters since ``stats_before``) and its stage timings."""
    row["cache"] = {
        stage: {k: v - stats_before.get(stage, {}).get(k, 0) for k, v in d.items()} for stage, d in store.stats.items()
    }
    row["timing"] = {**{k: round(v, 4) for k, v in ctx.timings.items()}, "total": round(time.perf_counter() - t0, 4)}


class JobCore(abc.ABC):
    """What one task's job does inside the one job skeleton (:func:`run_task_job`): the fields of its row that do
    not depend on the outcome, what its saved episode adds, whose normal images the context gives, and the work
    itself (fit, predict or score or group, metrics), which fills the row and sets ``status: ok``.

    The skeleton does the rest the same way for every task (docs/architecture.md, "the task seam"): the feature
    store, the environment, the planned error of a job that cannot run, saving the episode with the same-file race
    guard, the :class:`TaskContext`, a failure as a row (:func:`record_failure`), the costs and the memory release.
    """

    missing = "no episode"
    """The error of a job planned without an episode (and without an error of its own)."""

    def row(self, cfg: RunConfig, samples: Samples, job: Job, store: FeatureStore) -> dict[str, Any]:
        """The fields of the job's row that do not depend on its outcome (default: :func:`base_row`)."""
        return base_row(cfg, samples, job, store)

    @abc.abstractmethod
    def support_rule(self, ep: Any) -> str:
        """The ``support_rule`` of the row's ``episode`` field: how the labelled images were chosen."""

    def episode_fields(self, ep: Any) -> dict[str, Any]:
        """The fields of the row that the saved episode gives (class names, counts)."""
        return {}

    def train_paths(self, ep: Any) -> list[str] | None:
        """The normal images the context gives (``None``: the category's, :func:`make_context`)."""
        return None

    @abc.abstractmethod
    def solve(self, cfg: RunConfig, samples: Samples, job: Job, store: FeatureStore, ctx: TaskContext, ep: Any,
              row: dict[str, Any]) -> None:
        """Build the job's method, run it on ``ep`` and write its outcome into ``row`` (``status: ok``); any
        exception becomes the row's error (:func:`record_failure`)."""


def save_episode(ep: Any, cfg: RunConfig, out: Path) -> Path | str:
    """Save ``ep`` under ``out/episodes`` and return its file, or the error of a job whose episode cannot be written.

    A run saving the same episode at the same time may win the rename: the file is there, so the job goes on
    (the same-file race guard, for every task).

    Raises:
        BenchError: a full, over-quota or read-only disk (:data:`FATAL_ERRNOS`).
    """
    try:
        return ep.save(out / "episodes")
    except OSError as exc:
        episode_file = out / "episodes" / f"{ep.hash}.json"
        if episode_file.is_file():
            return episode_file
        if exc.errno in FATAL_ERRNOS:
            raise fatal_disk_error(exc, cfg, out) from None
        return f"cannot write the episode file {episode_file} ({exc.strerror or exc})"


def run_task_job(core: JobCore, cfg: RunConfig, samples: Samples, job: Job, out: Path) -> dict[str, Any]:
    """Run one job of any task through its ``core`` and return its row (status ok or error). Never raises for a
    job-level failure.

    Raises:
        BenchError: for problems that would fail every job (weights, a full or read-only disk).
    """
    t0 = time.perf_counter()
    store = feature_store(cfg)  # weights problems are fatal for the whole run (raised in preflight already)
    row = core.row(cfg, samples, job, store)
    row["env"] = environment(str(cfg.torch_device()))
    ep = job.episode
    if job.error or ep is None:
        row.update(status="error", error=job.error or core.missing)
        return row
    episode_file = save_episode(ep, cfg, out)
    if isinstance(episode_file, str):
        row.update(status="error", error=episode_file)
        return row
    row["episode"] = {"hash": ep.hash, "file": str(episode_file.relative_to(out)), "support_rule": core.support_rule(ep)}
    row.update(core.episode_fields(ep))
    stats_before = {k: dict(v) for k, v in store.stats.items()}
    ctx = make_context(cfg, samples, job, store, core.train_paths(ep))
    try:
        core.solve(cfg, samples, job, store, ctx, ep, row)  # its method and tensors go when it returns
    except Exception as exc:  # noqa: BLE001 - a failed job is a row, not a crash of the grid
        record_failure(row, exc, cfg, out)
    record_costs(row, store, stats_before, ctx, t0)
    release_free_memory()  # the heap's free pages are returned once the job's model is gone
    return row


@dataclass(frozen=True)
class TaskJobs:
    """The run side of a task (its record's ``jobs`` hook, :class:`bench.tasks.Task`): how its jobs are planned,
    listed for the feature stage, prepared, run (through :func:`run_task_job`) and announced."""

    plan: Callable[[RunConfig, Samples], list[Job]]
    feature_work: Callable[[RunConfig, Samples, list[Job]], list[str]]
    run: Callable[[RunConfig, Samples, Job, Path], dict]
    notes: Callable[[RunConfig], list[str]] = lambda cfg: []
    prepare_work: Callable[[RunConfig, list[Job]], list[Job]] = lambda cfg, jobs: []
    """One job per piece of shot-independent work its method does ahead (:meth:`bench.method.Method.prepare`), in
    the order to start them; a parallel run spreads them over its workers before the jobs."""
    prepare: Callable[[RunConfig, Samples, Job], None] | None = None
    """Do that work for one such job (in a worker)."""
    group_by_method: bool = False
    """Whether a parallel run's groups are (category, seed, method) instead of (category, seed) (:func:`group_jobs`)."""
    episode_at: Callable[[RunConfig, Samples, str, int], object] | None = None
    """The episode of (category, shots) at the run's first seed, for the shots check; ``None``: no shots."""


def task_jobs(task: str) -> TaskJobs:
    """The run side of ``task`` (:data:`bench.tasks.Task.jobs`, resolved here: only the run imports it)."""
    return get_task(task).hook("jobs")
