"""The jobs of ``bench run --task discovery``: one per (method, category, seed), each grouping all the category's
images of the protocol (:mod:`bench.discovery.protocol`) and scored by :mod:`bench.metrics.discovery`.

:func:`plan_discovery` makes the jobs (their key: the method configuration, the features, the dataset's content, the
category, the seed, the protocol, the image set and, for methods that read anomaly maps, where the maps come from);
:func:`run_discovery_job` runs one and returns its row; :func:`discovery_feature_work` lists the images whose features
a parallel run extracts first; :func:`discovery_notes` what is printed before the jobs. Rows carry ``task:
discovery``, ``cluster_accuracy`` (the ok metric), ``nmi``, ``ari``, the matched confusion with class names, the same
over the defect images only and the largest cluster's share (:mod:`bench.metrics.discovery`), the flags
``transductive`` and ``k_known``, ``oracle``, the protocol, and ``maps`` (source and normalisation) for methods that
read maps.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench.cache import file_sha256, hash_memo_dir, stable_hash
from bench.datasets import Samples
from bench.discovery.contract import DiscoverySet, get_discoverer
from bench.discovery.maps import Frame, MapSet, check_defect_masks, patchcore_maps, png_map_paths, png_maps
from bench.discovery.protocol import LabelledSet, discovery_set
from bench.errors import ConfigError, DatasetError
from bench.features.store import FeatureStore
from bench.metrics.discovery import discovery_metrics
from bench.method import TaskContext, config_dict, config_hash
from bench.run.config import RunConfig
from bench.run.job import JobCore, TaskJobs, base_row, run_task_job
from bench.run.plan import RUNNER_VERSION, Job, bank_identity, category_content

log = logging.getLogger(__name__)
TASK = "discovery"


def check_config(cfg: RunConfig) -> None:
    """The discovery task's own checks of a run's options (its record's ``check`` hook, :class:`bench.tasks.Task`).

    Raises:
        ConfigError: ``--include-good`` or ``--exclude-combined``: the protocol decides.
    """
    if cfg.include_good or cfg.exclude_combined:
        raise ConfigError("--include-good and --exclude-combined do not apply to --task discovery: its protocol "
                          "decides (--protocol ncd: combined removed, good kept; defects-only: good removed too).")


def maps_identity(cfg: RunConfig, ls: LabelledSet, memo: Path) -> tuple[Any, str | None]:
    """What identifies the anomaly maps of a set: ``"patchcore"`` (they follow from the features, bank and seed in
    the key), or the hash of the ``--maps`` PNG files' names and bytes; and an error when a map file is missing."""
    if not cfg.maps:
        return "patchcore", None
    try:
        paths = png_map_paths(cfg.maps, ls.category, [ls.class_names[y] for y in ls.labels], ls.paths)
    except DatasetError as exc:  # two images whose map names differ only in case: their jobs fail, not the run
        return {"png": "unnamed"}, str(exc)
    missing = [p for p in paths if not p.is_file()]
    if missing:
        return {"png": "incomplete"}, (f"--maps {cfg.maps}: {len(missing)} of {len(paths)} anomaly maps are missing, e.g. "
                                       f"{missing[0]} (maps are read as <maps>/<category>/<type>/<image name>.png).")  # fmt: skip
    return {"png": stable_hash([[p.name, file_sha256(p, memo)] for p in paths], 16)}, None


def no_normals_error(method: str, category: str, reads: set[str]) -> str:
    """Why a method that reads the memory bank cannot run on a category without normal train images, and the way
    out that works for it: ``--maps`` replaces PatchCore's maps only, never the residuals or weights a method
    computes from the bank itself (kmeans-residual, anomaly-clustering-semi)."""
    if "maps" in reads:
        return (f"method {method!r} needs the category's normal train images (PatchCore memory bank for its anomaly "
                f"maps), but {category!r} has none; pass --maps PATH for maps written by another detector, or choose "
                "a method that needs none.")  # fmt: skip
    return (f"method {method!r} needs the category's normal train images (PatchCore memory bank: residuals or patch "
            f"weights computed from it), but {category!r} has none, and --maps cannot stand in for them. Choose a "
            "method that reads no bank (kmeans, anomaly-clustering) or one that reads the bank only for its maps, "
            "with --maps PATH (mebin-kmeans, anomalyncd).")  # fmt: skip


def plan_discovery(cfg: RunConfig, samples: Samples) -> list[Job]:
    """One job per (category, seed, method); a category that cannot be grouped becomes failing jobs."""
    configs = cfg.method_configs
    specs = [get_discoverer(name) for name in cfg.methods]
    memo = hash_memo_dir(cfg.cache_dir)
    jobs: list[Job] = []
    for category in samples.categories():
        has_normals = bool(samples.train_paths(category))
        content, err = category_content(samples, category, memo)
        try:
            ls: LabelledSet | None = discovery_set(samples, category, cfg.protocol)
            set_hash = ls.hash
        except DatasetError as exc:
            ls, set_hash, err = None, "none", err or str(exc)
        maps_id, maps_err = maps_identity(cfg, ls, memo) if ls is not None else (None, None)
        for seed in cfg.seeds:
            for spec in specs:
                config = configs[spec.name]
                reads = spec.cls.reads(config)
                mcfg = config_dict(config)
                ident = {"runner": RUNNER_VERSION, "task": TASK, "method": spec.name, "method_config": mcfg,
                         "features": cfg.features.key(), "coreset_ratio": cfg.coreset_ratio, "dataset": samples.dataset,
                         "dataset_content": content, "category": category, "seed": seed, "protocol": cfg.protocol,
                         "set": set_hash, "maps": maps_id if "maps" in reads else None}  # fmt: skip
                job_err = err or (maps_err if "maps" in reads else None)
                needs_bank = "bank" in reads and not (cfg.maps and reads <= {"maps", "bank"})  # PNG maps need no bank
                ident.update(bank_identity(cfg, seed, needs_bank))
                if not job_err and not has_normals and needs_bank:
                    job_err = no_normals_error(spec.name, category, reads)
                jobs.append(Job(method=spec.name, method_config=mcfg, category=category, shots=0, seed=seed,
                                key=config_hash(ident), episode=ls, error=job_err, dataset_content=content,  # type: ignore[arg-type]
                                config=config, task=TASK))  # fmt: skip
    return jobs


def discovery_feature_work(cfg: RunConfig, samples: Samples, jobs: list[Job]) -> list[str]:
    """The images whose PatchCore features the jobs will read, each once (a parallel run extracts them first)."""
    paths: dict[str, None] = {}
    for job in jobs:
        if job.episode is None or job.error:
            continue
        reads = get_discoverer(job.method).cls.reads(job.config)
        patchcore_maps_read = "maps" in reads and not cfg.maps
        if "bank" in reads and (patchcore_maps_read or "maps" not in reads):
            paths.update(dict.fromkeys(samples.train_paths(job.category)))
        if "patch" in reads or patchcore_maps_read:
            paths.update(dict.fromkeys(job.episode.paths))
    return list(paths)


def discovery_notes(cfg: RunConfig) -> list[str]:
    """Lines printed before the jobs: the protocol, where maps come from, and each method's own notes."""
    lines = [f"note: task discovery, protocol {cfg.protocol!r} ("
             + ("all test images, combined removed, good kept as a class" if cfg.protocol == "ncd" else
                "the defective test images, combined removed") + "); K given, transductive."]  # fmt: skip
    reads_maps = [m for m, c in cfg.method_configs.items() if "maps" in get_discoverer(m).cls.reads(c)]
    if reads_maps:
        src = f"PNG files under {cfg.maps}" if cfg.maps else (
            f"the harness's PatchCore ({cfg.backbone}, full-train memory bank, coreset {cfg.coreset_ratio})")
        lines.append(f"note: anomaly maps for {', '.join(reads_maps)}: {src}, normalised jointly over each set.")
    for m, c in cfg.method_configs.items():
        lines += get_discoverer(m).cls.notes(c)
    return lines


_MAPS: dict[str, MapSet] = {}
"""This process's PatchCore maps by (bank, images, frame): the methods of one (category, seed) group share them."""


def map_source(cfg: RunConfig, store: FeatureStore, ctx: TaskContext, ls: LabelledSet, frame: Frame) -> Callable[[], MapSet]:
    """The function that makes the set's anomaly maps when a method first asks (:mod:`bench.discovery.maps`)."""
    if cfg.maps:
        names = [ls.class_names[y] for y in ls.labels]
        return lambda: png_maps(png_map_paths(cfg.maps, ls.category, names, ls.paths), ls.paths, frame, cfg.maps)

    def make() -> MapSet:
        bank = ctx.bank()
        key = stable_hash([bank.key, store.key, list(ls.paths), frame.fit, frame.side], 24)
        if key not in _MAPS:
            with ctx.timer("maps"):
                if len(_MAPS) >= 2:
                    _MAPS.pop(next(iter(_MAPS)))
                _MAPS[key] = patchcore_maps(store, bank, ls.paths, frame)
        return _MAPS[key]

    return make


class DiscoveryCore(JobCore):
    """A discovery job inside the skeleton (:func:`bench.run.job.run_task_job`): the method groups every image of the
    set into K clusters, scored by :func:`bench.metrics.discovery.discovery_metrics`."""

    missing = "no image set"

    def row(self, cfg: RunConfig, samples: Samples, job: Job, store: FeatureStore) -> dict[str, Any]:
        row = base_row(cfg, samples, job, store)
        row.pop("textures", None)
        row.update(transductive=True, k_known=True,
                   class_set={"combined": "excluded", "good": "included" if cfg.protocol == "ncd" else "excluded",
                              "min_defect_types": cfg.min_defect_types})  # fmt: skip
        return row

    def support_rule(self, ep: LabelledSet) -> str:
        return "none: every image of the set, unlabelled"

    def episode_fields(self, ep: LabelledSet) -> dict[str, Any]:
        return {"class_names": list(ep.class_names), "n_classes": ep.k, "n_images": len(ep.paths),
                "n_queries": len(ep.paths)}  # fmt: skip

    def solve(self, cfg: RunConfig, samples: Samples, job: Job, store: FeatureStore, ctx: TaskContext,
              ep: LabelledSet, row: dict[str, Any]) -> None:
        ls = ep
        spec = get_discoverer(job.method)
        reads = spec.cls.reads(job.config)
        frame = Frame(fit=cfg.features.image_fit, side=store.config.crop, resize=store.config.resize)
        data = DiscoverySet(dataset=samples.dataset, category=job.category, paths=ls.paths, k=ls.k, frame=frame,
                            mask_paths=ls.mask_paths if "gt_masks" in reads else (), includes_good="good" in ls.class_names,
                            map_source=map_source(cfg, store, ctx, ls, frame))  # fmt: skip
        row.update(reads=sorted(reads), oracle="gt_masks" in reads)
        if "gt_masks" in reads:  # the runner holds the labels: it checks what only labels can tell (check_defect_masks)
            check_defect_masks(ls.paths, ls.mask_paths, [ls.class_names[y] for y in ls.labels])
        method = spec.cls(job.config, ctx)
        method.name = spec.name
        with ctx.timer("fit_predict"):
            clusters = np.asarray(method.fit_predict(data))
        if clusters.shape != (len(ls.paths),) or not np.issubdtype(clusters.dtype, np.integer):
            raise RuntimeError(f"method {job.method} returned cluster ids of shape {clusters.shape} and type "
                               f"{clusters.dtype}; expected ({len(ls.paths)},) integers")  # fmt: skip
        if len(clusters) and (clusters.min() < 0 or clusters.max() >= ls.k):
            raise RuntimeError(f"method {job.method} returned cluster ids outside [0, {ls.k})")
        row.update(discovery_metrics(ls.labels, clusters, ls.class_names))
        row.update(status="ok", error=None, y_true=list(ls.labels), clusters=clusters.tolist(),
                   maps=data.maps().info if "maps" in reads else None, train_log=ctx.log,
                   method_info=method.extra_info())  # fmt: skip


CORE = DiscoveryCore()


def run_discovery_job(cfg: RunConfig, samples: Samples, job: Job, out: Path) -> dict[str, Any]:
    """Run one discovery job and return its row (status ok or error); never raises for a job-level failure.

    Raises:
        BenchError: for problems that would fail every job (a full or read-only disk).
    """
    return run_task_job(CORE, cfg, samples, job, out)


JOBS = TaskJobs(plan=plan_discovery, feature_work=discovery_feature_work, run=run_discovery_job, notes=discovery_notes)
"""The run side of the discovery task (:data:`bench.tasks.BUILTIN`)."""
