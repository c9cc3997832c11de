"""Grid runner: expand (method × category × shots × seed) into jobs, run what is not finished, store rows.

One job = (method config, feature config, dataset, category, shots, seed, protocol, class-set switches).
Its key is a hash of all of that plus the episode hash and the content of the category's images (names and
bytes, :meth:`~bench.datasets.Samples.content_hash`), so re-running the same command skips finished jobs
(resume) and any change to an input that matters makes a new job: an image replaced under the same name too.
Jobs of one (category, seed) form a group that runs in one worker, so the memory bank and cached
features/pretraining of that group are shared; groups are spread over ``--jobs`` worker processes with
joblib (torch threads split between them).
A failed job becomes a row with its error, never a crash of the grid; the command exits non-zero at the
end if any job failed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import math
import os
import re
import signal
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from bench.compat import release_free_memory
from bench.cache import hash_memo_dir
from bench.datasets import DatasetOptions, Samples, load_dataset
from bench.datasets._base import describe_ignored
from bench.episodes import Episode, make_episode, protocol_id
from bench.envinfo import environment
from bench.errors import BenchError, ConfigError, DatasetError, WeightsError, brief
from bench.images import DECODING
from bench.registry import import_plugins
from bench.method import SupportSet, TaskContext, check_options, config_dict, config_hash, get_method
from bench.metrics import episode_metrics
from bench.results import ResultsStore

log = logging.getLogger(__name__)
RUNNER_VERSION = 2  # 2: job keys cover the bytes of the category's images (dataset_content), not only names


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
    protocol: str = "paper"
    include_good: bool = False
    exclude_combined: bool = False
    min_defect_types: int = 2
    backbone: str = "resnet50"
    weights: str = "imagenet"
    zero_init_last: bool | None = None
    layers: list[str] | None = None  # backbone stages to aggregate; None = the stages at strides 8 and 16
    precision: str = "fp32"
    image_fit: str | None = None  # crop | squash | letterbox; None = the dataset adapter's preference, else crop
    coreset_ratio: float = 0.1
    textures: str | None = None
    device: str = "auto"
    jobs: int = 1
    backend: str = "loky"
    scheduler: str | None = None
    out: str = "results"
    cache_dir: str | None = None
    threads: int | None = None
    plugins: list[str] = field(default_factory=list)  # modules imported first, here and in every worker

    def __post_init__(self) -> None:
        """Check every option before any work: a bad value is one :class:`ConfigError` naming the option and the
        fix, never an error row per job, a traceback, or a value accepted silently (``--jobs 0``, NaN ratio)."""
        from bench.images import FITS

        def bad(option: str, value: Any, expected: str) -> ConfigError:
            return ConfigError(f"{option} {brief(value)} is not allowed: {expected}")

        if not all(isinstance(m, str) and m for m in self.methods):
            raise bad("--method", self.methods, "give registered method names (python -m bench list methods)")
        if not isinstance(self.method_options, dict):
            raise bad("--set", self.method_options, "method options are key=value pairs")
        for option, values, low in (("--shots", self.shots, 1), ("--seeds", self.seeds, 0)):
            if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in values):
                raise bad(option, values, f"a non-empty list of integers ≥ {low} (e.g. 1-5, 1,3 or 1 3)")
        if self.protocol not in ("paper", "random"):
            raise bad("--protocol", self.protocol, "paper or random")
        if self.min_defect_types < 1:
            raise bad("--min-defect-types", self.min_defect_types, "at least 1 (default 2)")
        if not (math.isfinite(self.coreset_ratio) and 0 < self.coreset_ratio <= 1):
            raise bad("--coreset-ratio", self.coreset_ratio, "a share of the memory bank kept, in (0, 1] (default 0.1)")
        if self.precision not in ("fp32", "bf16"):
            raise bad("--precision", self.precision, "fp32 or bf16")
        if self.image_fit is not None and self.image_fit not in FITS:
            raise bad("--image-fit", self.image_fit, " or ".join(FITS))
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(self.device)):
            raise bad("--device", self.device, "auto, cpu, cuda or cuda:N")
        if self.jobs < 1:
            raise bad("--jobs", self.jobs, "at least 1 worker process (default 1)")
        if self.backend not in ("loky", "dask"):
            raise bad("--backend", self.backend, "loky or dask")
        if self.threads is not None and self.threads < 1:
            raise bad("--threads", self.threads, "at least 1 (default: all cores)")

    def dataset_options(self) -> DatasetOptions:
        return DatasetOptions(
            exclude_combined=self.exclude_combined,
            min_defect_types=self.min_defect_types,
            categories=tuple(self.categories) if self.categories else None,
        )

    def feature_config(self):  # noqa: ANN201 - FeatureConfig, imported lazily
        from bench.features import FeatureConfig

        return FeatureConfig(
            backbone=self.backbone, weights=self.weights, zero_init_last=self.zero_init_last, precision=self.precision,
            image_fit=self.image_fit or dataset_image_fit(self.dataset),
            layers=tuple(self.layers) if self.layers else None,
        )


def dataset_image_fit(dataset: str) -> str:
    """The image fit an adapter declares (``register_dataset(..., image_fit=...)``; MTD: ``squash``), else ``crop``.

    An unknown dataset name gives ``crop`` here; :func:`load_dataset` reports the name with the known ones.
    """
    from bench.datasets import DATASETS, import_all

    import_all()
    return str(DATASETS.get(dataset).meta.get("image_fit", "crop")) if dataset in DATASETS else "crop"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError("--device cuda was asked for but no CUDA device is available; use --device cpu or auto.")
    return torch.device(name)


_STORES: dict[str, Any] = {}


def get_store(cfg: RunConfig):  # noqa: ANN201 - FeatureStore
    """One FeatureStore per feature config per process (the backbone is loaded once)."""
    from bench.features import FeatureStore

    fcfg = cfg.feature_config()
    k = fcfg.key() + str(cfg.cache_dir) + cfg.device
    if k not in _STORES:
        dev = resolve_device(cfg.device)
        _STORES[k] = FeatureStore(fcfg, cache_root=Path(cfg.cache_dir) if cfg.cache_dir else None, device=str(dev))
    return _STORES[k]


@dataclass
class Job:
    method: str
    method_config: dict[str, Any]
    category: str
    shots: int
    seed: int
    key: str
    episode: Episode | None
    error: str | None = None  # set when the job cannot even start (e.g. too few images)
    dataset_content: str = ""  # Samples.content_hash of the category


def _job_identity(
    cfg: RunConfig, samples: Samples, method: str, mcfg: dict, category: str, shots: int, seed: int, episode_hash: str,
    content: str,
) -> dict:
    """What defines a job. ``content`` is the hash of the names and bytes of every image of the category
    (:meth:`Samples.content_hash`): the jobs of a category are redone when any of its images changes."""
    return {
        "runner": RUNNER_VERSION,
        "method": method,
        "method_config": mcfg,
        "features": cfg.feature_config().key(),
        "coreset_ratio": cfg.coreset_ratio,
        "textures": cfg.textures,
        "dataset": samples.dataset,
        "dataset_content": content,
        "category": category,
        "shots": shots,
        "seed": seed,
        "protocol": protocol_id(cfg.protocol),
        "include_good": cfg.include_good,
        "exclude_combined": cfg.exclude_combined,
        "episode": episode_hash,
    }


def plan(cfg: RunConfig, samples: Samples) -> list[Job]:
    """Expand the grid into jobs (episodes are built here; impossible episodes become failing jobs)."""
    specs = [get_method(m) for m in cfg.methods]
    configs = {spec.name: spec.make_config(spec.select_options(cfg.method_options)) for spec in specs}
    memo = hash_memo_dir(cfg.cache_dir)
    jobs: list[Job] = []
    for category in samples.categories():
        has_normals = bool(samples.train_paths(category))
        try:
            content, content_err = samples.content_hash(category, memo), None
        except DatasetError as exc:
            content, content_err = "unreadable", str(exc)
        for seed in cfg.seeds:
            for shots in cfg.shots:
                try:
                    episode: Episode | None = make_episode(samples, category, shots, seed, cfg.protocol, cfg.include_good)
                    ehash, err = episode.hash, content_err
                except DatasetError as exc:
                    episode, ehash, err = None, "none", str(exc)
                for spec in specs:
                    mcfg = config_dict(configs[spec.name])
                    ident = _job_identity(cfg, samples, spec.name, mcfg, category, shots, seed, ehash, content)
                    why = "" if has_normals or err else spec.cls.normal_images_needed(configs[spec.name])
                    job_err = err or (_no_normals_error(samples, category, spec.name, why) if why else None)
                    jobs.append(Job(spec.name, mcfg, category, shots, seed, config_hash(ident), episode, job_err, content))
    return jobs


def _no_normals_error(samples: Samples, category: str, method: str, why: str) -> str:
    """The error of a job whose method needs normal training images that the category does not have."""
    return (  # the same text for every category, so the run's failure summary says it once per method
        f"method {method!r} needs normal (defect-free) training images for {why}, but the category has none (its "
        f"train/good is empty; dataset {samples.dataset!r} at {samples.root}). Add defect-free images to the "
        "category's train/good folder, or choose a method that needs none (e.g. protonet, knn, logreg, direct, "
        "contrastive-raw)."
    )


def _base_row(cfg: RunConfig, samples: Samples, job: Job, store: Any) -> dict[str, Any]:
    fcfg = cfg.feature_config()
    return {
        "key": job.key,
        "method": job.method,
        "method_config": job.method_config,
        "method_config_hash": config_hash(job.method_config),
        "features": {**fcfg.record(), "coreset_ratio": cfg.coreset_ratio, "key": fcfg.key(), "decoding": DECODING},
        "weights": store.weights_info.record() if store is not None else None,
        "dataset": samples.dataset,
        "data_root": str(samples.root),
        "dataset_manifest": samples.manifest_hash(job.category),
        "dataset_content": job.dataset_content,
        "dataset_info": samples.info,
        "category": job.category,
        "shots": job.shots,
        "seed": job.seed,
        "protocol": protocol_id(cfg.protocol),
        "class_set": {
            "combined": "excluded" if cfg.exclude_combined else "kept",
            "good": "included" if cfg.include_good else "excluded",
            "min_defect_types": cfg.min_defect_types,
        },
        "textures": cfg.textures or "procedural",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# Errors of the machine, not of the job: every later job would fail the same way (and its error row might not
# even be writable), so the run stops with one message instead of filling the results with error rows.
_FATAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def _fatal_disk_error(exc: OSError, cfg: RunConfig, out: Path) -> BenchError:
    where = f" ({exc.filename})" if exc.filename else ""
    cache = cfg.cache_dir or os.environ.get("BENCH_CACHE") or "~/.cache/fsad-bench"
    return BenchError(
        f"{exc.strerror or exc}{where} while running the grid. The cache is at {cache} (--cache-dir) and the "
        f"results at {out} (--out): free space there or point them at another disk, then run the same command "
        f"again to resume. Every finished job is saved in {out / 'results.jsonl'}."
    )


def run_job(cfg: RunConfig, samples: Samples, job: Job, out: Path) -> dict[str, Any]:
    """Run one job and return its row (status ok or error). Never raises for a job-level failure.

    Raises:
        BenchError: for problems that would fail every job (weights, a full or read-only disk).
    """
    store = None
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    try:
        store = get_store(cfg)
    except BenchError:
        raise  # weights problems are fatal for the whole run (raised in preflight already)
    row = _base_row(cfg, samples, job, store)
    row["env"] = environment(str(device))
    if job.error or job.episode is None:
        row.update(status="error", error=job.error or "no episode")
        return row
    ep = job.episode
    try:
        episode_file = ep.save(out / "episodes")
    except OSError as exc:
        episode_file = out / "episodes" / f"{ep.hash}.json"
        if not episode_file.is_file():  # (a run saving the same episode at the same time may win the rename)
            if exc.errno in _FATAL_ERRNOS:
                raise _fatal_disk_error(exc, cfg, out) from None
            row.update(status="error", error=f"cannot write the episode file {episode_file} ({exc.strerror or exc})")
            return row
    row["episode"] = {
        "hash": ep.hash,
        "file": str(episode_file.relative_to(out)),
        "support_rule": "first-n by sorted file name" if ep.protocol == "paper_fixed" else "seeded random draw",
    }
    row.update(class_names=list(ep.class_names), n_classes=ep.n_classes, n_queries=len(ep.queries))
    stats_before = {k: dict(v) for k, v in store.stats.items()}
    ctx = TaskContext(
        dataset=samples.dataset,
        category=job.category,
        seed=job.seed,
        shots=job.shots,
        train_paths=samples.train_paths(job.category),
        store_factory=lambda: store,
        coreset_ratio=cfg.coreset_ratio,
        device=device,
        cache_root=Path(cfg.cache_dir) if cfg.cache_dir else None,
        textures=cfg.textures,
    )
    method: Any = None
    try:
        spec = get_method(job.method)
        method = spec.cls(spec.make_config(spec.select_options(cfg.method_options)), ctx)
        method.name = spec.name
        support = SupportSet(tuple(ep.support_paths()), tuple(ep.support_labels()), ep.class_names)
        with ctx.timer("fit"):
            method.fit(support)
        with ctx.timer("predict"):
            scores = np.asarray(method.predict(list(ep.queries)))
        if scores.shape != (len(ep.queries), ep.n_classes):
            raise RuntimeError(f"method {job.method} returned scores of shape {scores.shape}, expected {(len(ep.queries), ep.n_classes)}")
        if not np.isfinite(scores).all():  # argmax of NaN is class 0: a number at chance, not a result
            n_bad = int((~np.isfinite(scores)).any(axis=1).sum())
            raise BenchError(
                f"method {job.method} returned non-finite scores (NaN or inf) for {n_bad} of {len(ep.queries)} "
                "queries, so the job has no result. A training run that diverged (try a smaller learning rate with "
                "--set) or damaged weights (--weights) cause this."
            )
        y_pred = scores.argmax(axis=1).tolist()
        row.update(episode_metrics(ep.query_labels, y_pred, ep.class_names))
        row.update(status="ok", error=None, y_true=list(ep.query_labels), y_pred=y_pred)
        row["train_log"] = ctx.log
        row["method_info"] = method.extra_info()
    except BenchError as exc:
        row.update(status="error", error=str(exc))
    except OSError as exc:
        if exc.errno in _FATAL_ERRNOS:
            raise _fatal_disk_error(exc, cfg, out) from None
        log.debug("job failed", exc_info=True)
        row.update(status="error", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-4000:])
    except Exception as exc:  # noqa: BLE001 - a failed job is a row, not a crash of the grid
        log.debug("job failed", exc_info=True)
        row.update(status="error", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-4000:])
    stats_after = store.stats
    row["cache"] = {
        stage: {k: v - stats_before.get(stage, {}).get(k, 0) for k, v in d.items()} for stage, d in stats_after.items()
    }
    row["timing"] = {**{k: round(v, 4) for k, v in ctx.timings.items()}, "total": round(time.perf_counter() - t0, 4)}
    method = None  # the job's model, optimiser state and tensors go before the heap's free pages are returned
    release_free_memory()
    return row


_WATCHDOG: threading.Thread | None = None


def _exit_when_orphaned(parent_pid: int) -> None:
    """In a local worker process: exit as soon as the process that started it is gone.

    loky workers do not notice on POSIX when the main process is killed (SIGKILL, OOM killer): they would go
    on running queued groups and appending rows next to a resumed run. Finished rows are safe either way
    (complete lines, never two ``ok`` rows per key); this stops the orphans from burning the CPU.
    """
    global _WATCHDOG
    if _WATCHDOG is not None or os.getppid() != parent_pid:
        return

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.25)
        os._exit(3)

    _WATCHDOG = threading.Thread(target=watch, name="bench-parent-watchdog", daemon=True)
    _WATCHDOG.start()


@contextlib.contextmanager
def _sigint_held(local_workers: bool = True) -> Iterator[None]:
    """In the main process: hold back SIGINT (Ctrl-C) while local worker processes may be started.

    Ctrl-C in a terminal goes to the whole process group, workers included. A loky worker hit by it between two
    tasks dies printing a traceback (``KeyboardInterrupt`` in loky's own loop, e.g. in its memory check after a
    task). Workers are therefore made deaf to SIGINT and the main process alone handles it: it stops the pool
    (joblib terminates the workers on ``KeyboardInterrupt``) and prints how to resume. The signal mask is
    inherited through fork and exec, so a worker started here, or later by the executor's manager thread (which
    is created here too and inherits the mask), starts with SIGINT blocked; its first task then ignores SIGINT
    and unblocks it (:func:`_worker_setup`). A Ctrl-C pressed meanwhile is delivered to this process when the
    block ends, so it is delayed by the few milliseconds that starting the pool's dispatch takes, never lost.

    The resource trackers are started first, outside the block: starting the standard library's (Python 3.11)
    ends with an unconditional ``SIG_UNBLOCK`` of SIGINT, which would lift the block before the workers start.
    """
    if not local_workers or not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield  # Dask workers run in their own processes, started by the cluster, not by this process
        return
    from multiprocessing import resource_tracker

    from joblib.externals.loky.backend import resource_tracker as loky_resource_tracker

    resource_tracker.ensure_running()
    loky_resource_tracker.ensure_running()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _ignore_sigint() -> None:
    """In a local worker process: ignore Ctrl-C (see :func:`_sigint_held`; the main process stops the pool)."""
    if hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # also discards one that arrived while it was blocked
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _worker_setup(cfg: RunConfig, threads: int | None, parent_pid: int | None) -> None:
    """Prologue of every task sent to a worker process: Ctrl-C ignored, orphan watchdog, torch threads, this
    run's cache root."""
    if parent_pid is not None:  # a local (loky) worker: the main process handles Ctrl-C and stops the pool
        _ignore_sigint()
        _exit_when_orphaned(parent_pid)
    if threads:
        torch.set_num_threads(threads)
    import_plugins(cfg.plugins)  # worker processes do not inherit the main process's imports (loky, Dask)
    if cfg.cache_dir:  # a reused or remote worker: the cache root of this run, not the one it started with
        os.environ["BENCH_CACHE"] = str(Path(cfg.cache_dir).expanduser().resolve())


