"""The classification task in the grid (docs/method-notes.md §2): one job fits the method on the episode's support
set, predicts its queries and scores the argmax (:func:`bench.metrics.episode_metrics`), inside the one job
skeleton (:func:`bench.run.job.run_task_job`). Its jobs are planned by :func:`plan` (the grid method × category ×
shots × seed; a job's key: :func:`bench.run.plan.job_identity`); :data:`JOBS` is the task record's run side.

Units, localisation and class set (``../shared/docs/field-protocols.md`` §3) are protocol columns of every row:
``unit`` (``image`` | ``region``), ``localisation`` (what the method was given of where each query's defect is:
``none``, ``gt``, or ``estimated`` with the estimator) and the class set (``class_set.good``: types, or types + good). The
episodes of the region protocols are :mod:`bench.classification.region_episodes`; a method that takes masks
(:class:`bench.method.RegionMethod`) gets each item's region, any other sees the whole images (localisation
``none``, the baseline the region rows stand beside). Under ``good-or-defect`` (UniADC's protocol) a k-shot PatchCore
of the normal shots decides good (its threshold from the shots alone, :func:`bench.classification.localise.good_threshold`), and
the method names the type of the images it calls defective.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bench.cache import hash_memo_dir
from bench.datasets import Samples
from bench.episodes import make_episode, protocol_id
from bench.errors import BenchError, ConfigError, DatasetError, brief
from bench.features.store import FeatureStore
from bench.method import SupportSet, TaskContext, config_dict, config_hash, get_method
from bench.metrics import episode_metrics
from bench.run.config import RunConfig
from bench.run.job import JobCore, TaskJobs, base_row, build_method, feature_store, make_context, run_task_job
from bench.episodes import Persisted
from bench.classification.region_episodes import RegionEpisode
from bench.run.plan import Job, category_content, job_identity


def plan(cfg: RunConfig, samples: Samples) -> list[Job]:
    """Expand the grid into jobs (episodes are built here; impossible episodes become failing jobs)."""
    configs = cfg.method_configs
    specs = [get_method(m) for m in cfg.methods]
    memo = hash_memo_dir(cfg.cache_dir)
    jobs: list[Job] = []
    for category in samples.categories():
        has_normals = bool(samples.train_paths(category))
        content, content_err = category_content(samples, category, memo)
        for seed in cfg.seeds:
            for shots in cfg.shots:
                try:
                    episode: Any = episode_for(cfg, samples, category, shots, seed)
                    ehash, err = episode.hash, content_err
                except DatasetError as exc:
                    episode, ehash, err = None, "none", str(exc)
                for spec in specs:
                    config = configs[spec.name]
                    mcfg = config_dict(config)
                    uses_bank = "bank" in spec.cls.reads(config) or (estimated(cfg) and spec.cls.takes_masks)
                    ident = job_identity(cfg, samples, spec.name, mcfg, category, shots, seed, ehash, content, cfg.task,
                                         reads_bank=uses_bank)
                    ident.update(protocol_columns(cfg, spec.cls.takes_masks, keyed=True))
                    why = "" if has_normals or err else spec.cls.normal_images_needed(config)
                    job_err = err or (no_normals_error(samples, category, spec.name, why) if why else None)
                    jobs.append(Job(
                        method=spec.name, method_config=mcfg, category=category, shots=shots, seed=seed,
                        key=config_hash(ident), episode=episode, error=job_err, dataset_content=content, config=config,
                        task=cfg.task,
                    ))  # fmt: skip
    return jobs


def episode_for(cfg: RunConfig, samples: Samples, category: str, shots: int, seed: int) -> Any:
    """The episode of (category, shots, seed) under the run's protocol and unit.

    Raises:
        DatasetError: too few images or regions for the shots, or missing masks / MVTec-FS files.
    """
    from bench.classification.region_episodes import make_good_or_defect_episode, make_mvtec_fs_episode, make_region_episode

    if cfg.protocol == "mvtec-fs":
        return make_mvtec_fs_episode(samples, category, shots, seed, str(cfg.mvtec_fs), unit=unit_of(cfg))
    if cfg.protocol == "good-or-defect":
        return make_good_or_defect_episode(samples, category, shots, seed, cfg.normal_shots)
    if unit_of(cfg) == "region":
        return make_region_episode(samples, category, shots, seed, cfg.regions)
    return make_episode(samples, category, shots, seed, cfg.protocol, cfg.include_good)


def unit_of(cfg: RunConfig) -> str:
    """The run's unit: ``--unit`` (``mvtec-fs`` defaults to regions; ``good-or-defect`` classifies images)."""
    if cfg.protocol == "good-or-defect":
        return "image"
    return cfg.unit or ("region" if cfg.protocol == "mvtec-fs" else "image")


