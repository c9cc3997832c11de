"""A toy fourth task from a single test-only package (docs/architecture.md, "The task seam": adding a task = one
package + one line). ``tests/test_layout.py`` registers it and runs it end to end through ``bench run``, ``bench
report`` and ``bench leaderboard``.

The task ("toy"): a method sees a category's test images, unlabelled, and says for each whether it is good; the
metric is the share it gets right (``toy_accuracy``). Everything task-specific is here: the contract (:class:`Toy`)
and its registry, one method, the episode builder, the job core and its run side, the metric, one report section,
one leaderboard section and one summary block; the one line is :data:`TASK` (:func:`bench.tasks.register_task`).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bench.datasets import Samples
from bench.episodes import Persisted
from bench.features.store import FeatureStore
from bench.method import MethodBase, MethodSpec, TaskContext, config_dict, config_hash, find_spec, method_registry, register_spec
from bench.report.document import ReportOptions, Section, Table
from bench.report.load import Results
from bench.run.config import RunConfig
from bench.run.job import JobCore, TaskJobs, run_task_job
from bench.run.plan import RUNNER_VERSION, Job, category_content
from bench.tasks import Task, register_task

NAME = "toy"


# -- the contract and its registry
class Toy(MethodBase):
    """A toy method: ``is_good`` (N,) booleans for N unlabelled images."""

    task = NAME

    @abc.abstractmethod
    def is_good(self, paths: Sequence[str]) -> np.ndarray:
        """(N,) booleans."""


TOYS = method_registry("toy", "tests.toytask", NAME, "python -m bench list toys")


def register_toy(name: str, description: str = "") -> Any:
    def deco(cls: type[Toy]) -> type[Toy]:
        register_spec(TOYS, MethodSpec, Toy, "register_toy", cls, name, description, None, ())
        return cls

    return deco


# -- one method
@dataclass
class ByNameConfig:
    word: str = "good"


@register_toy("by-name", description="good when the file's folder is named good (a cheat: it reads the layout)")
class ByName(Toy):
    Config = ByNameConfig

    def is_good(self, paths: Sequence[str]) -> np.ndarray:
        return np.array([Path(p).parent.name == self.config.word for p in paths])


# -- the episode: every test image of a category
@dataclass(frozen=True)
class ToySet(Persisted):
    root: str = ""
    paths: tuple[str, ...] = ()
    good: tuple[bool, ...] = ()

    def manifest(self) -> dict:
        return {"paths": [self.rel(p) for p in self.paths], "good": list(self.good)}


def toy_set(samples: Samples, category: str) -> ToySet:
    t = samples.table
    sel = t[(t.category == category) & (t.split == "test")].sort_values("image_path")
    return ToySet(root=str(samples.root), paths=tuple(sel.image_path), good=tuple(bool(x) for x in sel.label == "good"))


# -- the metric
def toy_accuracy(good: Sequence[bool], said: Sequence[bool]) -> float:
    return float(np.mean(np.asarray(good) == np.asarray(said)))


# -- the run side: the job core inside the one skeleton, the planner
class ToyCore(JobCore):
    def support_rule(self, ep: ToySet) -> str:
        return "none: every test image, unlabelled"

    def episode_fields(self, ep: ToySet) -> dict[str, Any]:
        return {"n_queries": len(ep.paths)}

    def solve(self, cfg: RunConfig, samples: Samples, job: Job, store: FeatureStore, ctx: TaskContext, ep: ToySet,
              row: dict[str, Any]) -> None:
        spec = find_spec(NAME, job.method)
        method = spec.cls(job.config, ctx)
        said = method.is_good(list(ep.paths))
        row.update(toy_accuracy=toy_accuracy(ep.good, said), status="ok", error=None)


def plan_toy(cfg: RunConfig, samples: Samples) -> list[Job]:
    jobs = []
    for category in samples.categories():
        content, err = category_content(samples, category, None)
        ep = toy_set(samples, category)
        for seed in cfg.seeds:
            for name in cfg.methods:
                config = cfg.method_configs[name]
                mcfg = config_dict(config)
                key = config_hash({"runner": RUNNER_VERSION, "task": NAME, "method": name, "method_config": mcfg,
                                   "dataset_content": content, "category": category, "seed": seed, "set": ep.hash})
                jobs.append(Job(method=name, method_config=mcfg, category=category, shots=0, seed=seed, key=key,
                                episode=ep, error=err, dataset_content=content, config=config, task=NAME))  # type: ignore[arg-type]
    return jobs


JOBS = TaskJobs(plan=plan_toy, feature_work=lambda cfg, samples, jobs: [],
                run=lambda cfg, samples, job, out: run_task_job(ToyCore(), cfg, samples, job, out))


# -- the report side
def _table(res: Results) -> Table | None:
    ok = res.ok()
    ok = ok[ok.task == NAME]
    if ok.empty:
        return None
    display = ok.groupby(["label", "category"]).accuracy.mean().unstack("category").map(lambda v: f"{v:.1f}")
    return Table("toy-accuracy", "Toy accuracy (%)", display, caption="share of test images called right, mean over seeds")


def report_sections(res: Results, opts: ReportOptions) -> list[Section]:
    t = _table(res)
    return [Section("Toy task: accuracy", tables=[t])] if t is not None else []


def leaderboard_sections(res: Results, n_boot: int, boot_seed: int, plots_dir: Path | None) -> list[Section]:
    t = _table(res)
    return [Section("Toy task: ranking", tables=[t])] if t is not None else []


def summary_blocks(res: Results) -> list[str]:
    t = _table(res)
    return [f"### toy\n\n{t.display.to_string()}"] if t is not None else []


# -- the one line
TASK = Task(NAME, "Toy task", "toy_accuracy", ("all-test",), 1, "toys", "toy (--task toy)", "tests.toytask:TOYS",
            "tests.toytask:toy_set", "tests.toytask:JOBS", "tests.toytask:report_sections",
            "tests.toytask:leaderboard_sections", "tests.toytask:summary_blocks")
register_task(TASK)

__all__ = ["JOBS", "NAME", "TASK", "TOYS", "Toy", "register_toy", "toy_accuracy", "toy_set"]