def run_group(
    cfg: RunConfig, jobs: Sequence[Job], out: Path, threads: int | None = None, parent_pid: int | None = None
) -> list[tuple[str, str, str | None]]:
    """Run jobs (normally of one category and seed) in this process, appending each row as it finishes.

    Jobs finished meanwhile by another run into the same folder are skipped (status ``"skipped"``).
    """
    _worker_setup(cfg, threads, parent_pid)
    samples = load_dataset(cfg.dataset, cfg.data_root, cfg.dataset_options())
    store = ResultsStore(out / "results.jsonl")
    status = []
    for job in jobs:
        if store.is_finished(job.key):
            status.append((job.key, "skipped", None))
            continue
        row = run_job(cfg, samples, job, out)
        store.append_new(row)
        status.append((job.key, row["status"], row.get("error")))
    return status


def prefetch_features(
    cfg: RunConfig, paths: Sequence[str], threads: int | None = None, parent_pid: int | None = None
) -> int:
    """Worker side of the parallel feature stage: cache the patch features of ``paths``; returns how many."""
    _worker_setup(cfg, threads, parent_pid)
    get_store(cfg).ensure(paths)
    return len(paths)


def feature_work(cfg: RunConfig, samples: Samples, jobs: Sequence[Job]) -> list[str]:
    """The images whose PatchCore features the jobs will read, each once, grouped by category.

    Episode images (support and queries) for methods that read patch features; the category's normal images too
    when one builds the memory bank. Parallel runs extract these first, split over the workers, so two workers
    never extract the same cold image (they would otherwise both start on the same category).
    """
    needs_of: dict[str, set[str]] = {}
    for name in {job.method for job in jobs}:
        spec = get_method(name)
        needs_of[name] = spec.cls.feature_needs(spec.make_config(spec.select_options(cfg.method_options)))
    paths: dict[str, None] = {}
    for job in jobs:
        if job.episode is None:
            continue
        needs = needs_of[job.method]
        if "bank" in needs:
            paths.update(dict.fromkeys(samples.train_paths(job.category)))
        if "patch" in needs:
            paths.update(dict.fromkeys([*job.episode.support_paths(), *job.episode.queries]))
    return list(paths)