def estimated(cfg: RunConfig) -> bool:
    """Whether the queries' masks are estimated (``--masks estimated``; always under ``good-or-defect``)."""
    return cfg.protocol == "good-or-defect" or cfg.masks == "estimated"


def protocol_columns(cfg: RunConfig, takes_masks: bool, keyed: bool = False) -> dict[str, Any]:
    """The protocol columns of a row (module docstring); ``keyed``: the part of the job identity they add (nothing
    for an image-unit run without masks, so the keys of every earlier row stay valid)."""
    unit = unit_of(cfg)
    god = cfg.protocol == "good-or-defect"
    given = takes_masks and (unit == "region" or god)
    if not given:
        loc: dict[str, Any] = {"queries": "none"}
    elif estimated(cfg):
        source = "patchcore of the normal shots" if god else "patchcore of the category's normal bank"
        loc = {"queries": "estimated", "support": "gt", "estimator": cfg.mask_estimator,
               "map": f"png maps ({cfg.maps})" if cfg.maps else source}
    else:
        loc = {"queries": "gt", "support": "gt"}
    cols = {"unit": unit, "localisation": loc, "region_rule": cfg.regions if unit == "region" and cfg.protocol != "mvtec-fs" else None}
    if keyed:
        if unit == "image" and not god and cfg.protocol != "mvtec-fs":
            return {}
        return {"columns": cols, "normal_shots": cfg.normal_shots if god else None}
    return cols


def check_config(cfg: RunConfig) -> None:
    """The classification options that depend on each other (units, masks, protocols), before the first job.

    Raises:
        ConfigError: naming the option and the fix.
    """
    from bench.classification.localise import check_estimator
    from bench.classification.region_episodes import REGION_RULES

    if cfg.unit not in (None, "image", "region"):
        raise ConfigError(f"--unit {brief(cfg.unit)} is not allowed: image or region")
    if cfg.masks not in (None, "gt", "estimated"):
        raise ConfigError(f"--masks {brief(cfg.masks)} is not allowed: gt or estimated")
    if cfg.regions not in REGION_RULES:
        raise ConfigError(f"--regions {brief(cfg.regions)} is not allowed: {' or '.join(REGION_RULES)}")
    check_estimator(cfg.mask_estimator)
    god, fs = cfg.protocol == "good-or-defect", cfg.protocol == "mvtec-fs"
    if fs and not cfg.mvtec_fs:
        raise ConfigError("--protocol mvtec-fs needs --mvtec-fs PATH: the MVTec-FS CONFIG folder (ShuaiLYU/MVTec-FS, "
                          "with <category>_config1/train.csv and valid.csv)")  # fmt: skip
    if cfg.mvtec_fs and not fs:
        raise ConfigError("--mvtec-fs is read by --protocol mvtec-fs only: add --protocol mvtec-fs, or drop --mvtec-fs")
    if fs and not Path(cfg.mvtec_fs).expanduser().is_dir():
        raise ConfigError(f"--mvtec-fs {brief(cfg.mvtec_fs)} is not a folder: pass the MVTec-FS CONFIG folder (with "
                          "<category>_config1/train.csv and valid.csv)")  # fmt: skip
    if fs and cfg.dataset != "mvtec_ad":
        raise ConfigError(f"--protocol mvtec-fs labels MVTec AD images: use --dataset mvtec_ad with --data-root at your "
                          f"MVTec AD copy (this run has --dataset {cfg.dataset})")  # fmt: skip
    if cfg.unit == "region" and cfg.protocol == "paper":
        raise ConfigError("--unit region draws regions with a seed: add --protocol random (or mvtec-fs, good-or-defect)")
    if god and cfg.masks == "gt":
        raise ConfigError("--protocol good-or-defect gives no masks for its queries (any test image, good included): "
                          "drop --masks gt (its region methods read estimated masks)")  # fmt: skip
    if cfg.masks is not None and unit_of(cfg) != "region" and not god:
        raise ConfigError(f"--masks {cfg.masks} applies to region units: add --unit region (or --protocol mvtec-fs)")
    if cfg.include_good and (god or unit_of(cfg) == "region"):
        raise ConfigError("--include-good does not apply here: a region has a defect type (good is no region), and "
                          "--protocol good-or-defect has good as a class already. Drop --include-good.")  # fmt: skip
    if cfg.maps is not None and not estimated(cfg):
        raise ConfigError("--maps gives the estimated masks of region methods: add --unit region --masks estimated "
                          "(or --protocol good-or-defect), or drop --maps")  # fmt: skip
    if god and cfg.normal_shots < 2:
        raise ConfigError(f"--normal-shots {cfg.normal_shots} is too few for --protocol good-or-defect: the threshold "
                          "that decides good scores each normal shot against the others, so it needs at least 2")  # fmt: skip
    if unit_of(cfg) == "image" and not god:
        takes = [m for m in cfg.methods if get_method(m).cls.takes_masks]
        if takes:
            raise ConfigError(f"method(s) {', '.join(takes)} classify defect regions and need their masks: add --unit "
                              "region --protocol random (datasets with ground_truth masks), --protocol mvtec-fs, or "
                              "--protocol good-or-defect")  # fmt: skip


