"""Planning: the grid (method × category × shots × seed) of a :class:`~bench.run.config.RunConfig` as jobs.

One job = (method config, feature config, dataset, category, shots, seed, protocol, class-set switches). Its key is
a hash of all of that plus the episode hash and the content of the category's images (names and bytes,
:meth:`~bench.datasets.Samples.content_hash`), so re-running the same command skips finished jobs (resume) and any
change to an input that matters makes a new job: an image replaced under the same name too. Jobs of one
(category, seed) form a group (:func:`group_jobs`) that runs in one process, so the memory bank and the cached
features and pretraining of that group are shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from bench.cache import hash_memo_dir
from bench.datasets import Samples
from bench.episodes import Episode, make_episode, protocol_id
from bench.errors import DatasetError
from bench.method import config_dict, config_hash, get_method
from bench.results import DEFAULT_TASK
from bench.run.config import RunConfig

RUNNER_VERSION = 2  # 2: job keys cover the bytes of the category's images (dataset_content), not only names


@dataclass
class Job:
    """One cell of the grid: a method configuration on one few-shot episode.

    A job is planned once (:func:`plan`), in the main process, and run once, there or in a worker process
    (:func:`bench.run.job.run_job`); its result is one row of the results file, found again by :attr:`key` (resume).

    Attributes:
        method: the registered method name (a variant, e.g. ``contrastive-residual``).
        method_config: :attr:`config` as a JSON-able dict (part of the key, stored in the row).
        category, shots, seed: where the job runs: n = ``shots`` support images per class, run seed ``seed``.
        key: hash of :func:`job_identity`: everything that defines the job.
        episode: the support/query split (:class:`~bench.episodes.Episode`); ``None`` when it cannot be built.
        error: why the job cannot start (too few images for the shots, no normal images for a method that needs
            them); the job then becomes an error row without running.
        dataset_content: hash of the names and bytes of the category's images.
        config: the method's ``Config`` instance (the variant's defaults and the run's ``--set`` options), built
            once per run (:attr:`RunConfig.method_configs`) and handed to the method as is.
        task: what the job solves (:data:`bench.results.OK_METRICS`); ``classification``: defect types of queries.
    """

    method: str
    method_config: dict[str, Any]
    category: str
    shots: int
    seed: int
    key: str
    episode: Episode | None
    error: str | None = None
    dataset_content: str = ""
    config: Any = None
    task: str = DEFAULT_TASK

    def describe(self) -> str:
        """``method category N-shot seed S`` (progress bars, messages)."""
        return f"{self.method} {self.category} {self.shots}-shot seed {self.seed}"


def job_identity(
    cfg: RunConfig, samples: Samples, method: str, mcfg: dict, category: str, shots: int, seed: int, episode_hash: str,
    content: str, task: str = DEFAULT_TASK,
) -> dict:
    """What defines a job. ``content`` is the hash of the names and bytes of every image of the category
    (:meth:`Samples.content_hash`): the jobs of a category are redone when any of its images changes. The task is
    part of the identity except for classification, the first task, so the keys of results written before tasks
    existed stay valid (those folders resume)."""
    ident = {
        "runner": RUNNER_VERSION,
        "method": method,
        "method_config": mcfg,
        "features": cfg.features.key(),
        "coreset_ratio": cfg.coreset_ratio,
        "textures": cfg.textures,
        "dataset": samples.dataset,
        "dataset_content": content,
        "category": category,
        "shots": shots,
        "seed": seed,
        "protocol": protocol_id(cfg.protocol) if task == DEFAULT_TASK else cfg.protocol,  # the other tasks' ids as is
        "include_good": cfg.include_good,
        "exclude_combined": cfg.exclude_combined,
        "episode": episode_hash,
    }
    if task != DEFAULT_TASK:
        ident["task"] = task
    return ident


def category_content(samples: Samples, category: str, memo: Path | None) -> tuple[str, str | None]:
    """The content hash of a category's images (part of every job key, so replacing an image reruns its jobs) and
    ``None``; or ``"unreadable"`` and the reason, which every job of the category then carries as its error."""
    try:
        return samples.content_hash(category, memo), None
    except DatasetError as exc:
        return "unreadable", str(exc)


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
                    ident = job_identity(cfg, samples, spec.name, mcfg, category, shots, seed, ehash, content, cfg.task)
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


def failure_groups(failed: Sequence[tuple[Job, str]]) -> dict[str, list[Job]]:
    """Failed (or doomed) jobs by their error text, in order of first appearance.

    By the text alone, not by (method, text): a reason every method shares (a defect type with too few images for
    the shots, an unreadable image) is one error, however many methods hit it."""
    groups: dict[str, list[Job]] = {}
    for job, err in failed:
        groups.setdefault(err, []).append(job)
    return groups


def failure_lines(groups: dict[str, list[Job]], max_errors: int = 10) -> list[str]:
    """One line per error of :func:`failure_groups`: the methods, the number of jobs, the categories, shots and
    seeds it hit, and the error; at most ``max_errors`` lines and one that counts the rest."""
    lines = []
    for err, jobs in list(groups.items())[:max_errors]:
        methods = ", ".join(dict.fromkeys(j.method for j in jobs))
        cats = ", ".join(sorted({j.category for j in jobs}))
        shots = ",".join(str(n) for n in sorted({j.shots for j in jobs}))
        seeds = ",".join(str(n) for n in sorted({j.seed for j in jobs}))
        lines.append(f"  {methods}: {len(jobs)} job(s) (categories {cats}; shots {shots}; seeds {seeds}): {err}")
    if len(groups) > max_errors:
        lines.append(f"  ... and {len(groups) - max_errors} more distinct error(s)")
    return lines


def group_jobs(jobs: Sequence[Job]) -> list[list[Job]]:
    """The jobs by (category, seed), in plan order: a group runs in one process and shares its bank and features."""
    groups: dict[tuple[str, int], list[Job]] = {}
    for j in jobs:
        groups.setdefault((j.category, j.seed), []).append(j)
    return list(groups.values())


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
