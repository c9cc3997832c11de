"""The grid: plan jobs from a :class:`RunConfig`, run what is not finished, append one result row per job.

    from bench.run import RunConfig, execute
    report = execute(RunConfig(methods=["protonet"], dataset="synthetic-tiny", backbone="resnet18", weights="random"))

Modules: :mod:`~bench.run.config` (the options, the feature and method configurations built once),
:mod:`~bench.run.plan` (jobs, their identity, groups), :mod:`~bench.run.job` (one job: its context, its method,
its row), :mod:`~bench.run.workers` (worker processes, signals, Dask) and :mod:`~bench.run.grid` (preflight and
the loop); :mod:`~bench.run.defaults` holds the plain defaults the command line states. The row's metrics are
:mod:`bench.metrics`, its environment record :mod:`~bench.run.envinfo`.

The names below are imported on first use (PEP 562): importing ``bench.run.defaults`` must not load torch, so
that ``python -m bench --help`` and a one-line option error answer at once (issue #24).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.run.classification import plan, run_job
    from bench.run.config import RunConfig, resolve_device
    from bench.run.grid import RunReport, execute, preflight
    from bench.run.job import build_method, make_context
    from bench.run.plan import Job, failure_groups, failure_lines

_WHERE = {
    "Job": "plan", "RunConfig": "config", "RunReport": "grid", "build_method": "job", "execute": "grid",
    "failure_groups": "plan", "failure_lines": "plan", "make_context": "job", "plan": "classification",
    "preflight": "grid", "resolve_device": "config", "run_job": "classification",
}  # fmt: skip
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    """A public name of the package, imported from its module on first use."""
    if name not in _WHERE:
        raise AttributeError(f"module 'bench.run' has no attribute {name!r}")
    return getattr(importlib.import_module(f"bench.run.{_WHERE[name]}"), name)
