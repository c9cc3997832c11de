"""Planning, what every task shares: the :class:`Job`, its identity, the content hash of a category, the groups of
jobs and the failure summary (each task's planner: classification's :func:`bench.run.classification.plan`).

One job = (method config, feature config, dataset, category, shots, seed, protocol, class-set switches). Its key is
a hash of all of that plus the episode hash and the content of the category's images (names and bytes,
:meth:`~bench.datasets.Samples.content_hash`), so re-running the same command skips finished jobs (resume) and any
change to an input that matters makes a new job: an image replaced under the same name too. Jobs of one
(category, seed), or one (category, seed, method) for classification, form a group (:func:`group_jobs`) that runs in
one process, so the memory bank and the cached features and pretraining of that group are shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from bench.datasets import Samples
from bench.episodes import Persisted, protocol_id
from bench.errors import DatasetError
from bench.results import DEFAULT_TASK
from bench.run.config import RunConfig
from bench.tasks import tasks

RUNNER_VERSION = 2  # 2: job keys cover the bytes of the category's images (dataset_content), not only names


@dataclass
class Job:
    """One cell of the grid: a method configuration on one few-shot episode.

    A job is planned once (:func:`plan`), in the main process, and run once, there or in a worker process
    (:func:`bench.run.job.run_task_job`); its result is one row of the results file, found again by :attr:`key` (resume).

    Attributes:
        method: the registered method name (a variant, e.g. ``contrastive-residual``).
        method_config: :attr:`config` as a JSON-able dict (part of the key, stored in the row).
        category, shots, seed: where the job runs: n = ``shots`` support images per class, run seed ``seed``.
        key: hash of :func:`job_identity`: everything that defines the job.
        episode: the images of the job (classification: the support/query split, :class:`~bench.episodes.Episode`;
            each task its own :class:`~bench.episodes.Persisted`); ``None`` when it cannot be built.
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
    episode: Persisted | None
    error: str | None = None
    dataset_content: str = ""
    config: Any = None
    task: str = DEFAULT_TASK

    @property
    def takes_shots(self) -> bool:
        """Whether the job's task takes shots (discovery's jobs have none: their ``shots`` is 0)."""
        task = tasks().get(self.task)
        return task is None or not task.no_shots

    def describe(self) -> str:
        """``method category N-shot seed S`` (progress bars, messages); ``method category seed S`` for a task
        without shots (discovery's jobs were shown as "0-shot")."""
        shots = f" {self.shots}-shot" if self.takes_shots else ""
        return f"{self.method} {self.category}{shots} seed {self.seed}"


def bank_identity(cfg: RunConfig, seed: int, reads_bank: bool) -> dict[str, int]:
    """The memory bank's part of a job's identity: ``{"bank_seed": N}`` when the job reads the bank and its coreset
    seed is not the run seed, else nothing. Before ``--bank-seed`` every bank was seeded by the run seed, so the keys of
    jobs whose bank is the one they always had (seed 1 at the default bank seed 1, every seed with ``per-run-seed``)
    and of jobs that read no bank stay as they were: their results folders resume, and a job whose bank changed never
    reuses a row made with another (nor a cache entry: the bank's own key holds its seed)."""
    bank_seed = cfg.bank_seed_of(seed)
    return {"bank_seed": bank_seed} if reads_bank and bank_seed != seed else {}


def job_identity(
    cfg: RunConfig, samples: Samples, method: str, mcfg: dict, category: str, shots: int, seed: int, episode_hash: str,
    content: str, task: str = DEFAULT_TASK, reads_bank: bool = False,
) -> dict:
    """What defines a job. ``content`` is the hash of the names and bytes of every image of the category
    (:meth:`Samples.content_hash`): the jobs of a category are redone when any of its images changes. The task is
    part of the identity except for classification, the first task, so the keys of results written before tasks
    existed stay valid (those folders resume); so is the bank seed where it is the run seed (:func:`bank_identity`)."""
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
    ident.update(bank_identity(cfg, seed, reads_bank))
    return ident


def category_content(samples: Samples, category: str, memo: Path | None) -> tuple[str, str | None]:
    """The content hash of a category's images (part of every job key, so replacing an image reruns its jobs) and
    ``None``; or ``"unreadable"`` and the reason, which every job of the category then carries as its error."""
    try:
        return samples.content_hash(category, memo), None
    except DatasetError as exc:
        return "unreadable", str(exc)


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
        shots = ",".join(str(n) for n in sorted({j.shots for j in jobs if j.takes_shots}))
        seeds = ",".join(str(n) for n in sorted({j.seed for j in jobs}))
        where = f"categories {cats}; " + (f"shots {shots}; " if shots else "") + f"seeds {seeds}"
        lines.append(f"  {methods}: {len(jobs)} job(s) ({where}): {err}")
    if len(groups) > max_errors:
        lines.append(f"  ... and {len(groups) - max_errors} more distinct error(s)")
    return lines


def group_jobs(jobs: Sequence[Job], by_method: bool = False) -> list[list[Job]]:
    """The jobs by (category, seed), or by (category, seed, method) with ``by_method``, in plan order: a group runs in
    one process (a worker keeps its bank, features and models in memory for the next group it gets).

    Classification groups by method too (:attr:`bench.run.job.TaskJobs.group_by_method`): a seed's paper methods
    fine-tune for minutes each, so one group per seed left a worker idle on a 1-seed grid and for the last seeds of
    a 5-seed grid on 2 workers (3 rounds of 2 seeds); their shot-independent work is done before the groups
    (the preparation stage) and everything else they share is cached on disk."""
    groups: dict[tuple, list[Job]] = {}
    for j in jobs:
        groups.setdefault((j.category, j.seed, j.method) if by_method else (j.category, j.seed), []).append(j)
    return list(groups.values())
