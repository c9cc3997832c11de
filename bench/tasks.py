"""The task records: one :class:`Task` per task, holding everything task-specific by reference (docs/architecture.md,
"The task seam"; docs/tasks.md).

The grid, the reports, the summary and the CLI loop over :func:`tasks` and never branch on a task's name. A record
is plain data: names, numbers and dotted references (``"module:attribute"``) to its hooks, resolved on first use by
:meth:`Task.hook`. So this module and the records import nothing of the harness: a report reads a task's sections,
titles and metric name without importing ``bench.run``, and only the run resolves the run-side hooks
(docs/architecture.md: ``report/`` never reaches ``run/``; ``tests/test_layout.py`` checks the references too).

Adding a task = one package (its method contract and registry, its episode builder, its job core, its metric and
its report sections) + one line: its record in :data:`BUILTIN`, or, for a plugin task (``--plugins``), one call of
:func:`register_task` in the plugin.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

@dataclass(frozen=True)
class Task:
    """One task of the harness.

    Attributes:
        name: the ``--task`` value (and the ``task`` field of its rows).
        title: its name in a document title (``Few-shot anomaly detection``).
        metric: the number an ``ok`` row carries (the report's ``accuracy`` column, in percent).
        protocols: the ``--protocol`` values it accepts, its default first.
        min_defect_types: the default of ``--min-defect-types`` (categories with fewer defect types are skipped).
        list_name: ``bench list NAME`` lists its methods; ``list_header``: the name column's header there.
        registry: its method registry (:func:`bench.method.method_registry`).
        episode: the builder of a job's images from (samples, category, ...).
        jobs: run side, a :class:`bench.run.job.TaskJobs` (planner, feature work, job runner around the one job
            skeleton, notes, shots check).
        report: report side, ``(res, ReportOptions) -> list[Section]``: its sections of ``bench report``.
        leaderboard: report side, ``(res, n_boot, boot_seed, plots_dir) -> list[Section]``: of ``bench leaderboard``.
        summary: report side, ``(res) -> list[str]``: its Markdown blocks of the end-of-run summary.
        rows: report side, a :class:`bench.report.rows.RowRule` or ``""``: how a report checks its ``ok`` rows
            (metric ranges, recomputation from the stored predictions); ``""``: used as they are.
        check: run side, ``(RunConfig) -> None`` or ``""``: the task's own checks of a run's options (raises
            :class:`~bench.errors.ConfigError`).
        no_shots: why ``--shots`` does not apply to it (``""``: it takes shots).
        options: the task-only run options it reads (``maps``: ``--maps``); other tasks refuse them.

    ``registry`` to ``check`` are dotted references ``"module:attribute"`` (:meth:`hook`).
    """

    name: str
    title: str
    metric: str
    protocols: tuple[str, ...]
    min_defect_types: int
    list_name: str
    list_header: str
    registry: str
    episode: str
    jobs: str
    report: str
    leaderboard: str
    summary: str
    rows: str = ""
    check: str = ""
    no_shots: str = ""
    options: tuple[str, ...] = ()

    @property
    def list_command(self) -> str:
        """How a user lists its methods."""
        return f"python -m bench list {self.list_name}"

    def hook(self, field: str) -> Any:
        """The object the reference ``field`` names, imported on first use (``None`` for an empty reference)."""
        if not getattr(self, field):
            return None
        module, _, attr = getattr(self, field).partition(":")
        return getattr(importlib.import_module(module), attr)


BUILTIN: tuple[Task, ...] = (
    Task("classification", "Few-shot defect-type classification", "accuracy", ("paper", "random", "mvtec-fs", "good-or-defect"), 2, "methods",
         "method", "bench.method:METHODS", "bench.classification:make_episode", "bench.run.classification:JOBS",
         "bench.report.tables:classification_sections", "bench.report.leaderboard:classification_sections",
         "bench.report.summary:classification_blocks", rows="bench.report.rows:CLASSIFICATION",
         check="bench.run.classification:check_config", options=("maps",)),
    Task("discovery", "Anomaly class discovery", "cluster_accuracy", ("ncd", "defects-only"), 1, "discoverers",
         "discoverer (--task discovery)", "bench.discovery.contract:DISCOVERERS",
         "bench.discovery.protocol:discovery_set", "bench.run.discovery:JOBS", "bench.report.discovery:report_sections",
         "bench.report.discovery:leaderboard_sections", "bench.report.discovery:summary_blocks",
         rows="bench.report.rows:DISCOVERY", check="bench.run.discovery:check_config",
         no_shots="every image of the protocol's set is grouped, without labelled shots", options=("maps",)),
    Task("detection", "Few-shot anomaly detection", "image_auroc", ("kshot_normals",), 1, "detectors",
         "detector (--task detection)", "bench.detection.detector:DETECTORS",
         "bench.detection.episodes:make_normal_shots", "bench.run.detection:JOBS", "bench.report.detection:sections",
         "bench.report.detection:leaderboard_sections", "bench.report.detection:summary_blocks",
         rows="bench.report.rows:DETECTION", check="bench.run.detection:check_config"),
)  # fmt: skip
"""The built-in tasks, in the order documents show them: one line each (docs/architecture.md, "The task seam")."""

_TASKS: dict[str, Task] = {t.name: t for t in BUILTIN}


def tasks() -> dict[str, Task]:
    """Every task, by name: the built-in ones (:data:`BUILTIN`) and those registered by plugins (:func:`register_task`)."""
    return _TASKS


def register_task(task: Task) -> Task:
    """Add a task (a plugin's, or a test's toy task); registering the same record again is a no-op.

    Raises:
        ValueError: another record under the same name.
    """
    if _TASKS.get(task.name, task) != task:
        raise ValueError(f"task {task.name!r} is already registered")
    _TASKS[task.name] = task
    return task


def unregister_task(name: str) -> None:
    """Remove a plugin's task (tests: their toy task); a built-in task cannot be removed."""
    if any(t.name == name for t in BUILTIN):
        raise ValueError(f"task {name!r} is built in")
    _TASKS.pop(name, None)


def get_task(name: str) -> Task:
    """The task ``name``.

    Raises:
        KeyError: no such task (the CLI's choices and :class:`bench.run.config.RunConfig` refuse it first).
    """
    return tasks()[name]


def ok_metric(task: str) -> str | None:
    """The metric an ``ok`` row of ``task`` carries; ``None`` for a task no record names."""
    found = tasks().get(task)
    return found.metric if found else None


__all__ = ["BUILTIN", "Task", "get_task", "ok_metric", "register_task", "tasks", "unregister_task"]