def check_out_outside_data(out: str | Path, data_root: str | Path) -> None:
    """Refuse an ``--out`` inside the dataset folder (or equal to it).

    Reports write plots (PNG) and tables into ``--out``; inside the dataset they would be scanned as images on
    the next run (``<category>/test/plots/`` a new defect type) or make a generated dataset's folder foreign.

    Raises:
        ConfigError: naming both folders.
    """
    o, r = Path(out).expanduser().resolve(), Path(data_root).expanduser().resolve()
    if o == r or o.is_relative_to(r):
        raise ConfigError(
            f"--out {out} is inside the dataset folder {r}: the next run could read the plots written there as images "
            f"(inside <category>/test/ a new defect type) and the folder would no longer hold only the dataset. Choose "
            f"an --out outside {r}."
        )


def preflight(cfg: RunConfig) -> Samples:
    """Fail fast, before any job, on problems that would fail every job (dataset, methods, weights)."""
    if cfg.cache_dir:
        os.environ["BENCH_CACHE"] = str(Path(cfg.cache_dir).expanduser().resolve())
    samples = load_dataset(cfg.dataset, cfg.data_root, cfg.dataset_options())
    check_options([get_method(m) for m in cfg.methods], cfg.method_options)
    if cfg.weights not in ("imagenet", "random") and not Path(cfg.weights).expanduser().is_file():
        # checked here because the feature key hashes the file before the backbone code can say so
        raise WeightsError(
            f"weights file not found: {Path(cfg.weights).expanduser()}. Pass --weights imagenet, --weights random, "
            "or the path of a local state-dict file."
        )
    get_store(cfg)  # loads the backbone: WeightsError now, not in every job
    return samples


