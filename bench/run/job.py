"""One job: its :class:`~bench.method.TaskContext` and method (:func:`make_context`, :func:`build_method`: the only
place either is assembled; ``bench run`` and ``bench tsne`` both call them), and :func:`run_job`, which fits the
method on the support set, predicts the queries and returns the job's result row.

A failed job becomes a row with its error, never a crash of the grid; only problems that would fail every job (the
weights, a full or read-only disk) stop the run.
"""

from __future__ import annotations

import errno
import logging
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bench.compat import release_free_memory
from bench.datasets import Samples
from bench.episodes import protocol_id
from bench.errors import BenchError
from bench.features.store import FeatureStore, shared_store
from bench.images import DECODING
from bench.method import Method, SupportSet, TaskContext, config_hash, get_method
from bench.results import DEFAULT_TASK
from bench.run.config import RunConfig
from bench.run.envinfo import environment
from bench.metrics import episode_metrics
from bench.run.plan import Job

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
        "features": {**cfg.features.record(), "coreset_ratio": cfg.coreset_ratio, "key": cfg.features.key(),
                     "decoding": DECODING},
        "weights": store.weights_info.record() if store is not None else None,
        "dataset": samples.dataset,
        "data_root": str(samples.root),
        "dataset_manifest": samples.manifest_hash(job.category),
        "dataset_content": job.dataset_content,
        "dataset_info": samples.info,
        "category": job.category,
        "shots": job.shots,
        "seed": job.seed,
        "protocol": protocol_id(cfg.protocol) if job.task == DEFAULT_TASK else cfg.protocol,
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


def run_job(cfg: RunConfig, samples: Samples, job: Job, out: Path) -> dict[str, Any]:
    """Run one job and return its row (status ok or error). Never raises for a job-level failure.

    Raises:
        BenchError: for problems that would fail every job (weights, a full or read-only disk).
    """
    t0 = time.perf_counter()
    store = feature_store(cfg)  # weights problems are fatal for the whole run (raised in preflight already)
    row = base_row(cfg, samples, job, store)
    row["env"] = environment(str(cfg.torch_device()))
    if job.error or job.episode is None:
        row.update(status="error", error=job.error or "no episode")
        return row
    ep = job.episode
    try:
        episode_file = ep.save(out / "episodes")
    except OSError as exc:
        episode_file = out / "episodes" / f"{ep.hash}.json"
        if not episode_file.is_file():  # (a run saving the same episode at the same time may win the rename)
            if exc.errno in FATAL_ERRNOS:
                raise fatal_disk_error(exc, cfg, out) from None
            row.update(status="error", error=f"cannot write the episode file {episode_file} ({exc.strerror or exc})")
            return row
    row["episode"] = {
        "hash": ep.hash,
        "file": str(episode_file.relative_to(out)),
        "support_rule": "first-n by sorted file name" if ep.protocol == "paper_fixed" else "seeded random draw",
    }
    row.update(class_names=list(ep.class_names), n_classes=ep.n_classes, n_queries=len(ep.queries))
    stats_before = {k: dict(v) for k, v in store.stats.items()}
    ctx = make_context(cfg, samples, job, store)
    method: Any = None
    try:
        method = build_method(job, ctx)
        support = SupportSet(tuple(ep.support_paths()), tuple(ep.support_labels()), ep.class_names)
        with ctx.timer("fit"):
            method.fit(support)
        with ctx.timer("predict"):
            scores = np.asarray(method.predict(list(ep.queries)))
        if scores.shape != (len(ep.queries), ep.n_classes):
            raise RuntimeError(f"method {job.method} returned scores of shape {scores.shape}, expected {(len(ep.queries), ep.n_classes)}")
        if not np.isfinite(scores).all():  # argmax of NaN is class 0: a number at chance, not a result
            n_bad = int((~np.isfinite(scores)).any(axis=1).sum())
            raise BenchError(
                f"method {job.method} returned non-finite scores (NaN or inf) for {n_bad} of {len(ep.queries)} "
                "queries, so the job has no result. A training run that diverged (try a smaller learning rate with "
                "--set) or damaged weights (--weights) cause this."
            )
        y_pred = scores.argmax(axis=1).tolist()
        row.update(episode_metrics(ep.query_labels, y_pred, ep.class_names))
        row.update(status="ok", error=None, y_true=list(ep.query_labels), y_pred=y_pred)
        row["train_log"] = ctx.log
        row["method_info"] = method.extra_info()
    except Exception as exc:  # noqa: BLE001 - a failed job is a row, not a crash of the grid
        record_failure(row, exc, cfg, out)
    record_costs(row, store, stats_before, ctx, t0)
    method = None  # the job's model, optimiser state and tensors go before the heap's free pages are returned
    release_free_memory()
    return row
