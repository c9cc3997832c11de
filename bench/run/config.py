"""The run's configuration: :class:`RunConfig`, every option of ``bench run`` checked before any work, and what is
built from it once: the feature configuration (:attr:`RunConfig.features`), each method's configuration
(:attr:`RunConfig.method_configs`), the cache root and the torch device.

:func:`feature_config` is the one place a :class:`~bench.features.extractor.FeatureConfig` is built from the feature
options (``--backbone``, ``--weights``, ``--layers``, ``--zero-init-last``, ``--precision``, ``--image-fit``) and
their defaults, the dataset's image fit included (MTD: squash): ``bench run`` (through :attr:`RunConfig.features`),
``maps``, ``tsne``, ``detect`` and ``show-crops`` all build theirs with it, so equal options give equal feature keys
and one cache (docs/architecture.md).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from bench.datasets import DatasetOptions, dataset_image_fit
from bench.errors import BenchError, ConfigError, brief, brief_list
from bench.features.backbones import DEFAULT_BACKBONE
from bench.paths import DEFAULT_OUT, cache_root
from bench.results import DEFAULT_TASK
from bench.run.defaults import DEFAULT_BANK_SEED, DEFAULT_CORESET_RATIO, DEFAULT_DEVICE, MAX_LIST_VALUES, PER_RUN_SEED
from bench.method import check_options, find_spec
from bench.tasks import tasks

if TYPE_CHECKING:
    from bench.features.extractor import FeatureConfig

@dataclass
class RunConfig:
    """Everything a ``bench run`` needs. CLI flags and YAML config files fill the same fields."""

    methods: list[str] = field(default_factory=lambda: ["protonet"])
    method_options: dict[str, Any] = field(default_factory=dict)  # applied to every method (unknown keys error)
    dataset: str = "synthetic"
    data_root: str | None = None
    categories: list[str] | None = None
    shots: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    protocol: str | None = None  # None = the task's default (classification: paper; discovery: ncd)
    include_good: bool = False
    exclude_combined: bool = False
    min_defect_types: int | None = None  # None = the task's default (classification: 2; detection, discovery: 1)
    backbone: str = DEFAULT_BACKBONE  # tf_efficientnet_lite0: ImageNet weights installed with the harness
    weights: str = "imagenet"
    zero_init_last: bool | None = None
    layers: list[str] | None = None  # backbone stages to aggregate; None = the stages at strides 8 and 16
    precision: str = "fp32"
    image_fit: str | None = None  # crop | squash | letterbox; None = the dataset adapter's preference, else crop
    coreset_ratio: float = DEFAULT_CORESET_RATIO
    bank_seed: int | str = DEFAULT_BANK_SEED  # the coreset seed of every run seed's bank, or PER_RUN_SEED
    textures: str | None = None
    device: str = DEFAULT_DEVICE
    jobs: int = 1
    backend: str = "loky"
    scheduler: str | None = None
    out: str = DEFAULT_OUT  # runs/: ignored by git, apart from the committed results/ (issue #24)
    cache_dir: str | None = None
    threads: int | str | None = None  # torch threads in total; "auto": from the free cores (bench.run.workers.auto_threads)
    plugins: list[str] = field(default_factory=list)  # modules imported first, here and in every worker
    task: str = DEFAULT_TASK  # what the jobs solve (bench.tasks.tasks); every method of the run must solve it
    maps: str | None = None  # discovery: a folder of PNG anomaly maps (<maps>/<category>/<type>/<name>.png); None = PatchCore
    # classification's units (bench.classification.region_episodes, ../shared/docs/field-protocols.md): checked by its task's check
    unit: str | None = None  # image | region: what one item of an episode is (None: region for mvtec-fs, else image)
    masks: str | None = None  # gt | estimated: the query regions' masks (None: gt; good-or-defect: estimated)
    regions: str = "image"  # image | components: how a dataset's masks become regions (--unit region)
    mvtec_fs: str | None = None  # --protocol mvtec-fs: the MVTec-FS CONFIG folder (<category>_config1/{train,valid}.csv)
    mask_estimator: str = "top3"  # --masks estimated: topN (N % of the PatchCore map) or mebin
    normal_shots: int = 2  # --protocol good-or-defect: Kn normal shots (the defect shots per type are --shots)

    def __post_init__(self) -> None:
        """Check every option before any work: a bad value is one :class:`ConfigError` naming the option and the
        fix, never an error row per job, a traceback, or a value accepted silently (``--jobs 0``, NaN ratio)."""
        from bench.images import FITS

        def bad(option: str, value: Any, expected: str) -> ConfigError:
            return ConfigError(f"{option} {brief(value)} is not allowed: {expected}")

        if self.task not in tasks():
            raise bad("--task", self.task, " or ".join(tasks()))
        task = tasks()[self.task]
        if self.protocol is None:
            self.protocol = task.protocols[0]
        if self.min_defect_types is None:
            self.min_defect_types = task.min_defect_types
        if not all(isinstance(m, str) and m for m in self.methods):
            raise bad("--method", self.methods, "give registered method names (python -m bench list methods)")
        if not isinstance(self.method_options, dict):
            raise bad("--set", self.method_options, "method options are key=value pairs")
        for option, values in (("--method", self.methods), ("--categories", self.categories or []),
                               ("--shots", self.shots), ("--seeds", self.seeds), ("--layers", self.layers or [])):
            if len(values) > MAX_LIST_VALUES:
                raise ConfigError(f"{option} gives {len(values):,} values ({brief_list(values)}): a run takes at most "
                                  f"{MAX_LIST_VALUES:,} per list option. Give fewer.")
        for option, values, low in (("--shots", self.shots, 1), ("--seeds", self.seeds, 0)):
            if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                raise bad(option, values, f"a non-empty list of integers ≥ {low} (e.g. 1-5, 1,3 or 1 3)")
            if below := [v for v in values if v < low]:
                raise bad(option, values, f"a non-empty list of integers ≥ {low} ({brief_list(below)} "
                          f"{'is' if len(below) == 1 else 'are'} below {low}; e.g. 1-5, 1,3 or 1 3)")
        # A repeated value names the same cells of the grid: each runs once (as --categories wood wood means wood
        # once). Before, the second copy of every job was counted as "already finished".
        self.shots, self.seeds = list(dict.fromkeys(self.shots)), list(dict.fromkeys(self.seeds))
        if self.protocol not in task.protocols:
            raise bad("--protocol", self.protocol, f"{' or '.join(task.protocols)} for --task {self.task}")
        if self.min_defect_types < 1:
            raise bad("--min-defect-types", self.min_defect_types, "at least 1 (default: 2 for classification, 1 for detection and discovery)")
        if not (math.isfinite(self.coreset_ratio) and 0 < self.coreset_ratio <= 1):
            raise bad("--coreset-ratio", self.coreset_ratio, "a share of the memory bank kept, in (0, 1] (default 0.1)")
        self.bank_seed = parse_bank_seed(self.bank_seed)
        if self.precision not in ("fp32", "bf16"):
            raise bad("--precision", self.precision, "fp32 or bf16")
        if self.image_fit is not None and self.image_fit not in FITS:
            raise bad("--image-fit", self.image_fit, " or ".join(FITS))
        check_device(self.device)
        if self.jobs < 1:
            raise bad("--jobs", self.jobs, "at least 1 worker process (default 1)")
        if self.backend not in ("loky", "dask"):
            raise bad("--backend", self.backend, "loky or dask")
        if self.scheduler is not None and (self.backend != "dask" or self.jobs < 2):
            # it would be ignored: loky (the default) runs on this machine, and one job at a time runs in this process
            raise ConfigError(
                f"--scheduler {brief(self.scheduler)} is used by --backend dask with --jobs N ≥ 2 only (N groups in "
                f"flight on the cluster); this run has --backend {self.backend} and --jobs {self.jobs}, so it would "
                "run on this machine. Add --backend dask --jobs N, or drop --scheduler."
            )
        self.threads = parse_threads(self.threads)
        if (check := task.hook("check")) is not None:  # the task's own checks (bench.tasks.Task.check)
            check(self)
        if self.maps is not None and "maps" not in task.options:
            readers = " or ".join(name for name, t in tasks().items() if "maps" in t.options)
            raise bad("--maps", self.maps, f"anomaly maps are read by --task {readers} only")
        if self.maps is not None and not Path(self.maps).expanduser().is_dir():
            raise bad("--maps", self.maps, "a folder of PNG anomaly maps, <maps>/<category>/<type>/<image name>.png")

    def dataset_options(self) -> DatasetOptions:
        """The dataset's class-set switches (``--min-defect-types`` defaults per task: detection and discovery keep
        every category with a defect type, docs/tasks.md)."""
        return DatasetOptions(
            exclude_combined=self.exclude_combined,
            min_defect_types=self.min_defect_types,
            categories=tuple(self.categories) if self.categories else None,
        )

    @cached_property
    def features(self) -> FeatureConfig:
        """The feature configuration of the run, built once: the extractor, the job keys and the rows use it."""
        return feature_config(self.dataset, **{name: getattr(self, name) for name in FEATURE_OPTIONS})

    @cached_property
    def method_configs(self) -> dict[str, Any]:
        """Each method's configuration (its variant's defaults with the ``--set`` options that apply), by registered
        name, built once; each task's planner gives each job its own.

        Raises:
            UnknownNameError: an unknown method name (with the closest registered ones of the run's task).
            ConfigError: an option that applies to no method of the run, a value a method refuses, or a method that
                solves another task (a detector without ``--task detection``, a classifier with it).
        """
        return check_options([find_spec(self.task, name) for name in self.methods], self.method_options)

    def bank_seed_of(self, seed: int) -> int:
        """The coreset seed of run seed ``seed``'s memory bank: ``--bank-seed`` (one bank for every seed), or the run
        seed itself with ``--bank-seed per-run-seed``."""
        return seed if self.bank_seed == PER_RUN_SEED else int(self.bank_seed)

    def bank_record(self) -> str:
        """How the run's banks are seeded, as a row's ``features.bank`` records it: ``"seed N"`` (one bank per category,
        shared by every run seed) or ``"per-run-seed"``. It names a configuration: rows that differ in it are not
        pooled by the reports (the per-seed value itself is the row's ``bank_seed``)."""
        return PER_RUN_SEED if self.bank_seed == PER_RUN_SEED else f"seed {self.bank_seed}"

    def cache_root(self) -> Path:
        """The run's cache root (``--cache-dir``, else ``$BENCH_CACHE``, else the default), absolute."""
        return cache_root(self.cache_dir)

    def torch_device(self) -> torch.device:
        """``--device`` resolved (:func:`resolve_device`)."""
        return resolve_device(self.device)


def parse_threads(value: Any) -> int | str | None:
    """``--threads``'s value: ``None`` (torch's default: all cores), an integer ≥ 1 (YAML or the command line may give
    it as text) or ``auto`` (chosen from the machine's free cores when the run starts, :func:`bench.run.workers.auto_threads`).

    Raises:
        ConfigError: anything else.
    """
    if value is None or value == "auto":
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ConfigError(f"--threads {brief(value)} is not allowed: at least 1 (torch threads in total, split between the "
                      "workers) or auto (from the machine's free cores and load); default: all cores")


def parse_bank_seed(value: Any) -> int | str:
    """``--bank-seed``'s value: an integer ≥ 0 (YAML or the command line may give it as text) or ``per-run-seed``.

    Raises:
        ConfigError: anything else, named with the two accepted forms.
    """
    if value == PER_RUN_SEED:
        return PER_RUN_SEED
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ConfigError(f"--bank-seed {brief(value)} is not allowed: an integer ≥ 0 (the coreset seed of every run seed's "
                      f"memory bank; default {DEFAULT_BANK_SEED}) or {PER_RUN_SEED} (a bank per run seed)")


FEATURE_OPTIONS = ("backbone", "weights", "zero_init_last", "layers", "precision", "image_fit")
"""The options :func:`feature_config` reads: the fields of :class:`RunConfig` (and the flags of every command that
extracts features, ``bench.cli._args.add_feature_options``) that change the patch features."""


def feature_config(
    dataset: str = "synthetic",
    *,
    backbone: str | None = None,
    weights: str | None = None,
    zero_init_last: bool | None = None,
    layers: Sequence[str] | None = None,
    precision: str | None = None,
    image_fit: str | None = None,
) -> FeatureConfig:
    """The feature configuration of these options; ``None`` (an option not given) is the harness's default:
    ``tf_efficientnet_lite0`` with its ImageNet weights, the stages at strides 8 and 16, fp32, and the image fit
    the dataset adapter declares (``mtd``: squash), else crop (docs/method-notes.md §4.1).

    Raises:
        ConfigError: a precision or image fit that does not exist (named as its flag).
    """
    from bench.features.extractor import FeatureConfig
    from bench.images import FITS

    if precision is not None and precision not in ("fp32", "bf16"):
        raise ConfigError(f"--precision {brief(precision)} is not allowed: fp32 or bf16")
    if image_fit is not None and image_fit not in FITS:
        raise ConfigError(f"--image-fit {brief(image_fit)} is not allowed: {' or '.join(FITS)}")
    return FeatureConfig(
        backbone=DEFAULT_BACKBONE if backbone is None else backbone, weights="imagenet" if weights is None else weights,
        zero_init_last=zero_init_last, precision="fp32" if precision is None else precision,
        image_fit=image_fit or dataset_image_fit(dataset),
        layers=tuple(layers) if layers else None,
    )  # fmt: skip


def check_device(name: str) -> None:
    """Refuse a ``--device`` that is not ``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N`` (:class:`ConfigError`)."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(name)):
        raise ConfigError(f"--device {brief(name)} is not allowed: auto, cpu, cuda or cuda:N")


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a CUDA device is an error."""
    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError("--device cuda was asked for but no CUDA device is available; use --device cpu or auto.")
    return torch.device(name)