def no_normals_error(samples: Samples, category: str, method: str, why: str) -> str:
    """The error of a job whose method needs normal training images that the category does not have."""
    return (  # the same text for every category, so the run's failure summary says it once per method
        f"method {method!r} needs normal (defect-free) training images for {why}, but the category has none (its "
        f"train/good is empty or missing; dataset {samples.dataset!r} at {samples.root}). Add defect-free images to "
        "the category's train/good folder, or choose a method that needs none (e.g. protonet, knn, logreg, direct, "
        "contrastive-raw)."
    )


def feature_work(cfg: RunConfig, samples: Samples, jobs: Sequence[Job]) -> list[str]:
    """The images whose PatchCore features the jobs will read, each once, grouped by category.

    Episode images (support and queries) for methods that read patch features; the category's normal images too
    when one builds the memory bank. Parallel runs extract these first, split over the workers, so two workers
    never extract the same cold image (they would otherwise both start on the same category).
    """
    needs_of = {job.method: get_method(job.method).cls.reads(job.config) for job in jobs}
    paths: dict[str, None] = {}
    for job in jobs:
        if job.episode is None:
            continue
        needs = needs_of[job.method]
        if "bank" in needs or (estimated(cfg) and get_method(job.method).cls.takes_masks):
            paths.update(dict.fromkeys(samples.train_paths(job.category) if cfg.protocol != "good-or-defect" else []))
        if "patch" in needs:
            paths.update(dict.fromkeys([*job.episode.support_paths(), *job.episode.queries]))
    return list(paths)


