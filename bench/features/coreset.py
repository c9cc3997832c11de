"""Approximate greedy coreset subsampling of the PatchCore memory bank.

Follows PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022) and its
reference code (``patchcore/sampler.py``, ``ApproximateGreedyCoresetSampler``), which the paper's code uses
at 10 % (docs/method-notes.md §4.3):

1. project the features to 128 d with a random bias-free linear map whose weights follow torch's default
   ``nn.Linear`` init, U(-1/sqrt(D), 1/sqrt(D));
2. draw 10 random start points (without replacement); a point's initial min-distance is its mean Euclidean
   distance to them (the start points themselves are not part of the coreset);
3. greedy farthest-point selection in the projected space until ⌊ratio·N⌋ points are chosen;
4. the caller keeps the original D-dim vectors of the chosen points (selection order is returned).

Deviations (none changes which points a given projection and start set select, up to float rounding):

* randomness comes from an explicit ``numpy.random.Generator`` (projection first, then start points), not the
  global torch/numpy state, so seed s always gives the same bank (:func:`coreset_rng`: the ``coreset``
  stream of the run seed, see :mod:`bench.seeding`);
* the farthest-point loop is exact but *lazy and blocked* (see :func:`greedy_farthest_points`): points are
  split into blocks of ``block_size`` stored transposed (128 × b); a block's min-distances are only brought
  up to date, with one small GEMM against all centres chosen since its last update, when its upper bound is
  the largest. This turns 16k memory-bound matrix–vector passes over the whole (128 × N) matrix into
  compute-bound GEMMs and is several times faster than the straightforward per-step ``norm(z - c)``;
* distances are compared squared (the argmax of min-distance is the same); the projected points are centred
  first, which leaves distances unchanged but reduces float32 cancellation in ``|z|² + |c|² − 2 z·c``;
* tiny banks are not subsampled: with N ≤ ``min_points`` every point is kept, and the coreset never has
  fewer than ``min_points`` points (``CORESET_MIN_POINTS`` = 1000, i.e. it only matters below ~13 images of
  784 patches at 10 %; never on MVTec AD / 3D-AD, whose smallest train split has 60 images).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from bench.seeding import numpy_rng

CORESET_VERSION = 1
"""Bump when the selection for a given (features, ratio, seed) changes; part of every bank key."""

CORESET_MIN_POINTS = 1000
"""Banks of at most this many points are kept whole; larger banks keep at least this many."""

DEFAULT_BLOCK_SIZE = 1024


def coreset_rng(seed: int) -> np.random.Generator:
    """The generator of the ``coreset`` stream of run ``seed`` (independent of every other stream)."""
    return numpy_rng(seed, "coreset")


def coreset_size(n: int, ratio: float, min_points: int = CORESET_MIN_POINTS) -> int:
    """Number of points kept from ``n``: ⌊ratio·n⌋, at least ``min(n, min_points)``, all when ratio ≥ 1."""
    if ratio <= 0:
        raise ValueError(f"coreset ratio must be > 0, got {ratio}")
    if ratio >= 1 or n <= min_points:
        return n
    return max(int(n * ratio), min_points)


def random_projection(rng: np.random.Generator, in_dim: int, out_dim: int = 128) -> np.ndarray:
    """A random projection matrix with torch's default ``nn.Linear`` weight distribution.

    Args:
        rng: the generator (consumed: ``in_dim·out_dim`` uniforms).
        in_dim: feature dimension D.
        out_dim: projected dimension.

    Returns:
        (D, out_dim) float32 matrix P with entries U(-1/sqrt(D), 1/sqrt(D)); projected points are ``x @ P``.
    """
    bound = 1.0 / math.sqrt(in_dim)
    return rng.uniform(-bound, bound, size=(in_dim, out_dim)).astype(np.float32)


def project(features: np.ndarray | Sequence[np.ndarray], matrix: np.ndarray, chunk_rows: int = 32768) -> np.ndarray:
    """Project features chunk by chunk (a memory map or a list of per-image arrays is never loaded whole).

    Args:
        features: (N, D) array, or a sequence of (n_i, D) array-likes (any float dtype; converted per chunk).
        matrix: (D, d) projection.
        chunk_rows: rows per matmul when ``features`` is one array.

    Returns:
        (N, d) float32.
    """
    if isinstance(features, np.ndarray):
        chunks: Sequence[np.ndarray] = [features[i : i + chunk_rows] for i in range(0, len(features), chunk_rows)]
    else:
        chunks = features
    n = sum(len(c) for c in chunks)
    out = np.empty((n, matrix.shape[1]), np.float32)
    pos = 0
    for c in chunks:
        c = np.asarray(c, dtype=np.float32)
        out[pos : pos + len(c)] = c @ matrix
        pos += len(c)
    return out


def _initial_min_sq_dist(z: torch.Tensor, sq: torch.Tensor, starts: np.ndarray) -> torch.Tensor:
    """(N,) squared mean Euclidean distance of every point to the start points (the reference's init)."""
    s = z[torch.as_tensor(starts)]
    d2 = torch.addmm(sq[:, None] + sq[torch.as_tensor(starts)][None, :], z, s.T, beta=1, alpha=-2)
    mean = d2.clamp_(min=0).sqrt_().mean(1)
    return mean * mean


def greedy_farthest_points(
    z: np.ndarray,
    n_select: int,
    start_indices: np.ndarray,
    block_size: int = DEFAULT_BLOCK_SIZE,
    threads: int | None = 1,
) -> np.ndarray:
    """Exact greedy farthest-point selection, lazy and blocked.

    Each point i keeps m_i, its squared distance to the nearest chosen centre (initially the squared mean
    distance to the start points). Each step chooses argmax_i m_i. Blocks of ``block_size`` points keep an
    upper bound max(m) over the block; because m only decreases, a block whose bound is the largest is first
    brought up to date (one GEMM against every centre chosen since its last update), and once the block with
    the largest bound is up to date its argmax is the global argmax. The result equals the straightforward
    algorithm (:func:`naive_greedy_farthest_points`) up to float rounding.

    Args:
        z: (N, d) float32 projected points.
        n_select: number of points to select (≤ N).
        start_indices: (n_starts,) indices of the start points.
        block_size: points per block (1024 is a good default for d = 128 on CPU).
        threads: torch intra-op threads during the loop (``None`` = leave as is). 1 by default: the loop is
            many small GEMMs that gain nothing from a second thread, and OpenMP spin-waiting made 2 threads
            10-20× slower on a busy 2-core machine (measured: 0.75 s vs 13.7 s for 31k points).

    Returns:
        (n_select,) int64 indices in selection order.
    """
    n, d = z.shape
    n_select = int(min(n_select, n))
    out = np.empty(n_select, np.int64)
    if n_select == 0:
        return out
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            zt = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))
            zt = zt - zt.mean(0, dtype=torch.float64).float()
            sq = (zt * zt).sum(1)
            m = _initial_min_sq_dist(zt, sq, np.asarray(start_indices))
            n_blocks = -(-n // block_size)
            blocks_t = [zt[i * block_size : (i + 1) * block_size].T.contiguous() for i in range(n_blocks)]
            sq_b = [sq[i * block_size : (i + 1) * block_size] for i in range(n_blocks)]
            m_b = [m[i * block_size : (i + 1) * block_size] for i in range(n_blocks)]  # views into m
            bounds = np.array([float(x.max()) for x in m_b], dtype=np.float64)
            synced = np.zeros(n_blocks, np.int64)  # centres [0, synced[j]) applied to block j
            centres = torch.empty((n_select, d), dtype=torch.float32)
            centre_sq = torch.empty((n_select, 1), dtype=torch.float32)
            k = 0
            while k < n_select:
                j = int(bounds.argmax())
                s = int(synced[j])
                if s < k:
                    g = torch.addmm(centre_sq[s:k], centres[s:k], blocks_t[j], beta=1, alpha=-2)  # (k-s, b)
                    upd = g.amin(0) if k - s > 1 else g[0]
                    upd += sq_b[j]
                    torch.minimum(m_b[j], upd, out=m_b[j])
                    synced[j] = k
                    bounds[j] = float(m_b[j].max())
                    continue
                i = j * block_size + int(m_b[j].argmax())
                out[k] = i
                centres[k] = zt[i]
                centre_sq[k, 0] = sq[i]
                k += 1
    finally:
        torch.set_num_threads(old_threads)
    return out


def naive_greedy_farthest_points(z: np.ndarray, n_select: int, start_indices: np.ndarray) -> np.ndarray:
    """The straightforward algorithm (anomalib / PatchCore style): per step ``norm(z - c)`` over all points.

    Used as the reference in tests and as the baseline in ``benchmarks/features.py``.

    Args:
        z: (N, d) projected points (float32 or float64; computed in that dtype).
        n_select: number of points to select.
        start_indices: (n_starts,) start points.

    Returns:
        (n_select,) int64 indices in selection order.
    """
    min_d = np.linalg.norm(z[:, None, :] - z[np.asarray(start_indices)][None, :, :], axis=2).mean(1)
    out = np.empty(min(n_select, len(z)), np.int64)
    for k in range(len(out)):
        i = int(np.argmax(min_d))
        out[k] = i
        min_d = np.minimum(min_d, np.linalg.norm(z - z[i], axis=1))
    return out


def approximate_greedy_coreset(
    features: np.ndarray | Sequence[np.ndarray],
    ratio: float,
    rng: np.random.Generator,
    n_starts: int = 10,
    proj_dim: int = 128,
    min_points: int = CORESET_MIN_POINTS,
    block_size: int = DEFAULT_BLOCK_SIZE,
    threads: int | None = 1,
) -> np.ndarray:
    """PatchCore's approximate greedy coreset.

    Args:
        features: (N, D) array, or a sequence of (n_i, D) array-likes (anything ``np.asarray`` accepts, with
            ``len`` and ``shape``: memory maps, lazily read per-image cache entries), projected one chunk at a
            time so the full float32 matrix is never needed in memory.
        ratio: fraction of points to keep (0.1 in the paper's launch config).
        rng: generator; draws the projection matrix first, then the start points.
        n_starts: number of random start points.
        proj_dim: projection dimension (128); no projection when ≥ D.
        min_points: keep everything when N ≤ this; never keep fewer (see :func:`coreset_size`).
        block_size: see :func:`greedy_farthest_points`.
        threads: see :func:`greedy_farthest_points`.

    Returns:
        (M,) int64 indices into the N rows, in selection order (``arange(N)`` when the coreset is skipped).
    """
    if isinstance(features, np.ndarray):
        n, dim = features.shape
    else:
        n, dim = sum(len(c) for c in features), (features[0].shape[1] if len(features) else 0)
    m = coreset_size(n, ratio, min_points)
    if m >= n:
        return np.arange(n, dtype=np.int64)
    matrix = random_projection(rng, dim, proj_dim) if proj_dim < dim else np.eye(dim, dtype=np.float32)
    z = project(features, matrix)
    starts = rng.choice(n, size=min(n_starts, n), replace=False)
    return greedy_farthest_points(z, m, starts, block_size=block_size, threads=threads)
