"""Run methods over categories × shots × seeds and store one result row per job.

Examples::

    python -m bench run --method contrastive                     # built-in synthetic dataset
    python -m bench run --method direct protonet --shots 1-5 --seeds 1-5
    python -m bench run --method protonet --dataset mvtec_ad --data-root /data/mvtec_ad --categories screw
    python -m bench run --config my_grid.yaml --set lr=1e-4
    python -m bench run --method region-protonet protonet-residual --dataset mtd --data-root /data/Magnetic-Tile-Defect \
        --unit region --masks estimated --protocol random --shots 1,5 --seeds 1-5
    python -m bench run --method region-cache --dataset mvtec_ad --data-root /data/mvtec_ad --categories screw \
        --protocol mvtec-fs --mvtec-fs /data/MVTec-FS/CONFIG --shots 1,3,5 --seeds 1-5
    python -m bench run --task detection --method patchcore-kshot gaussian coft-ad --shots 1,2,4,8 --seeds 1-5
    python -m bench run --task discovery --method kmeans anomaly-clustering mebin-kmeans anomalyncd --seeds 1-5

Re-running the same command resumes: finished jobs are skipped. A YAML config file may give any option
(``method: [a, b]``, ``shots: 1-5``, ``weights: random``, ...); command-line flags win over the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.cli._args import add_feature_options, add_progress_option, parse_int_list, parse_set, read_config_file
from bench.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, ConfigError, Terminated, brief, brief_list
from bench.paths import DEFAULT_OUT
from bench.run.defaults import MAX_LIST_VALUES
from bench.tasks import tasks

if TYPE_CHECKING:  # imported where used: torch and the grid load only once the options are read (issue #24)
    from bench.run import Job, RunConfig


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML file with any of these options")
    p.add_argument("--task", choices=list(tasks()),
                   help="what the methods solve (docs/tasks.md): classification (default; few-shot defect types, accuracy), "
                   "detection (k normal shots, image AUROC; the methods are detectors: bench list detectors) or discovery "
                   "(group unlabelled images into K types; bench list discoverers)")
    p.add_argument("--method", "--methods", dest="methods", nargs="+",
                   help="registered method name(s) (bench list methods; with --task detection: bench list detectors)")
    p.add_argument("--set", dest="set_", action="append", default=[], metavar="KEY=VALUE", help="method option override (repeatable)")
    p.add_argument("--dataset", help="dataset adapter (bench list datasets); default: synthetic (built-in)")
    p.add_argument("--data-root", help="dataset root folder (for synthetic: where to generate it)")
    p.add_argument("--categories", nargs="+", help=f"categories to run (default: all; at most {MAX_LIST_VALUES:,})")
    p.add_argument("--shots", nargs="+", help=f"e.g. 1-5 (default), 1,5 or 1 5; integers ≥ 1, at most "
                   f"{MAX_LIST_VALUES:,} values, each no more than the images of a defect type less one")
    p.add_argument("--seeds", nargs="+",
                   help=f"e.g. 1-5 (default), 1,3 or 1 3; integers ≥ 0, at most {MAX_LIST_VALUES:,} values")
    p.add_argument("--protocol", choices=[name for task in tasks().values() for name in task.protocols],
                   help="classification: support selection, first-n (paper, default) or seeded random, MVREC's mvtec-fs "
                   "(regions of MVTec-FS, --mvtec-fs) or UniADC's good-or-defect (good or which type); detection: "
                   "kshot_normals (its only one); discovery: ncd (default, AnomalyNCD's: combined removed, good kept as "
                   "a class) or defects-only")
    p.add_argument("--maps", help="discovery, and classification's --masks estimated: folder of 8- or 16-bit PNG anomaly "
                   "maps <maps>/<category>/<type>/<name>.png written by any detector (default: the harness's PatchCore)")
    g = p.add_argument_group("region units (classification; ../shared/docs/field-protocols.md)")
    g.add_argument("--unit", choices=["image", "region"], help="what an item is: a whole image (default) or a defect "
                   "region with its mask (needs ground-truth masks; default with --protocol mvtec-fs)")
    g.add_argument("--masks", choices=["gt", "estimated"], help="the query regions' masks given to region methods: "
                   "ground truth (default) or estimated from the PatchCore map of the category's normal images")
    g.add_argument("--regions", choices=["image", "components"], help="--unit region: one region per defect image "
                   "(default) or per connected component of its mask")
    g.add_argument("--mask-estimator", help="--masks estimated: topN (the N %% highest pixels of the map; default top3) "
                   "or mebin")
    g.add_argument("--mvtec-fs", help="--protocol mvtec-fs: the MVTec-FS CONFIG folder (<category>_config1/"
                   "{train,valid}.csv); the images come from --dataset mvtec_ad --data-root")
    g.add_argument("--normal-shots", type=int, help="--protocol good-or-defect: normal shots Kn (default 2); --shots "
                   "gives the defect shots per type Ka")
    p.add_argument("--include-good", action="store_true", default=None, help="add test good images as a class (Appendix F)")
    p.add_argument("--exclude-combined", action="store_true", default=None, help="drop the 'combined' defect type")
    p.add_argument("--min-defect-types", type=int, help="skip categories with fewer defect types (default: 2 for classification, 1 for the other tasks)")
    add_feature_options(p, defaults=False)
    p.add_argument("--bank-seed", metavar="N|per-run-seed",
                   help="coreset seed of the PatchCore memory bank: one bank per category for every run seed (default "
                   "1, the bank seed 1 always had) or per-run-seed (a bank per run seed, as before)")
    p.add_argument("--textures", help="DTD folder for pseudo-defects (default: built-in procedural textures)")
    p.add_argument("--jobs", type=int, help="worker processes (default 1)")
    p.add_argument("--backend", choices=["loky", "dask"], help="joblib backend for --jobs > 1")
    p.add_argument("--scheduler", help="Dask scheduler address (tcp://HOST:8786) for --backend dask with "
                   "--jobs N ≥ 2 (default: a local cluster)")
    p.add_argument("--out", help=f"results folder (default {DEFAULT_OUT}/, ignored by git)")
    add_progress_option(p)


COPIED_OPTIONS = (
    "dataset", "data_root", "categories", "protocol", "include_good", "exclude_combined", "min_defect_types",
    "backbone", "weights", "layers", "precision", "image_fit", "coreset_ratio", "bank_seed",
    "textures", "device", "jobs", "backend", "scheduler", "threads", "out", "cache_dir", "task", "maps",
    "unit", "masks", "regions", "mask_estimator", "mvtec_fs", "normal_shots",
)  # fmt: skip
"""Flags whose value, when given, is the :class:`RunConfig` field of the same name as is (the others are parsed)."""


def _load_config_file(path: Path) -> dict[str, Any]:
    """The options of a YAML config file, with the run's names (``method`` → methods, ``set`` → method_options)."""
    from bench.run import RunConfig

    known = {f.name for f in dataclasses.fields(RunConfig)} | {"method", "set"}
    values = read_config_file(path, known)
    if "method" in values:
        values["methods"] = values.pop("method")
    if "set" in values:
        values["method_options"] = values.pop("set")
    opts = values.get("method_options")
    if opts is not None and not (isinstance(opts, dict) and all(isinstance(k, str) for k in opts)):
        raise ConfigError(
            f"'set' in {path} must be a mapping of method options (e.g. set: {{lr: 0.001, epochs: 3}}), got {brief(opts)}"
        )
    return values