class ClassificationCore(JobCore):
    """A classification job inside the skeleton: fit on the support set, (Q, C) scores, argmax, metrics."""

    def row(self, cfg: RunConfig, samples: Samples, job: Job, store: FeatureStore) -> dict[str, Any]:
        row = {**base_row(cfg, samples, job, store), "protocol": protocol_id(cfg.protocol)}  # paper -> paper_fixed
        row.update(protocol_columns(cfg, get_method(job.method).cls.takes_masks))
        if cfg.protocol == "good-or-defect":
            row["class_set"] = {**row["class_set"], "combined": "excluded", "good": "included"}
            row["normal_shots"] = cfg.normal_shots
        return row

    def support_rule(self, ep: Any) -> str:
        if ep.protocol == "paper_fixed":
            return "first-n by sorted file name"
        if ep.protocol == "mvtec_fs":
            return "seeded draw of n instances per type from MVTec-FS train.csv; queries: every valid.csv instance"
        return "seeded random draw"

    def episode_fields(self, ep: Any) -> dict[str, Any]:
        out = {"class_names": list(ep.class_names), "n_classes": ep.n_classes, "n_queries": len(ep.queries)}
        if isinstance(ep, RegionEpisode) and ep.skipped:
            out["skipped_items"] = dict(ep.skipped)
        return out

    def train_paths(self, ep: Any) -> list[str] | None:
        """Under ``good-or-defect`` the normal images a method may use are the Kn normal shots only."""
        if isinstance(ep, RegionEpisode) and ep.protocol == "good_or_defect":
            return [r.image for r in ep.support_regions[-1]]
        return None

    def solve(self, cfg: RunConfig, samples: Samples, job: Job, store: FeatureStore, ctx: TaskContext, ep: Any,
              row: dict[str, Any]) -> None:
        method = build_method(job, ctx)
        god = isinstance(ep, RegionEpisode) and ep.protocol == "good_or_defect"
        n_types = ep.n_classes - 1 if god else ep.n_classes
        groups = ep.support_regions[:n_types] if isinstance(ep, RegionEpisode) else None
        paths = [p for g in ep.support[:n_types] for p in g]
        labels = [i for i, g in enumerate(ep.support[:n_types]) for _ in g]
        regions = tuple(r for g in groups for r in g) if groups is not None else None
        support = SupportSet(tuple(paths), tuple(labels), tuple(ep.class_names[:n_types]), regions=regions)
        queries = list(ep.queries)
        with ctx.timer("fit"):
            method.fit(support)
        with ctx.timer("predict"):
            if method.takes_masks:
                query_regions = self.query_regions(cfg, samples, store, ctx, ep, row)
                scores = np.asarray(method.predict_regions(queries, query_regions))
            else:
                scores = np.asarray(method.predict(queries))
        if scores.shape != (len(queries), n_types):
            raise RuntimeError(f"method {job.method} returned scores of shape {scores.shape}, expected {(len(queries), n_types)}")
        if not np.isfinite(scores).all():  # argmax of NaN is class 0: a number at chance, not a result
            n_bad = int((~np.isfinite(scores)).any(axis=1).sum())
            raise BenchError(
                f"method {job.method} returned non-finite scores (NaN or inf) for {n_bad} of {len(queries)} "
                "queries, so the job has no result. A training run that diverged (try a smaller learning rate with "
                "--set) or damaged weights (--weights) cause this."
            )
        y_pred = scores.argmax(axis=1).tolist()
        if god:
            y_pred = self.good_or_defect(cfg, store, ctx, ep, y_pred, row)
        row.update(episode_metrics(ep.query_labels, y_pred, ep.class_names))
        row.update(status="ok", error=None, y_true=list(ep.query_labels), y_pred=y_pred)
        row["train_log"] = ctx.log
        row["method_info"] = method.extra_info()

    def query_regions(self, cfg: RunConfig, samples: Samples, store: FeatureStore, ctx: TaskContext, ep: Any,
                      row: dict[str, Any]) -> list[Any]:
        """The queries' regions as the method is given them: the protocol's (``gt``) or estimated from the
        PatchCore map of the normal bank (``estimated``; the bank of the normal shots under ``good-or-defect``)."""
        from bench.classification.localise import estimated_regions
        from bench.methods._region import frame_of

        if not estimated(cfg):
            return list(ep.query_regions)
        keys = [Persisted.rel(ep, q) for q in ep.queries]
        maps = None
        if cfg.maps is not None:  # another detector's PNG maps (bench maps writes them): <maps>/<category>/<type>/<name>.png
            from bench.discovery.maps import png_map_paths, png_maps

            labels = [ep.class_names[y] for y in ep.query_labels]
            paths = png_map_paths(Path(cfg.maps).expanduser(), ep.category, labels, list(ep.queries))
            maps = png_maps(paths, list(ep.queries), frame_of(ctx), cfg.maps)
        with ctx.timer("localise"):
            regions, info = estimated_regions(store, None if maps else ctx.bank(), ep.queries, frame_of(ctx),
                                              cfg.mask_estimator, keys, maps=maps)
        row["localisation"] = {**row.get("localisation", {}), **info}
        return regions

    def good_or_defect(self, cfg: RunConfig, store: FeatureStore, ctx: TaskContext, ep: Any, y_type: list[int],
                       row: dict[str, Any]) -> list[int]:
        """UniADC's decision: a query whose k-shot PatchCore score is above the threshold set on the shots is the
        method's type, else ``good`` (:func:`bench.classification.localise.good_threshold`)."""
        from bench.classification.localise import good_threshold

        normals = [r.image for r in ep.support_regions[-1]]
        defects = [r.image for g in ep.support_regions[:-1] for r in g]
        with ctx.timer("detect"):
            bank = ctx.bank()
            loo = [float(store.anomaly_scores([n], store.bank([m for m in normals if m != n], seed=ctx.seed,
                                                                coreset_ratio=cfg.coreset_ratio))[0]) for n in normals]
            shots = store.anomaly_scores(defects, bank).astype(float).tolist()
            scores = store.anomaly_scores(list(ep.queries), bank)
        threshold = good_threshold(loo, shots)
        good = ep.n_classes - 1
        y = [good if s <= threshold else t for s, t in zip(scores.tolist(), y_type)]
        truth = np.asarray(ep.query_labels) == good
        called = np.asarray(y) == good
        row["detector"] = {
            "model": "patchcore-kshot (nearest-neighbour distance to the normal shots' patches, image score = max)",
            "bank": bank.key, "threshold": round(threshold, 6), "normal_loo_scores": [round(v, 6) for v in loo],
            "defect_shot_scores": [round(v, 6) for v in shots],
            "good_recall": round(float(called[truth].mean()), 4) if truth.any() else None,
            "defect_recall": round(float((~called[~truth]).mean()), 4) if (~truth).any() else None,
        }  # fmt: skip
        return y


