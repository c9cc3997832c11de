"""The method contract and the method registry.

A method is a class with a dataclass ``Config`` that

1. is built with ``(config, ctx)``, where ``ctx`` is a :class:`TaskContext` giving everything shared and
   cached (features, memory bank, normal images, random streams, device),
2. is ``fit`` on the support set (``SupportSet``; it may also use the category's normal training images
   and generated pseudo-defects through ``ctx``), and
3. ``predict``\\s class scores for query images: an array of shape (Q, C), argmax = predicted class.

The torch model of a method is a plain ``nn.Module`` in the same file, separate from this glue.
Register with the decorator; stacking it registers named variants of the same class::

    @register_method("protonet", description="nearest class mean of pooled PatchCore features")
    @register_method("protonet-residual", overrides={"features": "residual"}, description="... on residuals")
    class ProtoNet(Method):
        Config = ProtoNetConfig

Adding a method = one new file in ``methods/``; it is imported automatically, listed by
``python -m bench list methods`` and picked up by the registry-parametrised tests.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
import types
import typing
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Sequence

import numpy as np
import torch

from bench.errors import ConfigError, brief, brief_list, clip
from bench.registry import Registry
from bench.results import DEFAULT_TASK
from bench.seeding import numpy_rng, seed_torch_global, torch_generator

if TYPE_CHECKING:
    from bench.features import FeatureConfig, FeatureStore, MemoryBank


@dataclass(frozen=True)
class SupportSet:
    """The labelled few-shot examples.

    Attributes:
        paths: (C·n,) image paths, grouped by class.
        labels: (C·n,) class indices.
        class_names: the C class names.
        regions: (C·n,) the defect region of each support item (:class:`bench.classification.region_episodes.Region`: its image and
            mask), given under a region unit (``--unit region``, ``--protocol mvtec-fs``, the defect shots of
            ``good-or-defect``); ``None`` under the image unit. Only methods that take masks read it
            (:attr:`Method.takes_masks`); the others see the images.
    """

    paths: tuple[str, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]
    regions: tuple[Any, ...] | None = None

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def shots(self) -> int:
        return len(self.paths) // max(1, self.n_classes)

    def by_class(self) -> list[list[str]]:
        groups: list[list[str]] = [[] for _ in self.class_names]
        for p, y in zip(self.paths, self.labels):
            groups[y].append(p)
        return groups


@dataclass
class TaskContext:
    """What a method may use besides the support set. Everything expensive is lazy and cached.

    Attributes:
        dataset, category, seed, shots: the job.
        train_paths: the category's normal ``train/good`` images (sorted).
        store_factory: builds the shared :class:`~bench.features.FeatureStore` on first use.
        coreset_ratio: for the memory bank.
        bank_seed: the coreset seed of the memory bank (``None`` = ``seed``). The run gives every seed the same one
            by default (``--bank-seed``, :func:`bench.run.config.RunConfig.bank_seed_of`): the bank depends on the
            category's normal images, not on the episode, so it is built once per category.
        device: torch device for method training.
        cache_root: where methods may cache artefacts (e.g. pretrained classifiers), keyed by content.
        textures: path of a DTD folder for pseudo-defects (``None`` = built-in procedural bank).
        feature_config: the run's feature configuration (``RunConfig.features``, handed down): a method that runs
            the backbone itself (``direct``) reads it here without building the PatchCore feature store.
        log: the method may record training curves here (losses per step); they go into the result row.
    """

    dataset: str
    category: str
    seed: int
    shots: int
    train_paths: list[str]
    store_factory: Callable[[], "FeatureStore"]
    coreset_ratio: float = 0.1
    bank_seed: int | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    cache_root: Path | None = None
    textures: str | None = None
    feature_config: FeatureConfig | None = None
    log: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @cached_property
    def features(self) -> "FeatureStore":
        return self.store_factory()

    def bank(self) -> "MemoryBank":
        """The PatchCore memory bank of this category's normal images, its coreset seeded by :attr:`bank_seed` (cached)."""
        if not self.train_paths:
            raise ConfigError(
                f"category {self.category!r} has no train/good images: this method needs normal images for the "
                "PatchCore memory bank. Add them or choose a method that does not use residual features."
            )
        with self.timer("bank"):
            seed = self.seed if self.bank_seed is None else self.bank_seed
            return self.features.bank(self.train_paths, seed=seed, coreset_ratio=self.coreset_ratio)

    def rng(self, stream: str) -> np.random.Generator:
        return numpy_rng(self.seed, "method", stream)

    def torch_generator(self, stream: str) -> torch.Generator:
        return torch_generator(self.seed, "method", stream)

    def seed_torch(self, stream: str) -> None:
        seed_torch_global(self.seed, "method", stream)

    @contextmanager
    def timer(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t0


class MethodBase(abc.ABC):
    """What every method kind has in common (the shared contract; docs/architecture.md, "the task seam"): a dataclass
    ``Config``, the task it solves, construction with ``(config, ctx)``, :meth:`reads` (what of the shared pipeline
    a configuration reads) and :meth:`extra_info`. A task's kind adds what it does (classification:
    :class:`Method`; detection: :class:`bench.detection.Detector`; discovery: :class:`bench.discovery.Discoverer`) and
    is registered through :func:`register_spec`, the one registration path with the same checks for every kind."""

    Config: ClassVar[type]
    task: ClassVar[str]  # what it solves (bench.results.OK_METRICS); a run mixes no tasks
    name: str = ""  # set per instance by the runner (variants share the class)

    def __init__(self, config: Any, ctx: TaskContext) -> None:
        self.config = config
        self.ctx = ctx

    def extra_info(self) -> dict[str, Any]:
        """Anything method-specific to store in the result row (kept small)."""
        return {}

    @classmethod
    def reads(cls, config: Any) -> set[str]:
        """What this configuration reads of the shared pipeline besides the pixels: any of ``"patch"`` (PatchCore
        patch features of the job's images), ``"bank"`` (the category's memory bank, i.e. features of its normal
        images), and per task more (discovery: ``"maps"``, ``"gt_masks"``). Parallel runs extract these once, split
        over the workers, before the jobs start; a method with its own backbone returns ``set()``."""
        return set()


class Method(MethodBase):
    """Base class of every few-shot defect-type classifier (the classification task's kind)."""

    task: ClassVar[str] = DEFAULT_TASK

    @abc.abstractmethod
    def fit(self, support: SupportSet) -> None:
        """Learn from the support set (and, optionally, normal images / pseudo-defects via ``self.ctx``)."""

    @abc.abstractmethod
    def predict(self, query_paths: Sequence[str]) -> np.ndarray:
        """Return class scores of shape (Q, C); higher = more likely."""

    @classmethod
    def prepares(cls, config: Any) -> bool:
        """Whether :meth:`prepare` has work for ``config`` (a parallel run plans its preparation stage from this)."""
        return False

    def prepare(self) -> None:
        """Do ahead, and cache, the work of this configuration that depends on the category and seed but not on the
        shots (the paper's pseudo-defect pretraining), so that every shot's :meth:`fit` finds it. A parallel run
        calls it once per (method configuration, category, seed) before the jobs, spread over its workers; ``fit``
        must give the same result whether or not it ran."""

    takes_masks: ClassVar[bool] = False
    """Whether the method reads the regions' masks (:class:`RegionMethod`): its rows' localisation is the run's
    (``gt`` or ``estimated``); a method that does not take them sees whole images (localisation ``none``)."""

    def predict_regions(self, query_paths: Sequence[str], regions: Sequence[Any]) -> np.ndarray:
        """Class scores (Q, C) of the queries' regions; a method that does not take masks scores the images."""
        return self.predict(query_paths)

    @classmethod
    def reads(cls, config: Any) -> set[str]:
        """``{"patch"}``, and ``"bank"`` for residual features (the ``features`` option); see
        :meth:`MethodBase.reads`."""
        return {"patch", "bank"} if getattr(config, "features", "raw") == "residual" else {"patch"}

    @classmethod
    def normal_images_needed(cls, config: Any) -> str:
        """What this configuration needs the category's normal training images for ("" = nothing).

        The runner asks before the first job: on a category without normal images (datasets with defect
        classes only) the jobs of a method that needs them fail at once with this reason, the others run.
        The default: the memory bank, when :meth:`reads` says so.
        """
        return "the PatchCore memory bank (residual features)" if "bank" in cls.reads(config) else ""


class RegionMethod(Method):
    """A classifier of defect *regions*: given each item's mask (``../shared/docs/field-protocols.md`` §3). It fits
    on a support set with :attr:`SupportSet.regions` and scores regions (:meth:`predict_regions`); it needs a region
    unit (``--unit region``, ``--protocol mvtec-fs`` or ``good-or-defect``), and the run refuses it otherwise."""

    takes_masks: ClassVar[bool] = True

    def predict(self, query_paths: Sequence[str]) -> np.ndarray:
        raise ConfigError(
            f"method {self.name!r} classifies defect regions and needs their masks: run it with --unit region, "
            "--protocol mvtec-fs or --protocol good-or-defect"
        )

    @abc.abstractmethod
    def predict_regions(self, query_paths: Sequence[str], regions: Sequence[Any]) -> np.ndarray:
        """Class scores (Q, C) of the query regions (each a :class:`bench.classification.region_episodes.Region`)."""


@dataclass(frozen=True)
class MethodSpec:
    """A registry entry: a class plus the default config of this named variant."""

    name: str
    cls: type[MethodBase]  # a Method, Detector or Discoverer: the registry's kind
    overrides: dict[str, Any]
    description: str
    tags: tuple[str, ...]

    def default_config(self) -> Any:
        return self.cls.Config(**self.overrides)

    def option_names(self) -> set[str]:
        return {f.name for f in dataclasses.fields(self.cls.Config)}

    def select_options(self, options: dict[str, Any] | None) -> dict[str, Any]:
        """The user options that apply to this method.

        ``key`` applies to every method of a run whose config has that field (``--set epochs=3`` with
        ``direct protonet`` changes ``direct`` only); ``name.key`` applies to method ``name`` only.
        :func:`check_options` makes sure each option applies somewhere.
        """
        known = self.option_names()
        out: dict[str, Any] = {}
        for k, v in (options or {}).items():
            if "." in k:
                name, key = k.split(".", 1)
                if name == self.name:
                    out[key] = v
            elif k in known:
                out[k] = v
        return out

    def make_config(self, overrides: dict[str, Any] | None = None) -> Any:
        """The variant's defaults with user overrides applied (unknown keys are an error)."""
        values = {**self.overrides, **(overrides or {})}
        known = self.option_names()
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"method {self.name!r} has no option(s) {brief_list(unknown)}. Its options: {', '.join(sorted(known))}."
            )
        try:
            values = coerce_options(self.cls.Config, values)
            return self.cls.Config(**values)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid options for method {self.name!r}: {clip(exc, 300)}") from None


