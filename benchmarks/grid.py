"""End-to-end speed of a grid: the paper's ablation grid on an MVTec-AD-sized category, serial and in parallel.

Runs ``python -m bench run`` as a user would (a subprocess per mode, each with a fresh cache and results
folder, the same generated data) on ``synthetic-mvtec`` (the 15 MVTec AD category names with MVTec AD's
exact per-folder image counts, drawn images) and prints, per mode:

* total wall time, jobs per minute and the speed-up over the first mode;
* time per stage (features, bank, pretrain, fit/finetune, predict: sums over jobs from the rows' ``timing``;
  the stages nest: features, bank and pretrain are timed inside fit and predict), and the time outside jobs
  (start-up, preflight, planning);
* peak memory: the largest sum of the resident memory of the run's whole process tree (main process and
  workers), sampled every 0.2 s, and the largest single process;
* cache hit rates per stage (features, bank, nn) from the rows' ``cache`` counts;
* the targets: whole grid for one category (all variants × 5 shots × 5 seeds) under 30 min serial with
  resnet50 and random weights, peak memory under 8 GiB, ``--jobs 2`` at least the serial throughput.
  A reduced grid is extrapolated linearly in the number of jobs (rough: pretraining is shared per seed).

Usage::

    python benchmarks/grid.py                                   # the paper grid, screw, 5 shots × 5 seeds, jobs 1 and 2
    python benchmarks/grid.py --methods contrastive direct --shots 1-5 --seeds 1-2   # a quicker version
    python benchmarks/grid.py --backbone resnet18 --category tile --jobs 1,2 --keep --work /tmp/grid
    python benchmarks/grid.py --dataset synthetic-tiny --category tile --backbone resnet18 --jobs 1 --set max_episodes=10
    python benchmarks/grid.py --from runs/paper-grid-mtd           # the figures of a run you made (no run)

Prints figures and writes them to ``<work>/grid-benchmark.json``; asserts nothing. The machine may be shared:
the 1-minute load average is printed with every run. The grid is the library's :class:`bench.run.RunConfig` (it
checks the options, as ``bench run`` does); the command line of each mode is written from it. Like any code outside
``bench/cli/``, this script never imports the CLI (docs/architecture.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench  # noqa: E402,F401  (torchvision shim, offline hub)
from bench.run import RunConfig  # noqa: E402

PAPER_METHODS = [
    "relationnet-residual-pretrain", "contrastive", "contrastive-residual", "contrastive-raw-pretrain",
    "contrastive-maml", "direct",
]  # fmt: skip
DATASET_PRESETS = {"synthetic-mvtec": "mvtec", "synthetic": "default", "synthetic-tiny": "tiny"}
TARGET_SERIAL_S = 30 * 60
TARGET_MEMORY = 8 * 1024**3
FULL_GRID_SHOTS, FULL_GRID_SEEDS = 5, 5


def gib(n: float) -> str:
    return f"{n / 1024**3:.2f} GiB"


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def available_methods(wanted: list[str]) -> tuple[list[str], list[str]]:
    from bench.method import METHODS
    from bench.methods import import_all

    import_all()
    return [m for m in wanted if m in METHODS], [m for m in wanted if m not in METHODS]


class TreeMemory:
    """Samples the resident memory of a process and all its descendants (psutil; ru_maxrss without it)."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.pid, self.every = pid, every
        self.peak_total = 0
        self.peak_single = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            import psutil
        except ImportError:
            return
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            rss = []
            for p in procs:
                try:
                    rss.append(p.memory_info().rss)
                except psutil.Error:
                    pass
            if rss:
                self.peak_total = max(self.peak_total, sum(rss))
                self.peak_single = max(self.peak_single, max(rss))
                self.peak_processes = max(self.peak_processes, len(rss))
            self._stop.wait(self.every)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def int_list(text: str) -> list[int]:
    """``"1-5"`` → [1..5], ``"1,3"`` → [1, 3]: the benchmark's own reading of ``--shots``/``--seeds`` (the run's
    configuration checks the values)."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def run_mode(args: argparse.Namespace, cfg: RunConfig, work: Path, jobs: int) -> dict[str, Any]:
    """One ``bench run`` of the grid ``cfg`` with ``--jobs jobs``, from a cold cache; its figures."""
    import resource

    out, cache = work / f"out-jobs{jobs}", work / f"cache-jobs{jobs}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    cmd = [sys.executable, "-m", "bench", "run", "--dataset", cfg.dataset, "--data-root", str(cfg.data_root),
           "--categories", *(cfg.categories or []), "--method", *cfg.methods,
           "--shots", *map(str, cfg.shots), "--seeds", *map(str, cfg.seeds),
           "--backbone", cfg.backbone, "--weights", cfg.weights, "--jobs", str(jobs), "--out", str(out),
           "--cache-dir", str(cache), "--no-progress"]  # fmt: skip
    if cfg.threads:
        cmd += ["--threads", str(cfg.threads)]
    if cfg.layers:
        cmd += ["--layers", *cfg.layers]
    for s in args.set:
        cmd += ["--set", s]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BENCH_CACHE": str(cache)}
    print(f"\n[jobs={jobs}] {' '.join(cmd[1:])}\n[jobs={jobs}] start ({load()})", flush=True)
    log = (work / f"log-jobs{jobs}.txt").open("w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parent.parent)
    with TreeMemory(proc.pid) as mem:
        code = proc.wait()
    wall = time.perf_counter() - t0
    log.close()
    ru_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # largest child so far (Linux: KiB)
    print(f"[jobs={jobs}] exit {code} after {wall:.1f} s ({load()})", flush=True)
    if code != 0:
        print((work / f"log-jobs{jobs}.txt").read_text()[-3000:])

    from bench.results import read_rows

    rows = read_rows([out / "results.jsonl"]).rows if (out / "results.jsonl").exists() else []
    figures = summarize(rows, jobs)
    return {
        "jobs": jobs,
        "exit_code": code,
        "wall_s": round(wall, 2),
        **figures,
        "jobs_per_min": round(60 * len(rows) / wall, 3) if wall else None,
        "outside_jobs_s": round(wall - figures["job_time_s"] / figures["workers"], 2),
        "peak_tree_rss": mem.peak_total or ru_peak,
        "peak_process_rss": mem.peak_single or ru_peak,
        "max_processes": mem.peak_processes,
        "load_after": os.getloadavg()[0],
        "out": str(out),
    }


def summarize(rows: list[dict[str, Any]], jobs: int) -> dict[str, Any]:
    """Figures of a run's rows: counts, time per stage, method and seed (summed over jobs), cache hit rates,
    pretrained models trained and reused, where pretraining stopped, torch threads and code commits."""
    ok = [r for r in rows if r.get("status") == "ok"]
    stages: dict[str, float] = defaultdict(float)
    per_method: dict[str, float] = defaultdict(float)
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    pretrained = [0, 0]  # jobs that loaded a cached pretrained model, jobs that pretrained
    for r in rows:
        cached = (r.get("method_info") or {}).get("pretrained_from_cache")
        if cached is not None:
            pretrained[0 if cached else 1] += 1
        for k, v in (r.get("timing") or {}).items():
            if k != "total":
                stages[k] += v
        per_method[r["method"]] += (r.get("timing") or {}).get("total", 0.0)
        for stage, d in (r.get("cache") or {}).items():
            hits[stage][0] += int(d.get("hits", 0))
            hits[stage][1] += int(d.get("misses", 0))
    job_total = sum((r.get("timing") or {}).get("total", 0.0) for r in rows)
    groups = {(r["category"], r["seed"], r["method"]) for r in rows}  # classification's unit of work per worker
    per_seed: dict[int, float] = defaultdict(float)
    stops: dict[str, list[int]] = defaultdict(list)
    first_shots = min((x["shots"] for x in rows), default=None)  # one row per (method, seed) for its pretraining
    for r in rows:
        per_seed[r["seed"]] += (r.get("timing") or {}).get("total", 0.0)
        info = r.get("method_info") or {}
        if info.get("pretrain_stop_episode") is not None and r.get("shots") == first_shots:
            stops[r["method"]].append(int(info["pretrain_stop_episode"]))
    return {
        "n_rows": len(rows),
        "n_ok": len(ok),
        "n_failed": len(rows) - len(ok),
        "stage_s": {k: round(v, 2) for k, v in sorted(stages.items())},
        "method_s": {k: round(v, 2) for k, v in sorted(per_method.items())},
        "seed_s": {k: round(v, 2) for k, v in sorted(per_seed.items())},
        "job_time_s": round(job_total, 2),
        "groups": len(groups),
        "workers": max(1, min(jobs, len(groups))),
        "torch_threads_per_worker": sorted({(r.get("env") or {}).get("torch_threads") for r in rows} - {None}),
        "cache_hit_rate": {k: (round(h / (h + m), 3) if h + m else None, h, m) for k, (h, m) in sorted(hits.items())},
        "pretrained": {"from_cache": pretrained[0], "trained": pretrained[1]},
        "pretrain_stop_episodes": {k: sorted(v) for k, v in sorted(stops.items())},
        "commits": sorted({str((r.get("env") or {}).get("git_commit"))[:7] for r in rows}),
    }


def print_figures(r: dict[str, Any]) -> None:
    """The per-run lines of :func:`report` (also for ``--from``)."""
    print(f"  time in jobs {r['job_time_s']:.1f} s (summed over workers)")
    print("  per stage (s, summed over jobs): " + ", ".join(f"{k} {v:.1f}" for k, v in r["stage_s"].items()))
    print("  per method (s): " + ", ".join(f"{k} {v:.1f}" for k, v in r["method_s"].items()))
    print("  per seed (s): " + ", ".join(f"{k} {v:.1f}" for k, v in r["seed_s"].items()))
    print("  cache hit rate: " + ", ".join(
        f"{k} {'-' if rate is None else f'{100 * rate:.0f}%'} ({h} hits / {m} misses)" for k, (rate, h, m) in r["cache_hit_rate"].items()
    ))  # fmt: skip
    pre = r["pretrained"]
    if pre["from_cache"] + pre["trained"]:
        print(f"  pretrained models: {pre['trained']} trained in jobs, {pre['from_cache']} jobs loaded one from the cache "
              "(a parallel run's preparation stage trains them before the jobs)")
        print("  pretraining stopped at episode: " + "; ".join(f"{k} {v}" for k, v in r["pretrain_stop_episodes"].items()))
    print(f"  torch threads per process {r['torch_threads_per_worker']}; code {', '.join(r['commits'])}")


def from_results(folder: Path) -> int:
    """``--from FOLDER``: the figures of a finished (or partial) run, from its rows; no run."""
    from bench.results import read_rows

    path = folder / "results.jsonl"
    if not path.is_file():
        print(f"error: no results file at {path}: pass the --out folder of a bench run", file=sys.stderr)
        return 2
    rows = read_rows([path]).rows
    if not rows:
        print(f"error: {path} holds no rows yet: pass the --out folder of a run that finished at least one job",
              file=sys.stderr)
        return 2
    figures = summarize(rows, jobs=1)
    print(f"{path}: {figures['n_ok']}/{figures['n_rows']} jobs ok; methods {sorted({r['method'] for r in rows})}; "
          f"categories {sorted({r['category'] for r in rows})}; shots {sorted({r['shots'] for r in rows})}; "
          f"seeds {sorted({r['seed'] for r in rows})}")  # fmt: skip
    print_figures(figures)
    return 0


def report(results: list[dict[str, Any]], args: argparse.Namespace, methods: list[str], n_full: int) -> None:
    base = results[0]
    print("\n" + "=" * 100)
    print(f"grid: {len(methods)} method(s) {methods}\n      category {args.category}, shots {args.shots}, seeds {args.seeds}, "
          f"{args.backbone} ({args.weights} weights), dataset {args.dataset}")  # fmt: skip
    for r in results:
        print(f"\n--jobs {r['jobs']}: {r['n_ok']}/{r['n_rows']} jobs ok, wall {r['wall_s']:.1f} s, "
              f"{r['jobs_per_min']:.2f} jobs/min (x{r['jobs_per_min'] / base['jobs_per_min']:.2f} vs --jobs {base['jobs']}), "
              f"{r['workers']} worker(s) for {r['groups']} (category, seed, method) group(s), torch threads per worker "
              f"{r['torch_threads_per_worker']}")  # fmt: skip
        print(f"  peak memory: {gib(r['peak_tree_rss'])} whole process tree ({r['max_processes']} processes), "
              f"{gib(r['peak_process_rss'])} largest process")  # fmt: skip
        print(f"  outside jobs ~{r['outside_jobs_s']:.1f} s")
        print_figures(r)
    print("\ntargets:")
    serial = next((r for r in results if r["jobs"] == 1), None)
    if serial and serial["n_rows"]:
        est = serial["wall_s"] * n_full / serial["n_rows"]
        scope = "measured" if serial["n_rows"] >= n_full else f"extrapolated from {serial['n_rows']} to {n_full} jobs"
        which = "the paper grid" if set(methods) >= set(PAPER_METHODS) else (
            f"ONLY {len(methods)} of the paper grid's {len(PAPER_METHODS)} methods: the target does not apply")
        if args.set:
            which += f", options {' '.join(args.set)}"
        if args.dataset != "synthetic-mvtec":
            which += f"; {args.dataset} is not MVTec-AD-sized: the target is stated for synthetic-mvtec"
        print(f"  whole grid for one category ({which}; 5 shots x 5 seeds), serial: {est / 60:.1f} min ({scope}); "
              f"target < 30 min: {'OK' if est < TARGET_SERIAL_S else 'MISSED'}")  # fmt: skip
    peak = max(r["peak_tree_rss"] for r in results)
    print(f"  peak memory {gib(peak)}; target < 8 GiB: {'OK' if peak < TARGET_MEMORY else 'MISSED'}")
    two = next((r for r in results if r["jobs"] == 2), None)
    if serial and two:
        ratio = two["jobs_per_min"] / serial["jobs_per_min"]
        print(f"  --jobs 2 throughput {ratio:.2f}x serial; target >= 1: {'OK' if ratio >= 1 else 'MISSED'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=PAPER_METHODS, help="default: the paper's methods that are registered")
    p.add_argument("--dataset", default="synthetic-mvtec", choices=sorted(DATASET_PRESETS),
                   help="built-in dataset (default synthetic-mvtec: MVTec AD's names and image counts)")
    p.add_argument("--category", default="screw", help="category of the dataset (default screw)")
    p.add_argument("--shots", default="1-5")
    p.add_argument("--seeds", default="1-5")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--weights", default="random")
    p.add_argument("--layers", nargs="+", metavar="NAME", help="backbone stages (default: those at strides 8 and 16)")
    p.add_argument("--jobs", default="1,2", help="modes to run, e.g. 1,2 (each from a cold cache)")
    p.add_argument("--threads", type=int, help="torch threads in total (default: all cores, split between workers)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="method option for every method")
    p.add_argument("--data-root", help="where synthetic-mvtec is (generated once; default: the bench cache)")
    p.add_argument("--work", help="folder for caches, results and logs (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the caches and results of the runs")
    p.add_argument("--from", dest="from_dir", metavar="FOLDER",
                   help="print the figures of an existing run's results (its --out folder) instead of running one")
    args = p.parse_args(argv)
    if args.from_dir:
        return from_results(Path(args.from_dir))

    from bench.datasets.synthetic import PRESETS, default_root, generate

    methods, missing = available_methods(args.methods)
    if missing:
        print(f"note: not registered (yet), left out: {', '.join(missing)}")
    if not methods:
        print("no method to run")
        return 2
    preset = PRESETS[DATASET_PRESETS[args.dataset]]
    if args.category not in preset.categories:
        print(f"unknown category {args.category!r} in {args.dataset}; choose one of {', '.join(preset.categories)}")
        return 2
    modes = [int(x) for x in args.jobs.split(",")]
    n_full = len(methods) * FULL_GRID_SHOTS * FULL_GRID_SEEDS
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-grid-"))
    work.mkdir(parents=True, exist_ok=True)

    data_root = Path(args.data_root) if args.data_root else default_root(preset.name)
    cfg = RunConfig(methods=methods, dataset=args.dataset, data_root=str(data_root), categories=[args.category],
                    shots=int_list(args.shots), seeds=int_list(args.seeds), backbone=args.backbone,
                    weights=args.weights, layers=args.layers, threads=args.threads)  # fmt: skip
    n_jobs = len(cfg.methods) * len(cfg.shots) * len(cfg.seeds)
    t0 = time.perf_counter()
    generate(data_root, preset.name, categories=[args.category])
    spec = preset.categories[args.category]
    print(f"dataset: {args.dataset}/{args.category} at {data_root} ({spec.n_train} train, {spec.n_test_good} test good, "
          f"{sum(spec.n_per_type.values())} defective in {len(spec.defects)} types, {preset.resolution} px), "
          f"ready in {time.perf_counter() - t0:.1f} s")  # fmt: skip
    print(f"grid: {n_jobs} jobs per mode ({len(methods)} methods x {args.shots} shots x {args.seeds} seeds); work folder {work}")

    results = [run_mode(args, cfg, work, j) for j in modes]
    report(results, args, methods, n_full)
    summary = {"methods": methods, "dataset": args.dataset, "category": args.category, "shots": args.shots, "seeds": args.seeds,
               "backbone": args.backbone, "weights": args.weights, "cpu_count": os.cpu_count(), "modes": results}  # fmt: skip
    (work / "grid-benchmark.json").write_text(json.dumps(summary, indent=1))
    print(f"\nfigures written to {work / 'grid-benchmark.json'}")
    if not args.keep:
        for r in results:
            shutil.rmtree(work / f"cache-jobs{r['jobs']}", ignore_errors=True)
        print("(caches removed; --keep keeps them)")
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