CORE = ClassificationCore()


def prepare_work(cfg: RunConfig, jobs: Sequence[Job]) -> list[Job]:
    """One job per (method configuration, category, seed, normal images) whose method prepares shot-independent work
    (:meth:`bench.method.Method.prepares`: the paper's pretraining), method by method in the run's order and seed by
    seed: workers then pretrain one method at different seeds side by side (different pseudo episodes), and the next
    method of a seed finds that seed's pseudo-defect features cached."""
    chosen: dict[tuple, Job] = {}
    for job in jobs:
        if job.error or job.episode is None or not get_method(job.method).cls.prepares(job.config):
            continue
        normals = tuple(CORE.train_paths(job.episode) or ())  # good-or-defect: the episode's normal shots
        chosen.setdefault((job.method, config_hash(job.method_config), job.category, job.seed, normals), job)
    order = {m: i for i, m in enumerate(cfg.methods)}
    return sorted(chosen.values(), key=lambda j: (order.get(j.method, len(order)), j.category, j.seed))


def prepare_job(cfg: RunConfig, samples: Samples, job: Job) -> None:
    """The shot-independent work of ``job``'s method (:meth:`bench.method.Method.prepare`), cached for its jobs."""
    store = feature_store(cfg)
    ctx = make_context(cfg, samples, job, store, CORE.train_paths(job.episode))
    build_method(job, ctx).prepare()


def run_job(cfg: RunConfig, samples: Samples, job: Job, out: Path) -> dict[str, Any]:
    """Run one classification job and return its row (status ok or error). Never raises for a job-level failure.

    Raises:
        BenchError: for problems that would fail every job (weights, a full or read-only disk).
    """
    return run_task_job(CORE, cfg, samples, job, out)


JOBS = TaskJobs(
    plan=plan, feature_work=feature_work, run=run_job, prepare_work=prepare_work, prepare=prepare_job, group_by_method=True,
    episode_at=lambda cfg, samples, cat, k: episode_for(cfg, samples, cat, k, cfg.seeds[0]),
)
"""The run side of the classification task (:data:`bench.tasks.BUILTIN`)."""
