"""The detection task in the grid (docs/tasks.md §A): its jobs (:func:`plan_detection`), one job's row
(:func:`run_detection_job`) and a job's anomaly maps as PNG files (:func:`write_job_maps`, ``bench maps``).

A detection job is (detector configuration, feature configuration, dataset, category, k, seed): the k shots are the
seeded draw of :func:`bench.detection.episodes.make_normal_shots`, the test set is every test image of the category.
Its key is made by :func:`bench.run.plan.job_identity` with the task, the detection protocol and the draw's hash,
so finished jobs resume like classification jobs. Jobs of one (category, seed) run in one process, so the feature
cache, the memory banks and the embedders of that group are shared.

The row (``task: detection``) carries, besides what every row records (method and its config, features, weights,
dataset content, environment): ``image_auroc`` (the ``ok`` metric, :data:`bench.results.OK_METRICS`),
``pixel_auroc`` (or null: no maps, or no masks), ``auroc_per_type`` (good vs each defect type), ``support`` (the
shot files, relative to the dataset root), ``extra_data`` (what the detector used besides the k shots: ``imagenet``
for ImageNet weights, ``weights-file`` for a local file, ``none`` for random init, ``+dtd`` when DTD textures made
its synthetic anomalies), ``synthetic_negatives``, the test counts, and ``scores`` / ``y_true`` (the image scores
in test-set order, 6 significant digits, and the 0/1 labels, for paired statistics and for re-scoring).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from bench.cache import hash_memo_dir
from bench.datasets import Samples
from bench.detection.detector import DETECTION_TASK, Detector, get_detector
from bench.detection.episodes import DETECTION_PROTOCOL, NormalShots, make_normal_shots
from bench.detection.maps import write_maps
from bench.errors import BenchError, ConfigError, DatasetError, brief
from bench.features.backbones import WeightsInfo
from bench.features.store import FeatureStore
from bench.metrics.detection import PIXEL_FRAME, auroc_per_type, image_auroc, pixel_auroc
from bench.method import TaskContext, config_dict, config_hash
from bench.run.config import RunConfig
from bench.run.job import JobCore, TaskJobs, base_row, feature_store, make_context, run_task_job
from bench.run.plan import Job, category_content, job_identity

log = logging.getLogger(__name__)


def check_config(cfg: RunConfig) -> None:
    """The detection task's own checks of a run's options (its record's ``check`` hook, :class:`bench.tasks.Task`).

    Raises:
        ConfigError: ``--include-good``: detection always scores the test good images.
    """
    if cfg.include_good:
        raise ConfigError(f"--include-good {brief(True)} is not allowed: a classification option: detection always "
                          "scores the test good images")


def plan_detection(cfg: RunConfig, samples: Samples) -> list[Job]:
    """The grid (detector × category × k × seed) as jobs; an impossible draw becomes a failing job."""
    configs = cfg.method_configs
    memo = hash_memo_dir(cfg.cache_dir)
    jobs: list[Job] = []
    for category in samples.categories():
        content, content_err = category_content(samples, category, memo)
        for seed in cfg.seeds:
            for shots in cfg.shots:
                try:
                    ep: NormalShots | None = make_normal_shots(samples, category, shots, seed)
                    ehash, err = ep.hash, content_err  # type: ignore[union-attr]
                except DatasetError as exc:
                    ep, ehash, err = None, "none", str(exc)
                for name in cfg.methods:
                    config = configs[name]
                    mcfg = config_dict(config)
                    ident = job_identity(cfg, samples, name, mcfg, category, shots, seed, ehash, content, DETECTION_TASK,
                                         reads_bank="bank" in get_detector(name).cls.reads(config))
                    ident["protocol"] = DETECTION_PROTOCOL
                    ident.pop("include_good", None)
                    jobs.append(Job(
                        method=name, method_config=mcfg, category=category, shots=shots, seed=seed, key=config_hash(ident),
                        episode=ep, error=err, dataset_content=content, config=config, task=DETECTION_TASK,  # type: ignore[arg-type]
                    ))  # fmt: skip
    return jobs


def detection_feature_work(samples: Samples, jobs: list[Job]) -> list[str]:
    """The images whose PatchCore features the detection jobs read (shots and test images of detectors that read
    the feature store), each once: a parallel run extracts them first, split over the workers."""
    paths: dict[str, None] = {}
    for job in jobs:
        if job.episode is None or "patch" not in get_detector(job.method).cls.reads(job.config):
            continue
        paths.update(dict.fromkeys([*job.episode.support_paths(), *job.episode.queries]))
    return list(paths)


def build_detector(job: Job, ctx: TaskContext) -> Detector:
    """The detector of ``job`` with the configuration planned for it, ready to ``fit``."""
    spec = get_detector(job.method)
    det = spec.cls(job.config, ctx)
    det.name = spec.name
    return det  # type: ignore[return-value]


def extra_data(weights: WeightsInfo, negatives: bool, textures: str | None) -> str:
    """What a detector used besides the k shots (docs/tasks.md §A.1): the backbone's weights, and DTD textures when
    its synthetic anomalies were made with them (the built-in procedural textures are generated, not data)."""
    parts = []
    if weights.pretrained:
        parts.append("imagenet" if weights.weights == "imagenet" else "weights-file")
    if negatives and textures:
        parts.append("dtd")
    return "+".join(parts) or "none"


def detection_row(cfg: RunConfig, samples: Samples, job: Job, store: Any) -> dict[str, Any]:
    """The fields of a detection job's row that do not depend on its outcome."""
    row = base_row(cfg, samples, job, store)
    row["protocol"] = DETECTION_PROTOCOL
    row["class_set"] = {"combined": "excluded" if cfg.exclude_combined else "kept", "good": "included",
                        "min_defect_types": 1}  # fmt: skip
    spec = get_detector(job.method)
    negatives = spec.cls.uses_synthetic_negatives(job.config)
    row["synthetic_negatives"] = bool(negatives)
    row["extra_data"] = extra_data(store.weights_info, negatives, cfg.textures)
    return row


class DetectionCore(JobCore):
    """A detection job inside the skeleton (:func:`bench.run.job.run_task_job`): fit on the k shots, maps and image
    scores of every test image, image / per-type / pixel AUROC."""

    def row(self, cfg: RunConfig, samples: Samples, job: Job, store: FeatureStore) -> dict[str, Any]:
        return detection_row(cfg, samples, job, store)

    def support_rule(self, ep: NormalShots) -> str:
        return "seeded random draw of k train/good images"

    def episode_fields(self, ep: NormalShots) -> dict[str, Any]:
        labels = list(ep.test_labels)
        return {"support": [ep.rel(p) for p in ep.support], "n_test": len(ep.test), "n_test_good": labels.count("good"),
                "n_test_defect": len(labels) - labels.count("good"), "defect_types": sorted(set(labels) - {"good"})}  # fmt: skip

    def train_paths(self, ep: NormalShots) -> list[str]:
        return list(ep.support)

    def solve(self, cfg: RunConfig, samples: Samples, job: Job, store: FeatureStore, ctx: TaskContext,
              ep: NormalShots, row: dict[str, Any]) -> None:
        labels = list(ep.test_labels)
        det = build_detector(job, ctx)
        with ctx.timer("fit"):
            det.fit(list(ep.support))
        maps = None
        if det.has_maps:
            with ctx.timer("maps"):
                maps = np.asarray(det.anomaly_maps(list(ep.test)), np.float32)
        with ctx.timer("score"):
            scores = np.asarray(det.score(list(ep.test)), np.float64).reshape(-1)
        if scores.shape != (len(ep.test),):
            raise RuntimeError(f"detector {job.method} returned {scores.shape} scores for {len(ep.test)} test images")
        if not np.isfinite(scores).all():
            n_bad = int((~np.isfinite(scores)).sum())
            raise BenchError(
                f"detector {job.method} returned non-finite scores (NaN or inf) for {n_bad} of {len(ep.test)} test "
                "images, so the job has no result. A training run that diverged (try a smaller lr with --set) or "
                "damaged weights (--weights) cause this."
            )
        with ctx.timer("metrics"):
            row["image_auroc"] = image_auroc(ep.y, scores)
            row["auroc_per_type"] = auroc_per_type(labels, scores)
            px, n_px = (pixel_auroc(maps, labels, list(ep.masks), store.config.preprocess()) if maps is not None
                        else (None, 0))  # fmt: skip
        row.update(pixel_auroc=px, pixel_auroc_images=n_px, pixel_auroc_frame=PIXEL_FRAME if px is not None else None,
                   status="ok", error=None, y_true=ep.y, scores=[float(f"{s:.6g}") for s in scores])  # fmt: skip
        row["train_log"] = ctx.log
        row["method_info"] = det.extra_info()


CORE = DetectionCore()


def run_detection_job(cfg: RunConfig, samples: Samples, job: Job, out: Path) -> dict[str, Any]:
    """Run one detection job and return its row (status ok or error). Never raises for a job-level failure.

    Raises:
        BenchError: for problems that would fail every job (a full or read-only disk).
    """
    return run_task_job(CORE, cfg, samples, job, out)


def write_job_maps(cfg: RunConfig, samples: Samples, job: Job, root: Path, bits: int = 8) -> list[Path]:
    """Fit the detector of ``job`` on its shots and write the anomaly maps of its category's test images as PNG files
    under ``root`` (layout ``<root>/<category>/<type>/<name>.png``, docs/tasks.md §B.1; :func:`bench.detection.write_maps`).

    Raises:
        BenchError: the job cannot run (its draw failed) or the detector gives no maps.
    """
    ep: NormalShots | None = job.episode  # type: ignore[assignment]
    if job.error or ep is None:
        raise BenchError(f"{job.describe()}: {job.error or 'no episode'}")
    store = feature_store(cfg)
    ctx = make_context(cfg, samples, job, store, train_paths=list(ep.support))
    det = build_detector(job, ctx)
    if not det.has_maps:
        raise BenchError(f"detector {job.method!r} gives image scores only, no anomaly maps; use patchcore-kshot.")
    det.fit(list(ep.support))
    maps = np.asarray(det.anomaly_maps(list(ep.test)), np.float32)
    meta = {"detector": job.method, "method_config": job.method_config, "shots": job.shots, "seed": job.seed,
            "support": [ep.rel(p) for p in ep.support], "feature_key": store.key, "dataset": samples.dataset,
            "episode": ep.hash}  # fmt: skip
    return write_maps(root, job.category, list(ep.test), list(ep.test_labels), maps, store.config.preprocess(), bits, meta)


JOBS = TaskJobs(
    plan=plan_detection, feature_work=lambda cfg, samples, jobs: detection_feature_work(samples, jobs),
    run=run_detection_job, episode_at=lambda cfg, samples, cat, k: make_normal_shots(samples, cat, k, cfg.seeds[0]),
)
"""The run side of the detection task (:data:`bench.tasks.BUILTIN`)."""
