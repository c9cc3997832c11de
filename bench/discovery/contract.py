"""The discovery-method contract and its registry (docs/tasks.md, "Anomaly class discovery").

A discovery method groups the images of one category into K clusters without any label (AnomalyNCD, Huang et al.,
CVPR 2025, arXiv 2410.14379; Anomaly Clustering, Sohn et al., WACV 2023). It is a class with a dataclass
``Config`` that

1. is built with ``(config, ctx)``: ``ctx`` is the job's :class:`~bench.method.TaskContext` (the cached feature
   store and the category's memory bank, seeded random streams, the device, a ``log`` dict for loss curves), the
   same context a classifier gets (``shots`` is 0);
2. ``fit_predict``\\s a :class:`DiscoverySet`: the N images to group (transductive: exactly the images it is scored
   on), the number of classes K (given, ``k_known``), their anomaly maps on demand and, for oracle rows only,
   their ground-truth masks; it returns (N,) cluster ids in [0, K). The runner, never the method, holds the labels.

Register with the decorator (stack it for variants, as :func:`bench.method.register_method`)::

    @register_discoverer("kmeans", description="k-means on pooled PatchCore features")
    @register_discoverer("kmeans-residual", overrides={"features": "residual"})
    class KMeansDiscoverer(Discoverer):
        Config = KMeansConfig

Adding a discovery method = one new file in ``discoverers/`` (installed as ``bench.discoverers``); it is imported
automatically, listed by ``python -m bench list discoverers`` and runnable with ``bench run --task discovery``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import numpy as np

from bench.errors import DatasetError
from bench.method import MethodBase, MethodSpec, find_spec, method_registry, register_spec
from bench.registry import Registry

if TYPE_CHECKING:
    from bench.discovery.maps import Frame, MapSet

TASK = "discovery"
"""The task name (:data:`bench.results.OK_METRICS`)."""


@dataclass
class DiscoverySet:
    """The images a discovery method groups, and what it may read about them besides the pixels.

    Attributes:
        dataset, category: where they come from.
        paths: (N,) image files, in the protocol's order (:func:`bench.discovery.protocol.discovery_set`).
        k: the number of classes K (given to every method: ``k_known``).
        frame: the geometry shared by maps, masks and crops (:class:`bench.discovery.maps.Frame`): each image as the
            feature extractor sees it (its image fit) on a ``side`` × ``side`` grid.
        mask_paths: (N,) ground-truth mask files ("" = none: a normal image, or a dataset without masks). Only oracle
            methods read them (:meth:`gt_masks`), and their rows say so.
        includes_good: whether normal images are among the set (protocol ``ncd``): what the protocol says, not a
            label (AnomalyNCD's pseudo-label correction assumes a "normal" cluster).
        map_source: builds the anomaly maps of all N images (called at most once, on first :meth:`maps`); ``None``
            when the run has none.
    """

    dataset: str
    category: str
    paths: tuple[str, ...]
    k: int
    frame: "Frame"
    mask_paths: tuple[str, ...] = ()
    includes_good: bool = True
    map_source: Callable[[], "MapSet"] | None = None
    _maps: Any = field(default=None, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.paths)

    def maps(self) -> "MapSet":
        """The anomaly maps of the N images, (N, side, side) uint8, normalised jointly over the set as AnomalyNCD's
        reference does (computed once; :mod:`bench.discovery.maps`)."""
        if self._maps is None:
            if self.map_source is None:
                raise DatasetError("this run has no anomaly maps (PatchCore maps need normal train images; or pass --maps)")
            self._maps = self.map_source()
        return self._maps

    def gt_masks(self) -> np.ndarray:
        """(N, side, side) bool ground-truth masks in the frame (an image without a mask file: all False).

        Raises:
            DatasetError: the dataset has no mask for any defective image (e.g. the shared MVTec AD screw subset).
        """
        from bench.discovery.maps import load_mask

        if not any(self.mask_paths):
            raise DatasetError(
                f"category {self.category!r} of dataset {self.dataset!r} has no ground-truth masks: an oracle-mask "
                "method needs them (MVTec AD's ground_truth/ folder, MTD's mask PNGs)."
            )
        return np.stack([load_mask(m, p, self.frame) for p, m in zip(self.paths, self.mask_paths)])


class Discoverer(MethodBase):
    """Base class of every anomaly class discovery method (see the module docstring for the contract; what every
    kind shares is :class:`bench.method.MethodBase`)."""

    task: ClassVar[str] = TASK

    @abc.abstractmethod
    def fit_predict(self, data: DiscoverySet) -> np.ndarray:
        """Group ``data``: (N,) integer cluster ids in [0, data.k)."""

    @classmethod
    def reads(cls, config: Any) -> set[str]:
        """What this configuration reads besides the pixels: any of ``"patch"`` (PatchCore patch features of the
        set), ``"bank"`` (the memory bank: residuals or PatchCore maps), ``"maps"`` (anomaly maps), ``"gt_masks"``
        (ground-truth masks: an oracle row). The runner records ``maps`` only for methods that read them and
        extracts these features first in parallel runs."""
        return {"patch"}

    @classmethod
    def notes(cls, config: Any) -> list[str]:
        """Lines printed before a run with this configuration (e.g. that a network is randomly initialised)."""
        return []


@dataclass(frozen=True)
class DiscovererSpec(MethodSpec):
    """A registry entry: a :class:`Discoverer` class plus the default config of this named variant (the option
    handling is :class:`bench.method.MethodSpec`'s: ``--set key=value`` and ``--set name.key=value``)."""


DISCOVERERS: Registry[DiscovererSpec] = method_registry("discoverer", "bench.discoverers", TASK,
                                                        "python -m bench list discoverers")


def register_discoverer(
    name: str, description: str = "", overrides: dict[str, Any] | None = None, tags: Sequence[str] = ()
) -> Callable[[type[Discoverer]], type[Discoverer]]:
    """Class decorator: register ``cls`` (with config ``overrides``) under ``name``. Stack it for variants."""

    def deco(cls: type[Discoverer]) -> type[Discoverer]:
        register_spec(DISCOVERERS, DiscovererSpec, Discoverer, "register_discoverer", cls, name, description, overrides, tags)
        return cls

    return deco


def get_discoverer(name: str) -> DiscovererSpec:
    """The registered discovery method ``name`` (every module of ``bench.discoverers`` is imported first)."""
    return find_spec(TASK, name)  # type: ignore[return-value]
