"""Speed benchmarks: prints figures, asserts nothing. Runs the scripts in ``benchmarks/`` of the checkout.

* ``python -m bench perf features [ARGS]``: feature extraction vs a bare timm forward, coreset vs a naive
  implementation, second-run cache cost, fp16 storage, peak memory (``benchmarks/features.py``).
* ``python -m bench perf grid [ARGS]``: the paper's ablation grid on an MVTec-AD-sized synthetic category, serial
  and with 2 workers: wall time, stage times, jobs per minute, peak memory, cache hits (``benchmarks/grid.py``).
* ``python -m bench perf steps [ARGS]``: one optimiser step of the paper's heads at the paper's sizes, with the
  harness's heap allocation and with glibc's defaults (``benchmarks/steps.py``).
* ``python -m bench perf detection [ARGS]``: time per detector and k of a detection grid, and the cache counters
  that show every image's features computed once across k and seeds (``benchmarks/detection.py``).
* ``python -m bench perf anomalyncd [ARGS]``: one AnomalyNCD training step with the paper's DINO ViT-B/8 architecture
  and with the CPU default ViT, and the per-category cost of their schedules (``benchmarks/anomalyncd_cost.py``).
* ``python -m bench perf startup [ARGS]``: the start-up time of ``--help``, an option error, ``list`` and ``cache info``
  as a ratio to ``python -c pass``, with the heavy libraries each imports (``benchmarks/startup.py``).
* ``python -m bench perf nn [ARGS]``: the residuals' exact nearest-neighbour search (faiss) against the same search
  written as blocked GEMMs, and faiss's approximate HNSW with its recall, on MTD's features (``benchmarks/nn_search.py``).
* ``python -m bench perf relation [ARGS]``: time and peak memory of one RelationNet pretraining update (810 pairs),
  the harness's chunked pairs against autograd keeping every activation (``benchmarks/relation_episode.py``).

Everything after the benchmark's name goes to the script: ``python -m bench perf grid --help`` lists its options
(``features`` and ``grid`` take ``--backbone``, ``--weights`` and ``--layers NAME ...`` like ``bench run``; e.g.
``python -m bench perf features --backbone tf_efficientnet_lite0 --weights imagenet``).
The benchmarks live next to the package in a source checkout (they are not installed with a wheel).
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

from bench.errors import BenchError

BENCHMARKS = {"features": "features.py", "grid": "grid.py", "steps": "steps.py", "detection": "detection.py",
              "anomalyncd": "anomalyncd_cost.py", "startup": "startup.py", "nn": "nn_search.py",
              "relation": "relation_episode.py"}  # fmt: skip


def benchmarks_dir() -> Path | None:
    """``<checkout>/benchmarks`` when running from a source checkout (or an editable install), else ``None``."""
    from bench.paths import CHECKOUT

    d = CHECKOUT / "benchmarks"
    return d if d.is_dir() else None


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("benchmark", choices=sorted(BENCHMARKS), help="which benchmark")
    p.add_argument("args", nargs=argparse.REMAINDER, help="options for the benchmark script (see its --help)")


def main(args: argparse.Namespace) -> int:
    d = benchmarks_dir()
    if d is None:
        raise BenchError(
            "the speed benchmarks run from a source checkout (benchmarks/ next to bench/), and this installation "
            "has none: clone the repository and run `python -m bench perf ...` there."
        )
    script = d / BENCHMARKS[args.benchmark]
    argv = list(args.args)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    old = sys.argv
    sys.argv = [str(script), *argv]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:  # the script's own exit status (argparse --help exits 0)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old
    return 0
