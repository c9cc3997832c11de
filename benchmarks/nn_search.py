"""Nearest-neighbour search of residuals (paper Eq. 2) against a PatchCore memory bank. Prints figures, asserts nothing.

The harness searches with faiss's exact ``IndexFlatL2`` (:class:`bench.features.knn.MemoryBank`, 16 images of 784
patches per call, ``bench.features.store``). This benchmark times it against, on the same bank, the same queries, in
the same process and under the same load (the searches alternate, each timed ``--repeats`` times, median):

1. ``torch-blocked``: the exact search written out with the BLAS shape ‖q‖² − 2 q·b + ‖b‖², float32, query blocks ×
   bank blocks (one GEMM each, ``torch.addmm``), running min/argmin: what ``IndexFlatL2`` does inside for ≥ 20
   queries (faiss's ``exhaustive_L2sqr_blas``), so the ratio says whether the library is at that floor;
2. ``hnsw``: faiss's approximate ``IndexHNSWFlat`` (M, efSearch from ``--hnsw``), its build time and its recall@1
   against the exact search (the share of patches whose nearest bank row it finds);

and checks that ``torch-blocked`` gives the exact search's indices (a different index counts as a tie when both
rows are equally near to 1e-5 relative).

Data: the real MTD category (``--data-root``, default ``../shared/data/mtd/Magnetic-Tile-Defect``; its cached
Lite0 features under the cache root, computed on first use), bank = a random ``--bank-share`` of its train patches
(the size PatchCore's 10 % coreset keeps, ≈ 60 k × 152: the search cost depends on the sizes, and the coreset of 762
images takes ~10 min), queries = the patches of ``--images`` test images; or ``--synthetic`` (Gaussian, same sizes).

Usage: ``python benchmarks/nn_search.py [--data-root DIR | --synthetic] [--images 16] [--bank-share 0.1]
[--threads 1] [--repeats 3] [--hnsw 16,32]`` (also ``python -m bench perf nn``). The 1-minute load average is printed
next to the figures: compare the ratios, not the seconds, on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bench  # noqa: E402,F401  (torchvision shim, offline hub)
import torch  # noqa: E402

from bench.features.knn import MemoryBank  # noqa: E402

MTD_DEFAULT = ROOT.parent / "shared" / "data" / "mtd" / "Magnetic-Tile-Defect"


def torch_blocked_nearest(bank: np.ndarray, queries: np.ndarray, query_block: int = 512,
                          bank_block: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """Exact k = 1 search as ‖q‖² − 2 q·b + ‖b‖² in float32 blocks (one ``addmm`` per block pair, running argmin).

    Returns:
        dist (N,) float32 Euclidean distances, idx (N,) int64 bank rows.
    """
    b = torch.from_numpy(np.ascontiguousarray(bank, np.float32))
    bt, bsq = b.T.contiguous(), (b * b).sum(1)
    q_all = torch.from_numpy(np.ascontiguousarray(queries, np.float32))
    dist, idx = torch.empty(len(q_all)), torch.empty(len(q_all), dtype=torch.int64)
    for s in range(0, len(q_all), query_block):
        q = q_all[s : s + query_block]
        best_v = torch.full((len(q),), float("inf"))
        best_i = torch.zeros(len(q), dtype=torch.int64)
        for m in range(0, len(b), bank_block):
            v, i = torch.addmm(bsq[m : m + bank_block], q, bt[:, m : m + bank_block], beta=1, alpha=-2).min(1)
            better = v < best_v
            best_v = torch.where(better, v, best_v)
            best_i = torch.where(better, i + m, best_i)
        dist[s : s + len(q)] = (best_v + (q * q).sum(1)).clamp_(min=0).sqrt_()
        idx[s : s + len(q)] = best_i
    return dist.numpy(), idx.numpy()


def real_data(root: Path, images: int, share: float) -> tuple[np.ndarray, np.ndarray, str]:
    """(bank, queries, description) from the cached default features of the MTD category at ``root``."""
    from bench.datasets import load_dataset
    from bench.features.store import FeatureStore
    from bench.run.config import feature_config

    samples = load_dataset("mtd", root)
    category = samples.categories()[0]
    store = FeatureStore(feature_config("mtd"))
    train = store.patch_features(samples.train_paths(category)).permute(0, 2, 3, 1).reshape(-1, store.dim).numpy()
    t = samples.table
    test = t[(t.category == category) & (t.split == "test") & (t.label != "good")].sort_values("name")
    paths = test["image_path"].tolist()[:images]
    queries = store.patch_features(paths).permute(0, 2, 3, 1).reshape(-1, store.dim).contiguous().numpy()
    keep = np.random.default_rng(0).choice(len(train), int(len(train) * share), replace=False)
    what = (f"MTD {category}, {store.config.backbone} features {store.key}: bank {len(keep):,} × {store.dim} drawn from "
            f"{len(train):,} train patches, queries {len(queries):,} patches of {len(paths)} defective test images")
    return np.ascontiguousarray(train[np.sort(keep)]), queries, what


def synthetic_data(images: int, share: float, dim: int = 152, train_images: int = 762) -> tuple[np.ndarray, np.ndarray, str]:
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((int(train_images * 784 * share), dim), dtype=np.float32)
    queries = rng.standard_normal((images * 784, dim), dtype=np.float32)
    return bank, queries, f"synthetic Gaussian: bank {len(bank):,} × {dim}, queries {len(queries):,}"


def timed(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=MTD_DEFAULT, help="the MTD folder (Magnetic-Tile-Defect)")
    p.add_argument("--synthetic", action="store_true", help="Gaussian data of the same sizes instead of MTD")
    p.add_argument("--images", type=int, default=16, help="query images (784 patches each; 16 = one harness call)")
    p.add_argument("--bank-share", type=float, default=0.1, help="bank size as a share of the train patches")
    p.add_argument("--threads", type=int, default=1, help="torch / faiss (OpenMP) threads")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--hnsw", default="16,32", help="HNSW M values to try (empty: none)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    if args.synthetic or not args.data_root.is_dir():
        bank, queries, what = synthetic_data(args.images, args.bank_share)
    else:
        bank, queries, what = real_data(args.data_root, args.images, args.bank_share)
    print(f"{what}; {args.threads} thread(s), faiss {faiss.__version__}, torch {torch.__version__}")
    mb = MemoryBank(bank)
    mb.index  # built outside the timing, as the store keeps it per bank
    d_exact, i_exact = mb.nearest(queries)
    d_blk, i_blk = torch_blocked_nearest(bank, queries)
    differ = i_blk != i_exact
    ties = np.isclose(d_blk[differ], d_exact[differ], rtol=1e-5, atol=1e-6)
    print(f"torch-blocked vs faiss IndexFlatL2: same index for {1 - differ.mean():.6f} of patches; "
          f"{int(differ.sum())} differ, of which {int(ties.sum())} are ties (equal distance)")
    t_faiss, t_blk = [], []
    for _ in range(args.repeats):  # alternate, so both see the same load
        t_faiss.append(timed(lambda: mb.nearest(queries), 1))
        t_blk.append(timed(lambda: torch_blocked_nearest(bank, queries), 1))
    f, b = statistics.median(t_faiss), statistics.median(t_blk)
    n_img = len(queries) / 784
    print(f"load {os.getloadavg()[0]:.1f}: faiss IndexFlatL2 (the harness) {f:.3f} s ({f / n_img:.3f} s/image); "
          f"torch-blocked {b:.3f} s ({b / n_img:.3f} s/image): faiss is {b / f:.2f}× the speed of the hand-written "
          "BLAS-shaped search")
    for m in [int(x) for x in args.hnsw.split(",") if x.strip()]:
        t0 = time.perf_counter()
        h = faiss.IndexHNSWFlat(bank.shape[1], m)
        h.hnsw.efConstruction = 64
        h.add(bank)
        build = time.perf_counter() - t0
        for ef in (32, 64, 128):
            h.hnsw.efSearch = ef
            t_h = timed(lambda: h.search(queries, 1), args.repeats)
            _, i_h = h.search(queries, 1)
            print(f"load {os.getloadavg()[0]:.1f}: faiss HNSW M={m} efSearch={ef}: build {build:.1f} s, search "
                  f"{t_h:.3f} s ({f / t_h:.1f}× faster than exact), recall@1 {(i_h[:, 0] == i_exact).mean():.4f}")


if __name__ == "__main__":
    main()
