"""The tasks a run can solve: for each, its method registry, its metric, its protocols and its class-set default.

``bench run --task T`` (CLI and YAML ``task:``) picks one entry of :data:`TASKS`; every method name of the run must be
registered for that task (checked before any job: one ``error:`` line, exit status 2). The jobs of a task are
planned and run by the functions :data:`bench.run.grid.TASK_JOBS` names. Adding a task = one entry here (its registry
and episode builder), its metric in :data:`bench.results.OK_METRICS`, and one entry there (docs/tasks.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from bench.detection.detector import DETECTORS
from bench.detection.episodes import DETECTION_PROTOCOL, make_normal_shots
from bench.discovery.contract import DISCOVERERS
from bench.discovery.protocol import PROTOCOLS as DISCOVERY_PROTOCOLS
from bench.discovery.protocol import discovery_set
from bench.episodes import make_episode
from bench.method import METHODS, MethodSpec, check_options, find_spec
from bench.registry import Registry
from bench.results import OK_METRICS


@dataclass(frozen=True)
class Task:
    """One task of the harness.

    Attributes:
        name: the ``--task`` value (and the ``task`` field of its rows).
        registry: its methods (``--method`` names).
        protocols: the ``--protocol`` values it accepts, its default first.
        min_defect_types: the default of ``--min-defect-types`` (categories with fewer defect types are skipped).
        episode: the builder of a job's images (classification: :func:`bench.episodes.make_episode`; detection:
            :func:`bench.detection.episodes.make_normal_shots`; discovery:
            :func:`bench.discovery.protocol.discovery_set`).
        list_command: how a user lists its methods.
    """

    name: str
    registry: Registry
    protocols: tuple[str, ...]
    min_defect_types: int
    episode: Callable[..., Any]
    list_command: str

    @property
    def metric(self) -> str:
        """The number an ``ok`` row of this task carries (:data:`bench.results.OK_METRICS`)."""
        return OK_METRICS[self.name]

    def specs(self, names: Sequence[str]) -> list[MethodSpec]:
        """The registered methods ``names`` of this task.

        Raises:
            ConfigError: a name registered for another task; UnknownNameError: an unknown name (closest ones named).
        """
        return [find_spec(self.name, name) for name in names]

    def configs(self, names: Sequence[str], options: dict[str, Any] | None) -> dict[str, Any]:
        """Each method's configuration with the ``--set`` options that apply (:func:`bench.method.check_options`)."""
        return check_options(self.specs(names), options)


TASKS: dict[str, Task] = {
    "classification": Task("classification", METHODS, ("paper", "random"), 2, make_episode, "python -m bench list methods"),
    "detection": Task("detection", DETECTORS, (DETECTION_PROTOCOL,), 1, make_normal_shots, "python -m bench list detectors"),
    "discovery": Task("discovery", DISCOVERERS, DISCOVERY_PROTOCOLS, 1, discovery_set, "python -m bench list discoverers"),
}
"""Every task, by name; ``classification`` is :data:`bench.results.DEFAULT_TASK`."""