def group_jobs(jobs: Sequence[Job]) -> list[list[Job]]:
    groups: dict[tuple[str, int], list[Job]] = {}
    for j in jobs:
        groups.setdefault((j.category, j.seed), []).append(j)
    return list(groups.values())


@dataclass
class RunReport:
    out: Path
    planned: int
    skipped: int
    ok: int
    failed: list[tuple[Job, str]]  # (job, error)


def _describe(job: Job) -> str:
    return f"{job.method} {job.category} {job.shots}-shot seed {job.seed}"


def execute(cfg: RunConfig, progress: bool = True) -> RunReport:
    """Run the grid of ``cfg``: preflight, plan, skip finished jobs, run the rest, return a summary."""
    from tqdm import tqdm

    out = Path(cfg.out)
    if cfg.data_root:  # before the folder is made (checked again with the root the dataset resolved)
        check_out_outside_data(out, cfg.data_root)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # unique: runs may share the folder
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise BenchError(f"cannot write to the output folder {out} ({exc.strerror}). Choose another with --out.") from None
    samples = preflight(cfg)
    check_out_outside_data(out, samples.root)  # a default root (the synthetic datasets' in the cache)
    for cat, why in samples.skipped.items():
        print(f"note: category {cat} skipped: {why}")
    for cat, entries in samples.ignored.items():
        print(f"note: {describe_ignored(cat, entries)}")
    store = get_store(cfg)
    if not store.weights_info.pretrained:
        print(
            f"WARNING: backbone {cfg.backbone} uses RANDOM weights (--weights random): these results are not comparable "
            "with the paper's ImageNet numbers; every result row records weights=random."
        )
    fcfg = cfg.feature_config()
    if fcfg.image_fit != "crop":
        source = "--image-fit" if cfg.image_fit else f"the default of dataset {cfg.dataset!r}"
        print(f"note: images are fitted to {fcfg.crop}x{fcfg.crop} by {fcfg.image_fit!r} ({source}; --image-fit crop "
              "for the paper's resize + centre crop); every row records features.image_fit.")
    jobs = plan(cfg, samples)
    results = ResultsStore(out / "results.jsonl")
    done = results.finished_keys()
    todo = [j for j in jobs if j.key not in done]
    skipped = len(jobs) - len(todo)
    if skipped:
        print(f"resuming: {skipped} of {len(jobs)} jobs already finished in {results.path}")
    failed: list[tuple[Job, str]] = []
    ok = 0
    groups = group_jobs(todo)
    by_key = {j.key: j for j in todo}
    n_workers = max(1, min(cfg.jobs, len(groups)))
    total_threads = cfg.threads or torch.get_num_threads()
    if n_workers == 1:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        bar = tqdm(total=len(todo), desc="jobs", unit="job", disable=not progress or not todo)
        for group in groups:
            for job in group:
                bar.set_postfix_str(_describe(job), refresh=False)
                if results.is_finished(job.key):  # finished meanwhile by another run into the same folder
                    skipped += 1
                    bar.update(1)
                    continue
                row = run_job(cfg, samples, job, out)
                results.append_new(row)
                if row["status"] == "ok":
                    ok += 1
                else:
                    failed.append((job, row.get("error") or ""))
                bar.update(1)
        bar.close()
    else:
        from joblib import Parallel, delayed, parallel_config

        per_worker = max(1, total_threads // n_workers)
        backend = cfg.backend
        ctx_kwargs: dict[str, Any] = {"backend": backend}
        client = None
        if backend == "dask":
            try:
                from dask.distributed import Client
            except ImportError:
                raise BenchError("--backend dask needs the optional dependency: pip install -c constraints.txt -e '.[dask]'") from None
            try:
                client = Client(cfg.scheduler) if cfg.scheduler else Client(processes=True, n_workers=n_workers, threads_per_worker=1)
            except (OSError, TimeoutError) as exc:
                raise BenchError(
                    f"cannot connect to the Dask scheduler {cfg.scheduler or '(local cluster)'} ({type(exc).__name__}: "
                    f"{str(exc)[:200]}). Check --scheduler (e.g. tcp://HOST:8786) and that the scheduler is running "
                    "and reachable from this machine."
                ) from None
        # Workers load the dataset themselves: give them the exact folder and cache this process resolved (a
        # worker started elsewhere, or reused from an earlier run, has its own $BENCH_CACHE). Keys do not change.
        wcfg = dataclasses.replace(
            cfg,
            data_root=str(samples.root),
            cache_dir=str(Path(cfg.cache_dir or os.environ.get("BENCH_CACHE", "~/.cache/fsad-bench")).expanduser().resolve()),
        )
        local = backend == "loky"  # workers started by this process (Dask's are started by the cluster)
        parent_pid = os.getpid() if local else None  # local workers exit if this process is killed
        try:
            with parallel_config(**ctx_kwargs, n_jobs=n_workers, inner_max_num_threads=per_worker if local else None):
                paths = feature_work(cfg, samples, todo)
                if paths:  # the feature stage, split over the workers (cached images cost a file check)
                    chunks = [c.tolist() for c in np.array_split(np.array(paths, dtype=object), n_workers) if len(c)]
                    bar = tqdm(total=len(paths), desc="features", unit="img", disable=not progress)
                    with _sigint_held(local):  # the pool starts here (see _sigint_held)
                        prefetch = Parallel(return_as="generator_unordered")(
                            delayed(prefetch_features)(wcfg, c, per_worker, parent_pid) for c in chunks
                        )
                    for n in prefetch:
                        bar.update(n)
                    bar.close()
                with _sigint_held(local):  # the pool starts here unless the feature stage started it
                    stream = Parallel(return_as="generator_unordered")(
                        delayed(run_group)(wcfg, g, out, per_worker, parent_pid) for g in groups
                    )
                bar = tqdm(total=len(todo), desc=f"jobs ({n_workers} workers)", unit="job", disable=not progress)
                for status in stream:
                    for key, st, err in status:
                        if st == "ok":
                            ok += 1
                        elif st == "skipped":
                            skipped += 1
                        else:
                            failed.append((by_key[key], err or ""))
                    bar.update(len(status))
                bar.close()
        except Exception as exc:
            # A worker process that died (OOM killer, segfault, kill -9) is a machine problem, not a bug: say
            # what happened and how to go on instead of printing joblib's or Dask's traceback.
            if type(exc).__name__ not in ("TerminatedWorkerError", "BrokenProcessPool", "KilledWorker"):
                raise
            raise BenchError(
                f"a worker process died while running the grid ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
                "It may have been killed by the system for lack of memory: try fewer --jobs. Every finished job is "
                f"saved in {out / 'results.jsonl'}; run the same command again to resume."
            ) from None
        finally:
            if client is not None:
                client.close()
    return RunReport(out=out, planned=len(jobs), skipped=skipped, ok=ok, failed=failed)
