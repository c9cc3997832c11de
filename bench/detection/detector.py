"""The detector contract and the detector registry (few-shot anomaly detection, docs/tasks.md §A).

A detector is a class with a dataclass ``Config`` that

1. is built with ``(config, ctx)``, where ``ctx`` is the job's :class:`~bench.method.TaskContext` (the cached
   feature store, seeded random streams, the device, the cache root, the pseudo-defect textures, a ``log`` for
   training curves); for a detection job ``ctx.train_paths`` holds the k shots and nothing else of the category,
2. is ``fit`` on the k normal shots (file paths), and
3. ``score``\\s test images: an array of shape (N,), higher = more anomalous; a detector that localises also
   gives ``anomaly_maps``: (N, h, w), higher = more anomalous (``has_maps = True``; the maps are what
   ``bench maps`` writes as PNG files for the discovery task, docs/tasks.md §B.1).

Register with the decorator; stacking it registers named variants (ablations) of the same class, exactly as
:func:`bench.method.register_method`::

    @register_detector("gaussian", description="Mahalanobis distance to a Gaussian of pooled features")
    class GaussianDetector(Detector):
        Config = GaussianConfig

Adding a detector = one new file in ``detectors/`` (installed as ``bench.detectors``); it is imported automatically,
listed by ``python -m bench list detectors`` and run by ``python -m bench run --task detection --method NAME``. The
registry entries are :class:`~bench.method.MethodSpec` objects (a class, its variant's defaults, a description),
so ``--set`` options are checked and coerced by the same code as the classifiers'; the task table
(:data:`bench.tasks.BUILTIN`, entry ``detection``) names this registry.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from bench.method import MethodBase, MethodSpec, find_spec, method_registry, register_spec
from bench.registry import Registry, UnknownNameError

DETECTION_TASK = "detection"
"""The task name of detection rows and jobs (:data:`bench.results.OK_METRICS`: ``image_auroc``)."""


class Detector(MethodBase):
    """Base class of every few-shot anomaly detector (docs/tasks.md §A: k normal shots, image AUROC); the shared
    contract (``Config``, ``(config, ctx)``, :meth:`reads`, :meth:`extra_info`) is :class:`bench.method.MethodBase`."""

    task: ClassVar[str] = DETECTION_TASK
    has_maps: ClassVar[bool] = False  # whether :meth:`anomaly_maps` gives patch-level maps

    @abc.abstractmethod
    def fit(self, normal_paths: Sequence[str]) -> None:
        """Learn normality from the k shots (and nothing else of the category: no test image, no defect label)."""

    @abc.abstractmethod
    def score(self, paths: Sequence[str]) -> np.ndarray:
        """Image anomaly scores of shape (N,), higher = more anomalous."""

    def anomaly_maps(self, paths: Sequence[str]) -> np.ndarray:
        """Patch anomaly maps of shape (N, h, w) on the network's input frame, higher = more anomalous."""
        raise NotImplementedError(f"detector {self.name or type(self).__name__} gives no anomaly maps")

    @classmethod
    def uses_synthetic_negatives(cls, config: Any) -> bool:
        """Whether this configuration sees generated anomalies (pseudo defects) while fitting; every row says it."""
        return False

    @classmethod
    def reads(cls, config: Any) -> set[str]:
        """``{"patch"}`` when the configuration reads the feature store's patch features of the shots and the test
        images (a parallel run extracts them first, split over the workers); ``set()`` otherwise."""
        return set()


DETECTORS: Registry[MethodSpec] = method_registry("detector", "bench.detectors", DETECTION_TASK,
                                                  "python -m bench list detectors")


def register_detector(
    name: str, description: str = "", overrides: dict[str, Any] | None = None, tags: Sequence[str] = ()
) -> Callable[[type[Detector]], type[Detector]]:
    """Class decorator: register ``cls`` (with config ``overrides``) under ``name``. Stack it for variants."""

    def deco(cls: type[Detector]) -> type[Detector]:
        register_spec(DETECTORS, MethodSpec, Detector, "register_detector", cls, name, description, overrides, tags)
        return cls

    return deco


def get_detector(name: str) -> MethodSpec:
    """The registered detector ``name`` (every module of ``bench.detectors`` is imported first;
    :func:`bench.method.find_spec`: another task's method is a :class:`~bench.errors.ConfigError` naming its task).

    Raises:
        ConfigError: ``name`` is another task's method; UnknownNameError: an unknown name, with the closest ones.
    """
    return find_spec(DETECTION_TASK, name)


__all__ = [
    "DETECTION_TASK", "DETECTORS", "Detector", "UnknownNameError", "get_detector", "register_detector",
]  # fmt: skip
