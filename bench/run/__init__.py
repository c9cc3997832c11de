"""The grid: plan jobs from a :class:`RunConfig`, run what is not finished, append one result row per job.

    from bench.run import RunConfig, execute
    report = execute(RunConfig(methods=["protonet"], dataset="synthetic-tiny", weights="random", backbone="resnet18"))
"""

from bench.run.grid import Job, RunConfig, execute, plan, preflight, run_job

__all__ = ["Job", "RunConfig", "execute", "plan", "preflight", "run_job"]
