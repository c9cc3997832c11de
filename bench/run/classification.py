"""The classification task in the grid (docs/method-notes.md §2): one job fits the method on the episode's support
set, predicts its queries and scores the argmax (:func:`bench.metrics.episode_metrics`), inside the one job
skeleton (:func:`bench.run.job.run_task_job`). Its jobs are planned by :func:`plan` (the grid method × category ×
shots × seed; a job's key: :func:`bench.run.plan.job_identity`); :data:`JOBS` is the task record's run side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bench.cache import hash_memo_dir
from bench.datasets import Samples
from bench.episodes import Episode, make_episode, protocol_id
from bench.errors import BenchError, DatasetError
from bench.features.store import FeatureStore
from bench.method import SupportSet, TaskContext, config_dict, config_hash, get_method
from bench.metrics import episode_metrics
from bench.run.config import RunConfig
from bench.run.job import JobCore, TaskJobs, base_row, build_method, run_task_job
from bench.run.plan import Job, category_content, job_identity


def plan(cfg: RunConfig, samples: Samples) -> list[Job]:
    """Expand the grid into jobs (episodes are built here; impossible episodes become failing jobs)."""
    configs = cfg.method_configs
    specs = [get_method(m) for m in cfg.methods]
    memo = hash_memo_dir(cfg.cache_dir)
    jobs: list[Job] = []
    for category in samples.categories():
        has_normals = bool(samples.train_paths(category))
        content, content_err = category_content(samples, category, memo)
        for seed in cfg.seeds:
            for shots in cfg.shots:
                try:
                    episode: Episode | None = make_episode(samples, category, shots, seed, cfg.protocol, cfg.include_good)
                    ehash, err = episode.hash, content_err
                except DatasetError as exc:
                    episode, ehash, err = None, "none", str(exc)
                for spec in specs:
                    config = configs[spec.name]
                    mcfg = config_dict(config)
                    ident = job_identity(cfg, samples, spec.name, mcfg, category, shots, seed, ehash, content, cfg.task,
                                         reads_bank="bank" in spec.cls.reads(config))
                    why = "" if has_normals or err else spec.cls.normal_images_needed(config)
                    job_err = err or (no_normals_error(samples, category, spec.name, why) if why else None)
                    jobs.append(Job(
                        method=spec.name, method_config=mcfg, category=category, shots=shots, seed=seed,
                        key=config_hash(ident), episode=episode, error=job_err, dataset_content=content, config=config,
                        task=cfg.task,
                    ))  # fmt: skip
    return jobs


def no_normals_error(samples: Samples, category: str, method: str, why: str) -> str:
    """The error of a job whose method needs normal training images that the category does not have."""
    return (  # the same text for every category, so the run's failure summary says it once per method
        f"method {method!r} needs normal (defect-free) training images for {why}, but the category has none (its "
        f"train/good is empty or missing; dataset {samples.dataset!r} at {samples.root}). Add defect-free images to "
        "the category's train/good folder, or choose a method that needs none (e.g. protonet, knn, logreg, direct, "
        "contrastive-raw)."
    )


def feature_work(samples: Samples, jobs: Sequence[Job]) -> list[str]:
    """The images whose PatchCore features the jobs will read, each once, grouped by category.

    Episode images (support and queries) for methods that read patch features; the category's normal images too
    when one builds the memory bank. Parallel runs extract these first, split over the workers, so two workers
    never extract the same cold image (they would otherwise both start on the same category).
    """
    needs_of = {job.method: get_method(job.method).cls.reads(job.config) for job in jobs}
    paths: dict[str, None] = {}
    for job in jobs:
        if job.episode is None:
            continue
        needs = needs_of[job.method]
        if "bank" in needs:
            paths.update(dict.fromkeys(samples.train_paths(job.category)))
        if "patch" in needs:
            paths.update(dict.fromkeys([*job.episode.support_paths(), *job.episode.queries]))
    return list(paths)


class ClassificationCore(JobCore):
    """A classification job inside the skeleton: fit on the support set, (Q, C) scores, argmax, metrics."""

    def row(self, cfg: RunConfig, samples: Samples, job: Job, store: FeatureStore) -> dict[str, Any]:
        return {**base_row(cfg, samples, job, store), "protocol": protocol_id(cfg.protocol)}  # paper -> paper_fixed

    def support_rule(self, ep: Episode) -> str:
        return "first-n by sorted file name" if ep.protocol == "paper_fixed" else "seeded random draw"

    def episode_fields(self, ep: Episode) -> dict[str, Any]:
        return {"class_names": list(ep.class_names), "n_classes": ep.n_classes, "n_queries": len(ep.queries)}

    def solve(self, cfg: RunConfig, samples: Samples, job: Job, store: FeatureStore, ctx: TaskContext, ep: Episode,
              row: dict[str, Any]) -> None:
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


CORE = ClassificationCore()


def run_job(cfg: RunConfig, samples: Samples, job: Job, out: Path) -> dict[str, Any]:
    """Run one classification job and return its row (status ok or error). Never raises for a job-level failure.

    Raises:
        BenchError: for problems that would fail every job (weights, a full or read-only disk).
    """
    return run_task_job(CORE, cfg, samples, job, out)


JOBS = TaskJobs(
    plan=plan, feature_work=lambda cfg, samples, jobs: feature_work(samples, jobs), run=run_job,
    episode_at=lambda cfg, samples, cat, k: make_episode(samples, cat, k, cfg.seeds[0], cfg.protocol, cfg.include_good),
)
"""The run side of the classification task (:data:`bench.tasks.BUILTIN`)."""