def build_config(args: argparse.Namespace) -> RunConfig:
    """The run's configuration from a config file and flags (flags win), every value checked (before any job)."""
    from bench.results import DEFAULT_TASK

    values: dict[str, Any] = _load_config_file(args.config) if args.config else {}
    for name in COPIED_OPTIONS:
        v = getattr(args, name, None)
        if v is not None:
            values[name] = v
    if args.methods:
        values["methods"] = args.methods
    if isinstance(values.get("methods"), str):
        values["methods"] = [values["methods"]]
    if args.shots is not None:
        values["shots"] = args.shots
    no_shots = tasks().get(str(values.get("task") or DEFAULT_TASK))
    if no_shots is not None and no_shots.no_shots and "shots" in values:
        raise ConfigError(f"--shots does not apply to --task {no_shots.name}: {no_shots.no_shots}. Drop --shots (seeds "
                          "still apply).")
    if args.seeds is not None:
        values["seeds"] = args.seeds
    for k in ("shots", "seeds"):
        if k in values:
            values[k] = parse_int_list(values[k], f"--{k}", MAX_LIST_VALUES)
            counts = Counter(values[k])
            if repeated := [v for v, n in counts.items() if n > 1]:  # RunConfig keeps each value once
                print(f"note: --{k} gives {brief_list(repeated)} more than once; each runs once.")
    if args.zero_init_last is not None:
        values["zero_init_last"] = args.zero_init_last == "true"
    if args.set_:
        values["method_options"] = {**(values.get("method_options") or {}), **parse_set(args.set_)}
    if "methods" not in values:
        raise ConfigError("no method given: pass --method NAME (see `python -m bench list methods`)")
    if isinstance(values.get("categories"), str):
        values["categories"] = [values["categories"]]
    values["plugins"] = [*values.get("plugins", []), *getattr(args, "plugin", [])]  # the workers import them too
    from bench.method import coerce_options  # torch, the methods: only once the flags are read
    from bench.run import RunConfig

    try:  # YAML reads e.g. ``coreset_ratio: 1e-2`` as a string: convert to the declared types
        values = coerce_options(RunConfig, values)
    except ValueError as exc:
        raise ConfigError(f"invalid run option: {exc}") from None
    return RunConfig(**values)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def main(args: argparse.Namespace) -> int:
    cfg = build_config(args)
    from bench.report.summary import run_summary  # after the options are checked: a bad one answers at once
    from bench.run import execute

    out = Path(cfg.out)
    # SIGTERM (`kill PID`, a batch system's time limit) stops the run the way Ctrl-C does, instead of killing it
    # on the spot: the worker pool is shut down (no leaked-semaphore warnings), the resume hint is printed.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        report = execute(cfg, progress=not args.no_progress)
    except KeyboardInterrupt as exc:
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        saved = f"every finished job is saved in {out / 'results.jsonl'}"
        if (out / "results.jsonl").is_file() and save_summary(out, run_summary(out)):
            saved += f" (their table: {out / 'summary.md'})"
        print(f"\n{what}: {saved}; run the same command again to resume.", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    table = run_summary(out)
    save_summary(out, table)
    print()
    print(table)
    print(
        f"\n{report.ok} job(s) ran, {report.skipped} already finished, {len(report.failed)} failed "
        f"(of {report.planned} planned). Results: {out / 'results.jsonl'}; table: {out / 'summary.md'}"
    )
    if report.failed:
        print("\n" + failure_summary(report.failed), file=sys.stderr)
        return 1
    return 0


def save_summary(out: Path, table: str) -> bool:
    """Write ``out/summary.md`` (:func:`bench.report.summary.write_summary`); a warning and ``False`` when it cannot
    be written (the results are intact)."""
    from bench.report.summary import write_summary

    try:
        write_summary(out, table)
        return True
    except OSError as exc:
        print(f"warning: could not write {out / 'summary.md'} ({exc.strerror}); the results are intact.",
              file=sys.stderr)
        return False


def failure_summary(failed: list[tuple[Job, str]], max_errors: int = 10) -> str:
    """The failed jobs grouped by error: one line each, with the methods, categories, shots and seeds it hit.

    A grid where one method cannot run on a dataset (e.g. a memory-bank method on categories without normal
    images) fails all its jobs with the same reason: said once, with the number of jobs, not once per job; a
    reason every method shares (too few images for the shots) is one error, not one per method.
    """
    from bench.run import failure_groups, failure_lines

    groups = failure_groups(failed)
    head = f"failed jobs: {len(failed)}, {len(groups)} distinct error(s) (rows with status 'error' in results.jsonl):"
    return "\n".join([head, *failure_lines(groups, max_errors)])
