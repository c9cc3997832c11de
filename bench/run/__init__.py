"""The grid: plan jobs from a :class:`RunConfig`, run what is not finished, append one result row per job.

    from bench.run import RunConfig, execute
    report = execute(RunConfig(methods=["protonet"], dataset="synthetic-tiny", backbone="resnet18", weights="random"))

Modules: :mod:`~bench.run.config` (the options, the feature and method configurations built once),
:mod:`~bench.run.plan` (jobs, their identity, groups), :mod:`~bench.run.job` (one job: its context, its method,
its row), :mod:`~bench.run.workers` (worker processes, signals, Dask) and :mod:`~bench.run.grid` (preflight and
the loop). The row's metrics are :mod:`bench.metrics`, its environment record :mod:`~bench.run.envinfo`.
"""

from bench.run.config import RunConfig, resolve_device
from bench.run.grid import RunReport, execute, preflight
from bench.run.classification import plan, run_job
from bench.run.job import build_method, make_context
from bench.run.plan import Job, failure_groups, failure_lines

__all__ = [
    "Job", "RunConfig", "RunReport", "build_method", "execute", "failure_groups", "failure_lines", "make_context",
    "plan", "preflight", "resolve_device", "run_job",
]  # fmt: skip
