"""Grid runner: check everything first (:func:`preflight`), expand (method × category × shots × seed) into jobs
(each task's planner, :class:`bench.run.job.TaskJobs`), run what is not finished, store one row per job (:func:`execute`).

One loop serves a serial and a parallel run: groups of jobs (one category and seed) go through
:meth:`~bench.run.workers.WorkerPool.map_unordered`, in this process one job at a time or spread over ``--jobs``
worker processes with joblib (torch threads split between them), and every finished job is counted as its
status arrives. Parallel runs first extract the features every job will read, split over the workers, then do the
work that does not depend on the shots (the paper's pretraining, one task per model: a task's ``prepare_work``)
spread over the workers too, so that one seed's pretrainings no longer run one after another in its group. A failed
job becomes a row with its error, never a crash of the grid; the command exits non-zero at the end if any job
failed.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from bench.cache import hash_memo_dir
from bench.compat import release_free_memory
from bench.datasets import Samples, check_image_files, describe_ignored, load_dataset
from bench.errors import BenchError, ConfigError, DatasetError, WeightsError, brief_list, clip
from bench.paths import probe_writable, set_cache_root
from bench.results import ResultsStore, check_results_file
from bench.run.config import RunConfig
from bench.run.job import feature_store, task_jobs
from bench.run.plan import Job, failure_groups, failure_lines, group_jobs
from bench.run.workers import resolve_threads, worker_pool, worker_setup


def run_group(
    cfg: RunConfig, jobs: Sequence[Job], out: Path, threads: int | None = None, parent_pid: int | None = None,
    samples: Samples | None = None,
) -> Iterator[tuple[str, str, str | None]]:
    """Run jobs (normally of one category and seed) in this process, appending each row as it finishes, and yield
    ``(key, status, error)`` per job. ``samples`` is the run's dataset; a worker process loads it (``None``).

    Jobs finished meanwhile by another run into the same folder are skipped (status ``"skipped"``).
    """
    samples = worker_start(cfg, threads, parent_pid, samples)
    store = ResultsStore(out / "results.jsonl")
    for job in jobs:
        if store.is_finished(job.key):
            yield job.key, "skipped", None
            continue
        row = task_jobs(job.task).run(cfg, samples, job, out)
        store.append_new(row)
        yield job.key, row["status"], row.get("error")


def worker_start(cfg: RunConfig, threads: int | None, parent_pid: int | None, samples: Samples | None) -> Samples:
    """The prologue of a group or preparation task (:func:`worker_setup`) and the run's dataset: ``samples`` when
    given (this process), else loaded from the folder the main process resolved (a worker, a quarter of a second for
    MTD; not kept between tasks, so a reused worker never sees an earlier run's files)."""
    worker_setup(cfg.plugins, cfg.cache_dir, threads, parent_pid)
    return samples if samples is not None else load_dataset(cfg.dataset, cfg.data_root, cfg.dataset_options())


def run_group_in_worker(*args: object) -> list[tuple[str, str, str | None]]:
    """:func:`run_group` as a worker task: the statuses of the whole group, returned when it is done."""
    return list(run_group(*args))  # type: ignore[arg-type]


def prefetch_features(
    cfg: RunConfig, paths: Sequence[str], threads: int | None = None, parent_pid: int | None = None
) -> int:
    """Worker side of the parallel feature stage: cache the patch features of ``paths``; returns how many."""
    worker_setup(cfg.plugins, cfg.cache_dir, threads, parent_pid)
    feature_store(cfg).ensure(paths)
    return len(paths)


def prepare_in_worker(
    cfg: RunConfig, job: Job, threads: int | None = None, parent_pid: int | None = None, samples: Samples | None = None
) -> tuple[str, str | None]:
    """Worker side of the preparation stage: the shot-independent work of ``job``'s method (pretraining), cached
    for every shot's job; returns ``(job description, error or None)``. An error is left to the jobs, which do the
    work themselves and record it in their rows; a full or read-only disk stops the run as in a job."""
    from bench.run.job import FATAL_ERRNOS, fatal_disk_error

    samples = worker_start(cfg, threads, parent_pid, samples)
    try:
        task_jobs(job.task).prepare(cfg, samples, job)  # type: ignore[misc]
    except OSError as exc:
        if exc.errno in FATAL_ERRNOS:
            raise fatal_disk_error(exc, cfg, Path(cfg.out)) from None
        return job.describe(), f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - the jobs redo it and record the error
        return job.describe(), f"{type(exc).__name__}: {exc}"
    finally:
        release_free_memory()  # as after a job: the model is gone, the heap's free pages go back
    return job.describe(), None


def is_regular_file(path: Path) -> bool:
    """``path.is_file()``, and ``False`` for a name the system refuses (too long) instead of an OSError."""
    try:
        return path.is_file()
    except OSError:
        return False


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


def largest_shots(cfg: RunConfig, samples: Samples, category: str) -> tuple[int, str]:
    """The largest shot count ``category`` supports, but no more than the run's largest (0: none, or the category
    fails at 1 shot for another reason, which its jobs then carry as before), and why the next one does not ("" when
    that is beyond the run's largest).

    Bisection: an episode that fits k shots fits fewer (k + 1 images per class for classification, k normal images
    for detection), so a few episodes per category answer, whatever the list.
    """
    build = task_jobs(cfg.task).episode_at
    assert build is not None

    def why_not(k: int) -> str:
        try:
            build(cfg, samples, category, k)
            return ""
        except DatasetError as exc:
            return str(exc)

    if why_not(1):
        return 0, ""
    # 1..lo fit; hi and above do not (reason: why hi does not). No episode has more shots than the category images.
    lo, hi, reason = 1, min(max(cfg.shots), int((samples.table.category == category).sum())) + 1, ""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if (why := why_not(mid)) == "":
            lo = mid
        else:
            hi, reason = mid, why
    return lo, reason


def check_shots(cfg: RunConfig, samples: Samples) -> None:
    """Refuse shot counts that no category can support, before planning.

    Each would be a set of jobs that all fail with the same reason: ``--shots 1-300`` on a dataset with 7 images per
    defect type wrote 588 error rows. Categories that cannot run even one shot are left to their jobs' errors (the
    reason is not the shot count).

    Raises:
        ConfigError: naming the shot counts, the largest one any category supports and why the next one fails there.
    """
    if task_jobs(cfg.task).episode_at is None:
        return
    fits = {c: largest_shots(cfg, samples, c) for c in samples.categories()}
    if not any(k for k, _ in fits.values()):
        return
    best_cat = max(fits, key=lambda c: fits[c][0])
    best, reason = fits[best_cat]
    too_many = [k for k in dict.fromkeys(cfg.shots) if k > best]
    if too_many:
        raise ConfigError(
            f"--shots {brief_list(too_many)}: no category has the images for more than {best}-shot (the most, in "
            f"{clip(best_cat, 60)}; at {best + 1} shots: {clip(reason, 300)}). Use --shots up to {best} "
            f"(e.g. 1-{best})."
        )


def preflight(cfg: RunConfig) -> Samples:
    """Fail fast, before any job, on problems that would fail every job (dataset, its images, shots, methods,
    weights)."""
    if cfg.cache_dir:
        set_cache_root(cfg.cache_dir)
    samples = load_dataset(cfg.dataset, cfg.data_root, cfg.dataset_options())
    check_shots(cfg, samples)
    cfg.method_configs  # noqa: B018 - built (and checked) once, here: unknown names and options fail now
    weights = Path(cfg.weights).expanduser()
    if cfg.weights not in ("imagenet", "random") and not is_regular_file(weights):
        # checked here because the feature key hashes the file before the backbone code can say so
        raise WeightsError(
            f"weights file not found: {clip(weights)}. Pass --weights imagenet, --weights random, "
            "or the path of a local state-dict file."
        )
    check_image_files(samples, hash_memo_dir(cfg.cache_dir))  # the hashes the plan's job keys read next
    feature_store(cfg)  # loads the backbone: WeightsError now, not in every job
    return samples


@dataclass
class RunReport:
    out: Path
    planned: int
    skipped: int
    ok: int
    failed: list[tuple[Job, str]]  # (job, error)


def execute(cfg: RunConfig, progress: bool = True) -> RunReport:
    """Run the grid of ``cfg``: preflight, plan, skip finished jobs, run the rest, return a summary."""
    from tqdm import tqdm

    out = Path(cfg.out)
    if cfg.data_root:  # before the folder is made (checked again with the root the dataset resolved)
        check_out_outside_data(out, cfg.data_root)
    try:
        probe_writable(out)
    except OSError as exc:
        raise BenchError(
            f"cannot write to the output folder {clip(out)} ({exc.strerror}). Choose another with --out."
        ) from None
    check_results_file(out / "results.jsonl")  # a FIFO there would hang the run at its first read
    samples = preflight(cfg)
    check_out_outside_data(out, samples.root)  # a default root (the synthetic datasets' in the cache)
    for cat, why in samples.skipped.items():
        print(f"note: category {cat} skipped: {why}")
    for cat, entries in samples.ignored.items():
        print(f"note: {describe_ignored(cat, entries)}")
    if not feature_store(cfg).weights_info.pretrained:
        print(
            f"WARNING: backbone {cfg.backbone} uses RANDOM weights (--weights random): these results are not comparable "
            "with the paper's ImageNet numbers; every result row records weights=random."
        )
    fcfg = cfg.features
    if fcfg.image_fit != "crop":
        source = "--image-fit" if cfg.image_fit else f"the default of dataset {cfg.dataset!r}"
        print(f"note: images are fitted to {fcfg.crop}x{fcfg.crop} by {fcfg.image_fit!r} ({source}; --image-fit crop "
              "for the paper's resize + centre crop); every row records features.image_fit.")
    hooks = task_jobs(cfg.task)
    for line in hooks.notes(cfg):
        print(line)
    jobs = hooks.plan(cfg, samples)
    results = ResultsStore(out / "results.jsonl")
    done = results.finished_keys()
    todo = [j for j in jobs if j.key not in done]
    skipped = len(jobs) - len(todo)
    if skipped:
        print(f"resuming: {skipped} of {len(jobs)} jobs already finished in {results.path}")
    doomed = failure_groups([(j, j.error) for j in todo if j.error])
    if doomed:  # said now, not only at the end: the fix (fewer --shots, --exclude-combined, ...) is in each reason
        n = sum(len(js) for js in doomed.values())
        print("\n".join([f"WARNING: {n} of {len(todo)} job(s) cannot run and will be recorded as failed "
                         f"({len(doomed)} distinct reason(s)):", *failure_lines(doomed, max_errors=5)]))
    failed: list[tuple[Job, str]] = []
    ok = 0
    groups = group_jobs(todo, hooks.group_by_method)
    by_key = {j.key: j for j in todo}
    n_workers = max(1, min(cfg.jobs, len(groups)))
    # Workers load the dataset themselves: give them the exact folder and cache this process resolved (a worker
    # started elsewhere, or reused from an earlier run, has its own $BENCH_CACHE). Keys do not change.
    wcfg = dataclasses.replace(cfg, data_root=str(samples.root), cache_dir=str(cfg.cache_root()))
    threads, why = resolve_threads(cfg.threads, n_workers)
    if why:
        print(f"note: {why}; every row records env.torch_threads.")
    with worker_pool(n_workers, cfg.backend, cfg.scheduler, threads, results.path) as pool:
        paths = hooks.feature_work(cfg, samples, todo) if pool.parallel else []
        if paths:  # the feature stage, split over the workers (cached images cost a file check)
            chunks = [c.tolist() for c in np.array_split(np.array(paths, dtype=object), pool.workers) if len(c)]
            bar = tqdm(total=len(paths), desc="features", unit="img", disable=not progress)
            for n in pool.map_unordered(prefetch_features, [(wcfg, c, pool.threads, pool.parent_pid) for c in chunks]):
                bar.update(n)
            bar.close()
        prep = hooks.prepare_work(cfg, todo) if pool.parallel and hooks.prepare is not None else []
        if prep:  # shot-independent work (pretraining), one task per model, spread over the workers before the jobs
            bar = tqdm(total=len(prep), desc="pretraining", unit="model", disable=not progress)
            for what, error in pool.map_unordered(prepare_in_worker, [(wcfg, j, pool.threads, pool.parent_pid) for j in prep]):
                if error:
                    print(f"note: preparing {what} failed ({clip(error, 300)}); its jobs will try again and record it")
                bar.update(1)
            bar.close()
        # One task per group: in this process a generator (the bar moves per job), in a worker the group's list.
        task = run_group_in_worker if pool.parallel else run_group
        calls = [(wcfg, g, out, pool.threads, pool.parent_pid, None if pool.parallel else samples) for g in groups]
        desc = f"jobs ({pool.workers} workers)" if pool.parallel else "jobs"
        bar = tqdm(total=len(todo), desc=desc, unit="job", disable=not progress or not todo)
        for key, status, error in itertools.chain.from_iterable(pool.map_unordered(task, calls)):
            if not pool.parallel:
                bar.set_postfix_str(by_key[key].describe(), refresh=False)
            if status == "ok":
                ok += 1
            elif status == "skipped":  # finished meanwhile by another run into the same folder
                skipped += 1
            else:
                failed.append((by_key[key], error or ""))
            bar.update(1)
        bar.close()
    return RunReport(out=out, planned=len(jobs), skipped=skipped, ok=ok, failed=failed)