def _coerce(name: str, value: Any, kind: Any) -> Any:
    """``value`` as the declared field type ``kind`` (float, int, bool, str, tuple/list of those, X | None); else ValueError."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):  # X | None
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None:
            return None
        return _coerce(name, value, args[0]) if len(args) == 1 else value
    if origin in (tuple, list):
        item = (typing.get_args(kind) or (Any,))[0]
        if isinstance(value, str):
            value = [v for v in value.replace("[", " ").replace("]", " ").replace(",", " ").split()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        out = [v if item is Any else _coerce(name, v, item) for v in value]
        return tuple(out) if origin is tuple else out
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.strip().lower() in ("true", "yes", "on", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"option {name!r} must be true or false, got {brief(value)}")
    if kind is float:
        if isinstance(value, bool):
            raise ValueError(f"option {name!r} must be a number, got {brief(value)}")
        try:
            return float(value)  # YAML reads "1e-4" (no dot) as a string: accept it as the number it spells
        except (TypeError, ValueError):
            raise ValueError(f"option {name!r} must be a number, got {brief(value)}") from None
    if kind is int:
        if isinstance(value, bool):
            raise ValueError(f"option {name!r} must be an integer, got {brief(value)}")
        if isinstance(value, int):  # as is: float() rounds above 2**53 and overflows above 1e308 (--seeds 10**400)
            return value
        try:
            as_float = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"option {name!r} must be an integer, got {brief(value)}") from None
        if not as_float.is_integer():
            raise ValueError(f"option {name!r} must be an integer, got {brief(value)}")
        return int(as_float)
    if kind is str:
        if isinstance(value, (list, tuple, dict, set)) or value is None:
            raise ValueError(f"option {name!r} must be a name (text), got {brief(value)}")
        return value if isinstance(value, str) else str(value)
    return value


def coerce_options(config_cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Option values converted to the types the ``Config`` dataclass declares.

    ``--set`` values and YAML configs are parsed as YAML scalars, and YAML 1.1 reads ``1e-4`` as the *string*
    "1e-4"; ``--set finetune_passes=0,45`` arrives as a string too. Values are converted here, once, so every
    method receives floats, ints, bools and tuples of the declared types, and a value that cannot be converted
    is a :class:`ValueError` naming the option (shown to the user as a configuration error).
    """
    hints = typing.get_type_hints(config_cls)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    return {k: (_coerce(k, v, hints[k]) if k in fields and k in hints else v) for k, v in values.items()}


