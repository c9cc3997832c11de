"""Speed of the detection task: time per detector and k, and proof that nothing is computed twice across k and seeds.

Runs ``python -m bench run --task detection`` as a user would (a subprocess with its own results folder and, unless
``--cache-dir`` is given, a fresh cache) and prints, from the rows' ``timing`` and cache counters:

* the wall time of the run and the 1-minute load average (the machine may be shared);
* a table detector × k: seconds per job (mean over the seeds and categories) and the sum, with the stages that
  dominate (fine-tuning, nearest-neighbour maps, embedding of the views);
* the caches: feature-store misses (patch features computed) against the number of distinct images the
  PatchCore jobs read, and embedder misses (pooled embeddings or frozen-prefix outputs computed) against the
  distinct pictures (shot views, pseudo anomalies, test images) the other detectors read. A miss count equal to the
  distinct count means every image went through the network once, however many k and seeds used it.

Usage::

    python benchmarks/detection.py                                       # built-in synthetic, fabric, k 1,2,4,8, seeds 1-5
    python benchmarks/detection.py --dataset mtd --data-root ../shared/data/mtd/Magnetic-Tile-Defect --category magnetic_tile
    python benchmarks/detection.py --methods patchcore-kshot gaussian --seeds 1-2 --set coft-ad.steps=50
    python -m bench perf detection --help

Prints figures and writes them to ``<work>/detection-benchmark.json``; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench  # noqa: E402,F401  (torchvision shim, offline hub)


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["patchcore-kshot", "gaussian", "coft-ad"])
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--data-root")
    p.add_argument("--category", default="fabric")
    p.add_argument("--shots", default="1,2,4,8")
    p.add_argument("--seeds", default="1-5")
    p.add_argument("--set", dest="set_", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir", help="reuse this cache (default: a fresh one, so every image is computed once here)")
    p.add_argument("--work", help="folder for results and the cache (default: a temporary folder)")
    args = p.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="detection-bench-"))
    out, cache = work / "results", Path(args.cache_dir) if args.cache_dir else work / "cache"
    cmd = [sys.executable, "-m", "bench", "run", "--task", "detection", "--method", *args.methods, "--dataset", args.dataset,
           "--categories", args.category, "--shots", args.shots, "--seeds", args.seeds, "--backbone", args.backbone,
           "--weights", args.weights, "--threads", str(args.threads), "--out", str(out), "--cache-dir", str(cache),
           "--no-progress", *(["--data-root", args.data_root] if args.data_root else []),
           *[x for kv in args.set_ for x in ("--set", kv)]]  # fmt: skip
    print("$ " + " ".join(cmd), flush=True)
    print(f"start: {load()}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    print(f"end: {load()}; wall {wall:.1f} s; exit status {proc.returncode}")
    if proc.returncode:
        print(proc.stderr[-3000:])
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    ok = [r for r in rows if r.get("status") == "ok"]

    per: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in ok:
        per[(r["method"], r["shots"])].append(r)
    shots = sorted({k for _, k in per})
    print(f"\n{len(ok)} of {len(rows)} jobs ok. Seconds per job (mean over {args.seeds} seeds), by detector and k; "
          "the stage that costs most in brackets:")  # fmt: skip
    head = f"{'detector':<18}" + "".join(f"{'k=' + str(k):>22}" for k in shots) + f"{'total s':>10}"
    print(head)
    summary: dict[str, Any] = {"wall_s": round(wall, 1), "jobs": len(rows), "ok": len(ok), "per": {}}
    for m in args.methods:
        cells, total = [], 0.0
        for k in shots:
            rs = per.get((m, k), [])
            if not rs:
                cells.append(f"{'–':>22}")
                continue
            t = sum(r["timing"]["total"] for r in rs)
            total += t
            stages = defaultdict(float)
            for r in rs:
                for s, v in r["timing"].items():
                    if s not in ("total", "fit", "score"):
                        stages[s] += v
            top = max(stages, key=stages.get) if stages else ""
            cells.append(f"{t / len(rs):>9.1f} ({top} {stages.get(top, 0) / len(rs):.1f})".rjust(22))
            summary["per"][f"{m} k={k}"] = {"mean_s": round(t / len(rs), 2), "n": len(rs), "stages": {s: round(v / len(rs), 2) for s, v in stages.items()}}
        print(f"{m:<18}" + "".join(cells) + f"{total:>10.1f}")

    print("\nNothing computed twice:")
    pc = [r for r in ok if r["method"] == "patchcore-kshot"]
    if pc:
        distinct = {p for r in pc for p in r["support"]} | {"test"}  # shots (relative paths) plus the test set, below
        n_test = pc[0]["n_test"]
        misses = sum(r["cache"]["features"]["misses"] for r in pc)
        hits = sum(r["cache"]["features"]["hits"] for r in pc)
        print(f"  patch features (feature store): {misses} computed, {hits} read from the cache, for "
              f"{len(distinct) - 1} distinct shots + {n_test} test images = {len(distinct) - 1 + n_test} distinct images")  # fmt: skip
        summary["features"] = {"misses": misses, "hits": hits, "distinct": len(distinct) - 1 + n_test}
    for m in [m for m in args.methods if m != "patchcore-kshot"]:
        rs = [r for r in ok if r["method"] == m]
        if not rs:
            continue
        misses = sum((r.get("method_info") or {}).get("embed_cache", {}).get("misses", 0) for r in rs)
        hits = sum((r.get("method_info") or {}).get("embed_cache", {}).get("hits", 0) for r in rs)
        shots_used = {p for r in rs for p in r["support"]}
        cfg = rs[0]["method_config"]
        views, pool = cfg.get("views", 1), cfg.get("negative_pool", 0) if rs[0].get("synthetic_negatives") else 0
        distinct = len(shots_used) * (views + pool) + rs[0]["n_test"]
        print(f"  {m}: {misses} pictures embedded, {hits} cache reads, for {len(shots_used)} distinct shots × ({views} views"
              + (f" + {pool} pseudo anomalies" if pool else "") + f") + {rs[0]['n_test']} test images = {distinct} distinct pictures")  # fmt: skip
        summary[m] = {"misses": misses, "hits": hits, "distinct": distinct}
    (work / "detection-benchmark.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\nwrote {work / 'detection-benchmark.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