KINDS: dict[str, tuple[Registry, str]] = {}
"""Every method registry by task: (registry, how a user lists it), filled by :func:`method_registry`. The
wrong-task hint (:func:`find_spec`) and the one-name-one-task check of :func:`register_spec` read it."""


def method_registry(kind: str, package: str, task: str, list_command: str) -> Registry:
    """A task's method registry (``kind``: what its entries are called; ``package``: the plugin folder whose modules
    register there), known to :data:`KINDS`."""
    registry: Registry = Registry(kind, package=package)
    KINDS[task] = (registry, list_command)
    return registry


METHODS: Registry[MethodSpec] = method_registry("method", "bench.methods", DEFAULT_TASK, "python -m bench list methods")


def register_method(
    name: str,
    description: str = "",
    overrides: dict[str, Any] | None = None,
    tags: Sequence[str] = (),
) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: register ``cls`` (with config ``overrides``) under ``name``. Stack it for variants."""

    def deco(cls: type[Method]) -> type[Method]:
        register_spec(METHODS, MethodSpec, Method, "register_method", cls, name, description, overrides, tags)
        return cls

    return deco


def register_spec(
    registry: Registry, spec_cls: type[MethodSpec], base: type, decorator: str, cls: type, name: str,
    description: str, overrides: dict[str, Any] | None, tags: Sequence[str],
) -> None:
    """What every ``@register_*`` decorator of a task does, the same checks for every kind (methods,
    ``bench.detection``'s detectors, ``bench.discovery``'s discoverers, a plugin task's): ``cls`` is a ``base``
    subclass (a :class:`MethodBase`) with a dataclass ``Config``; ``name`` is not taken by another task's method
    (one name, one task: ``--method`` never needs the task to be found); the description defaults to the docstring's
    first line; the config is built once so that wrong ``overrides`` fail at import time."""
    if not (isinstance(cls, type) and issubclass(cls, base) and issubclass(cls, MethodBase)):
        raise TypeError(f"@{decorator}({name!r}) must decorate a {base.__name__} subclass, got {cls!r}")
    if not dataclasses.is_dataclass(getattr(cls, "Config", None)):
        raise TypeError(f"{cls.__name__}.Config must be a dataclass")
    for task, (other, _) in KINDS.items():
        if other is not registry and name in other:
            raise ValueError(f"{registry.kind} {name!r}: the name is taken by a {other.kind} (task {task!r})")
    desc = description or (cls.__doc__ or "").strip().splitlines()[0]
    spec = spec_cls(name=name, cls=cls, overrides=dict(overrides or {}), description=desc, tags=tuple(tags))
    spec.make_config()  # fail at import time if the overrides are wrong
    registry.add(name, spec, description=desc)


def find_spec(task: str, name: str) -> MethodSpec:
    """The registered method ``name`` of ``task`` (every module of its plugin folder is imported first): the one
    lookup of every kind, with the one wrong-task hint.

    Raises:
        ConfigError: ``name`` is another task's method (the message names that task and this task's methods).
        UnknownNameError: an unknown name, with the closest registered ones.
    """
    registry, list_command = KINDS[task]
    registry.import_all()
    if name not in registry:
        for other, (other_registry, _) in KINDS.items():
            other_registry.import_all()
            if other != task and name in other_registry:
                raise ConfigError(
                    f"method {name!r} solves the task {other!r}, not {task!r}: run it with --task {other}, or pick a "
                    f"method of --task {task}: {', '.join(registry.names())} ({list_command})."
                )
    spec = registry.get(name).obj
    if getattr(spec.cls, "task", task) != task:
        raise ConfigError(f"method {spec.name!r} solves the task {spec.cls.task!r}, not {task!r}.")
    return spec


def get_method(name: str) -> MethodSpec:
    """The registered method ``name`` (every module of ``bench.methods`` is imported first)."""
    return find_spec(DEFAULT_TASK, name)


def check_options(specs: Sequence[MethodSpec], options: dict[str, Any] | None) -> dict[str, Any]:
    """Each method's config with the options that apply to it, by method name.

    Raises:
        ConfigError: for a ``--set`` option that applies to none of the run's methods, or a value a method refuses.
    """
    by_name = {s.name: s for s in specs}
    for k in options or {}:
        if "." in k:
            name, key = k.split(".", 1)
            if name not in by_name:
                raise ConfigError(
                    f"--set {clip(k, 60)}=...: method {brief(name)} is not part of this run ({', '.join(by_name)})."
                )
            if key not in by_name[name].option_names():
                raise ConfigError(
                    f"method {name!r} has no option {brief(key)}. Its options: "
                    f"{', '.join(sorted(by_name[name].option_names()))}."
                )
        elif not any(k in s.option_names() for s in specs):
            opts = "; ".join(f"{s.name}: {', '.join(sorted(s.option_names()))}" for s in specs)
            raise ConfigError(f"no method of this run has an option {brief(k)} (--set). Options: {opts}.")
    return {s.name: s.make_config(s.select_options(options)) for s in specs}


def config_dict(config: Any) -> dict[str, Any]:
    """A method's configuration as JSON values: what its rows record and its job keys hash.

    A config class may name, in a ``KEYED_WHEN_SET`` class variable, options added after rows were written: each is
    left out while it has its default value, so the dict (and every job key and resumable result made before the
    option existed) stays the same, and an option that is set is recorded and keyed like any other.
    """
    d = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    for name in getattr(type(config), "KEYED_WHEN_SET", ()):
        if name in d and getattr(config, name) == defaults.get(name, dataclasses.MISSING):
            del d[name]
    return d


def config_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
