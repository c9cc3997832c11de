"""Cached PatchCore features, memory banks, residuals and anomaly scores: :class:`FeatureStore`.

PatchCore: Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022. The extractor is
in :mod:`bench.features.extractor`, the coreset in :mod:`bench.features.coreset`, the faiss bank in
:mod:`bench.features.knn`; this module adds the on-disk cache (:mod:`bench.cache`) and the data flow
(docs/method-notes.md §4, §13):

* features of an image are computed once per (image bytes, :meth:`FeatureConfig.key`) and reused by every
  method, shot and seed: ``features/<config key>/<sha256 of the file>.npy``, shape (h, w, D), float32 by
  default (``storage="fp16"`` halves the disk use; it is part of the key). The sha256 of an image file is
  memoised by (path, size, mtime_ns, inode, ctime_ns), in memory and under ``hashes/``;
* a memory bank once per (config, train images' content, coreset ratio, minimum size, seed):
  ``banks/<config key>/<bank key>.npy`` (M, D) float32 plus a ``.json`` with how it was built. The bank is
  built by streaming: features are computed/cached per image, then read back one image at a time for the
  128-d projection and for gathering the chosen rows, so a category's float32 train features are never in
  memory at once (only their (N, 128) projection is);
* residuals r = f − NN_bank(f) (paper Eq. 2) once per (image, bank): the expensive part, the exact k = 1
  search, is cached as the nearest bank row of every patch (``nn/<bank key>/<image key>.npy``, (h, w)
  int32, 3 KB per image instead of 3.2 MB); the residual is then rebuilt exactly as ``f - bank[idx]``;
* decoding runs in a thread pool that prepares the next batch while the network runs; cache writes go to a
  background thread; each image is decoded at most once per call, and never when its features are cached;
  cached entries are validated (header, shape, dtype, size and a CRC-32 of the data, :mod:`bench.cache`) and
  read straight into the output array; a damaged entry is recomputed with a warning naming it. Features are
  checked to be finite when computed (non-finite ones fail the job and are never cached), so every entry read
  back is finite too. An entry pruned by another process while a bank is built is recomputed (:class:`_Entry`).

Deviations from the reference: see :mod:`bench.features.extractor`, :mod:`bench.features.coreset` and
:mod:`bench.features.knn`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from bench.cache import (
    DiskCache, check_npy, file_sha256, hash_memo_dir, load_json, load_npy, read_npy_into, save_json, save_npy,
    stable_hash,
)  # fmt: skip
from bench.features.coreset import CORESET_MIN_POINTS, CORESET_VERSION, approximate_greedy_coreset, coreset_rng
from bench.errors import BenchError, ConfigError, DatasetError
from bench.features.extractor import (
    FEATURE_VERSION, FeatureConfig, PatchCoreExtractor, build_extractor, from_patches, probe_grid, to_patches,
)  # fmt: skip
from bench.features.knn import MemoryBank, faiss_version
from bench.images import DECODING
from bench.paths import cache_root as resolve_cache_root

__all__ = [
    "FEATURE_VERSION", "FeatureConfig", "FeatureStore", "MemoryBank", "PatchCoreExtractor", "build_extractor",
    "from_patches", "to_patches",
]

log = logging.getLogger(__name__)

BANK_VERSION = 1
_NN_CHUNK = 16  # images per faiss query batch


class _Entry:
    """A cached (h, w, D) feature entry seen as an (h·w, D) array-like that is read from disk on ``np.asarray``
    (so the coreset projects a category one image at a time and nothing stays mapped or in memory).

    An entry that vanished meanwhile (``bench cache prune`` or ``clear`` by another process) or that fails its
    checksum is recomputed by ``recompute`` (the same extractor on the same image: identical values), as the
    cache promises: a concurrent prune at worst costs a recomputation, never a failed job.
    """

    def __init__(
        self, path: Path, shape: tuple[int, int, int], dtype: np.dtype, recompute: Callable[[], np.ndarray]
    ) -> None:
        self.path, self.entry_shape, self.dtype, self.recompute = path, shape, dtype, recompute
        self.shape = (shape[0] * shape[1], shape[2])

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.empty(self.entry_shape, np.float32)
        if not read_npy_into(self.path, out, self.dtype):
            log.warning("feature cache entry %s vanished or broke while a memory bank was built (pruned or cleared by "
                        "another process?); recomputing it", self.path)  # fmt: skip
            out = self.recompute()
        out = out.reshape(self.shape)
        return out if dtype is None else out.astype(dtype, copy=False)


def _image_key(path: str, memo_dir: Path | None = None) -> str:
    try:
        return file_sha256(path, memo_dir)
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}. Check the dataset root and that the file was not moved.") from None


class FeatureStore:
    """Cached PatchCore features for one :class:`FeatureConfig` (Roth et al., CVPR 2022; docs/method-notes.md §4).

    A frozen backbone's mid-level feature maps, each position aggregated with its 3 × 3 neighbourhood and pooled
    to D dimensions, give every image an (h, w) grid of D-dim patch vectors (:meth:`patch_features`); the patches
    of a category's normal images, thinned by a greedy coreset, are its memory bank (:meth:`bank`), and a patch's
    residual is its difference from its nearest bank vector (:meth:`residuals`, paper Eq. 2). Everything is
    computed once per content and configuration and cached on disk; one store per process is shared by every job
    (:func:`shared_store`). Example::

        store = FeatureStore(FeatureConfig(backbone="resnet18", weights="random"))
        bank = store.bank(train_paths, seed=1, coreset_ratio=0.1)     # (M, D) MemoryBank
        r = store.residuals(query_paths, bank)                         # (Q, D, 28, 28) torch.float32

    Args:
        config: the feature configuration.
        cache_root: cache root (``None`` = the process's, :func:`bench.paths.cache_root`).
        device: torch device of the backbone.
        batch_size: images per forward pass.
        num_workers: decoding threads (they prepare the next batch while the network runs).

    Attributes:
        weights_info: what weights were loaded (from :func:`bench.features.backbones.create_backbone`).
        key: ``config.key()``.
        grid: (h, w) of the patch grid (28, 28 for a 224 crop).
        dim: feature dimension D (:attr:`FeatureConfig.dim`: 1024 for ResNets; less for narrow backbones).
        stats: per stage (``features``, ``bank``, ``nn``): ``hits``, ``misses`` (unique entries) and ``seconds``.
        progress: show a tqdm bar (stderr) while missing features are computed. Off by default (a run has its own job
            bar, and its workers must not print); the one-job commands (``detect``, ``maps``, ``show-crops``,
            ``tsne``) turn it on on a terminal unless ``--no-progress``: extraction is most of their time (issue #24).

    Returned grids are float32 (N, D, h, w) tensors in channels-last memory (permuted views of (N, h, w, D)
    arrays): ``to_patches`` is then a free view; call ``.contiguous()`` for NCHW memory.
    """

    def __init__(
        self,
        config: FeatureConfig,
        cache_root: str | Path | None = None,
        device: str = "cpu",
        batch_size: int = 16,
        num_workers: int = 2,
    ) -> None:
        t0 = time.perf_counter()
        self.config = config
        self.cache = DiskCache(cache_root)
        self._hash_dir = hash_memo_dir(self.cache.root)
        self.device = torch.device(device)
        self.batch_size = max(1, int(batch_size))
        self.num_workers = max(1, int(num_workers))
        self.extractor, self.weights_info = build_extractor(config)
        self.extractor.to(self.device)
        self.key = config.key()
        self.preprocess = config.preprocess()  # the backbone's own normalisation
        self.grid: tuple[int, int] = probe_grid(self.extractor, config, self.device)  # a backbone that cannot: refused
        self.dim = int(self.extractor.target_dim)  # = config.dim (1024 for ResNets, 152 for EfficientNet-Lite0)
        self._dtype = np.dtype(np.float32 if config.storage == "fp32" else np.float16)
        self._banks: dict[str, MemoryBank] = {}
        self.progress = False
        self.stats: dict[str, dict[str, Any]] = {}
        self.reset_stats()
        self.init_seconds = time.perf_counter() - t0

    def reset_stats(self) -> None:
        self.stats = {k: {"hits": 0, "misses": 0, "seconds": 0.0} for k in ("features", "bank", "nn")}

    def record(self) -> dict[str, Any]:
        """What identifies these features in a result row."""
        return {"feature_key": self.key, "feature_version": FEATURE_VERSION, "decoding": DECODING,
                "feature_dim": self.dim, "faiss": faiss_version(),
                **{f"weights_{k}": v for k, v in self.weights_info.record().items()}}

    def __repr__(self) -> str:
        return f"FeatureStore({self.config}, key={self.key}, cache={self.cache.root})"

    # ------------------------------------------------------------------ features
    def _fpath(self, name: str) -> Path:
        return self.cache.path("features", self.key, name)

    def _array_input(self, image: Any) -> np.ndarray:
        a = np.asarray(image)
        if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
            raise ConfigError(f"images must be uint8 (H, W, 3) RGB arrays, got dtype {a.dtype} shape {a.shape}")
        return self.preprocess.array(Image.fromarray(a.squeeze(2) if a.ndim == 3 and a.shape[2] == 1 else a).convert("RGB"))

    def _fill(self, names: Sequence[str], make_input: Callable[[int], np.ndarray], out: np.ndarray | None) -> None:
        """Make sure every entry is cached; with ``out`` (N, h, w, D) float32, also put entry i in ``out[i]``.

        Hits are read straight into ``out`` (or only validated when ``out`` is None); misses are computed in
        batches (decode overlapped with the network) and written in the background. ``make_input(i)`` ->
        (3, crop, crop) float32 is only called for misses, once per distinct name.
        """
        st = self.stats["features"]
        t0 = time.perf_counter()
        groups: dict[str, list[int]] = {}
        for i, n in enumerate(names):
            groups.setdefault(n, []).append(i)
        shape = (*self.grid, self.dim)
        misses = []
        try:
            for name, idx in groups.items():
                path = self._fpath(name)
                ok = check_npy(path, shape, self._dtype) is not None if out is None else read_npy_into(path, out[idx[0]], self._dtype)
                if not ok:
                    misses.append((name, idx))
                    continue
                st["hits"] += 1
                if out is not None and len(idx) > 1:
                    out[idx[1:]] = out[idx[0]]
            st["misses"] += len(misses)
            if misses:
                self._compute(misses, make_input, out)
        finally:
            st["seconds"] += time.perf_counter() - t0

    def _compute(self, misses: list[tuple[str, list[int]]], make_input: Callable[[int], np.ndarray], out: np.ndarray | None) -> None:
        """Extract, write and (with ``out``) place the missing entries, batch by batch."""
        from tqdm import tqdm

        bs = self.batch_size
        batches = [misses[i : i + bs] for i in range(0, len(misses), bs)]
        bar = tqdm(total=len(misses), desc="features", unit="img", leave=False, disable=not self.progress)
        with bar, ThreadPoolExecutor(self.num_workers, thread_name_prefix="decode") as pool, ThreadPoolExecutor(
            1, thread_name_prefix="cache-write"
        ) as writer:
            pending: deque[list[Future]] = deque()
            writes: deque[Future] = deque()
            submitted = 0
            for b, batch in enumerate(batches):
                while submitted < len(batches) and submitted <= b + 1:  # keep the next batch decoding
                    pending.append([pool.submit(make_input, idx[0]) for _, idx in batches[submitted]])
                    submitted += 1
                x = torch.from_numpy(np.stack([f.result() for f in pending.popleft()])).to(self.device)
                first = [idx[0] for _, idx in batch]
                direct = (out is not None and self.device.type == "cpu" and self._dtype == np.float32
                          and first == list(range(first[0], first[0] + len(first))))
                if direct:  # write the network's output straight into the caller's array
                    buf = torch.from_numpy(out[first[0] : first[0] + len(first)])
                else:
                    buf = torch.empty((len(batch), *self.grid, self.dim), dtype=torch.float32, device=self.device)
                self.extractor.aggregate(self.extractor.backbone_features(x), out=buf)
                arr = buf.cpu().numpy()
                self._check_finite(arr, [name for name, _ in batch])
                if self._dtype != np.float32:
                    arr = arr.astype(self._dtype)
                for (name, idx), a in zip(batch, arr):
                    writes.append(writer.submit(save_npy, self._fpath(name), a))
                    if out is not None:
                        out[idx if not direct else idx[1:]] = a
                while len(writes) > 2 * bs:  # bound the memory held by queued writes
                    writes.popleft().result()
                bar.update(len(batch))
            for w in writes:
                w.result()

    def _check_finite(self, arr: np.ndarray, names: Sequence[str]) -> None:
        """Refuse to cache or return non-finite features (B, h, w, D): they would give results at chance."""
        if np.isfinite(arr).all():  # ~0.06 ms per 3.2 MB entry
            return
        bad = [n for n, a in zip(names, arr) if not np.isfinite(a).all()]
        raise BenchError(
            f"the backbone {self.config.backbone} ({self.weights_info.source}) produced non-finite features (NaN or "
            f"inf) for {len(bad)} image(s) of this batch (cache name {bad[0]}); nothing was cached. The weights are "
            "damaged or the precision overflows: check --weights (re-download the file) and try --precision fp32."
        )

    def _grids(self, names: Sequence[str], make_input: Callable[[int], np.ndarray]) -> np.ndarray:
        out = np.empty((len(names), *self.grid, self.dim), np.float32)
        self._fill(names, make_input, out)
        return out

    def patch_features(self, paths: Sequence[str | Path]) -> torch.Tensor:
        """PatchCore patch features of image files, cached per image content.

        Args:
            paths: N image files.

        Returns:
            (N, D, h, w) float32 (channels-last memory).
        """
        return torch.from_numpy(self._grids(*self._file_inputs(paths))).permute(0, 3, 1, 2)

    def ensure(self, paths: Sequence[str | Path]) -> None:
        """Make sure the patch features of these image files are cached, without holding them in memory."""
        self._fill(*self._file_inputs(paths), None)

    def _file_inputs(self, paths: Sequence[str | Path]) -> tuple[list[str], Callable[[int], np.ndarray]]:
        """Cache names (by content) of image files and the function that decodes and pre-processes file i."""
        p = [str(x) for x in paths]
        return [_image_key(x, self._hash_dir) for x in p], lambda i: self.preprocess(p[i])

    def _array_names(self, keys: Sequence[str]) -> list[str]:
        return ["array-" + stable_hash(["array", str(k)], 40) for k in keys]

    def patch_features_arrays(self, images: Sequence[np.ndarray], keys: Sequence[str]) -> torch.Tensor:
        """Patch features of in-memory images (e.g. generated pseudo-defects), cached by the caller's keys.

        Args:
            images: N uint8 (H, W, 3) RGB arrays; only indexed for cache misses, so it may be a lazy sequence.
            keys: N stable content keys (same key ⇔ same image).

        Returns:
            (N, D, h, w) float32 (channels-last memory).
        """
        if len(images) != len(keys):
            raise ValueError(f"got {len(images)} images but {len(keys)} keys")
        return torch.from_numpy(self._grids(self._array_names(keys), lambda i: self._array_input(images[i]))).permute(0, 3, 1, 2)

    # ------------------------------------------------------------------ memory bank
    def bank(
        self, train_paths: Sequence[str | Path], seed: int, coreset_ratio: float = 0.1, min_points: int = CORESET_MIN_POINTS
    ) -> MemoryBank:
        """The PatchCore memory bank of ``train_paths`` (approximate greedy coreset), cached.

        Args:
            train_paths: the category's normal train images.
            seed: run seed; the coreset uses its ``coreset`` stream (:func:`bench.features.coreset.coreset_rng`).
            coreset_ratio: fraction of patches kept (0.1).
            min_points: banks up to this size are kept whole (see :func:`bench.features.coreset.coreset_size`).

        Returns:
            The bank: (M, D) float32 vectors + exact L2 index; ``bank.key`` identifies it.
        """
        st = self.stats["bank"]
        t0 = time.perf_counter()
        paths = [str(x) for x in train_paths]
        if not paths:
            raise ConfigError("cannot build a memory bank from zero train images (the category has no train/good images)")
        names = [_image_key(x, self._hash_dir) for x in paths]
        ident = {"v": BANK_VERSION, "features": self.key, "images": names, "ratio": float(coreset_ratio), "seed": int(seed),
                 "min_points": int(min_points), "coreset": CORESET_VERSION, "proj_dim": 128, "n_starts": 10}
        bkey = stable_hash(ident, 32)
        try:
            if bkey in self._banks:
                st["hits"] += 1
                return self._banks[bkey]
            path = self.cache.path("banks", self.key, bkey)
            vectors = load_npy(path, dtype=np.float32)
            if vectors is not None and vectors.ndim == 2 and vectors.shape[1] == self.dim:
                st["hits"] += 1
                bank = MemoryBank(vectors, bkey, load_json(path.with_suffix(".json")) or {})
            else:
                st["misses"] += 1
                bank = self._build_bank(paths, names, seed, coreset_ratio, min_points, bkey)
                save_json(path.with_suffix(".json"), bank.meta)
                save_npy(path, bank.vectors)
            self._banks[bkey] = bank
            return bank
        finally:
            st["seconds"] += time.perf_counter() - t0

    def _build_bank(self, paths: list[str], names: list[str], seed: int, ratio: float, min_points: int, bkey: str) -> MemoryBank:
        self._fill(names, lambda i: self.preprocess(paths[i]), None)  # computes and caches missing entries only
        def recompute(name: str, path: str) -> Callable[[], np.ndarray]:
            return lambda: self._grids([name], lambda _: self.preprocess(path))[0]

        shape = (*self.grid, self.dim)
        maps = [_Entry(self._fpath(n), shape, self._dtype, recompute(n, p)) for n, p in zip(names, paths)]
        t0 = time.perf_counter()
        sel = approximate_greedy_coreset(maps, ratio, coreset_rng(seed), min_points=min_points)
        seconds = time.perf_counter() - t0
        hw = self.grid[0] * self.grid[1]
        vectors = np.empty((len(sel), self.dim), np.float32)
        img, row = np.divmod(sel, hw)
        for i in np.unique(img):
            at = np.nonzero(img == i)[0]
            vectors[at] = np.asarray(maps[i])[row[at]]
        meta = {"n_images": len(paths), "n_total": len(paths) * hw, "n_selected": int(len(sel)), "ratio": ratio,
                "seed": int(seed), "min_points": min_points, "coreset_version": CORESET_VERSION, "coreset_seconds": round(seconds, 3),
                "feature_key": self.key, "faiss": faiss_version()}
        return MemoryBank(vectors, bkey, meta)

    # ------------------------------------------------------------------ residuals and scores
    def _nn_indices(self, names: Sequence[str], feats: np.ndarray, bank: MemoryBank) -> np.ndarray:
        """(N, h·w) nearest bank row of every patch of ``feats`` (N, h, w, D), cached per (image, bank)."""
        st = self.stats["nn"]
        t0 = time.perf_counter()
        hw = self.grid[0] * self.grid[1]
        idx = np.empty((len(names), hw), np.int64)
        miss = []
        for i, n in enumerate(names):  # a bank without a key (built by hand) is never cached
            a = load_npy(self.cache.path("nn", bank.key, n), self.grid, np.int32) if bank.key else None
            if a is None:
                miss.append(i)
            else:
                idx[i] = a.reshape(-1)
        st["hits"] += len(names) - len(miss)
        st["misses"] += len(miss)
        for s in range(0, len(miss), _NN_CHUNK):
            chunk = miss[s : s + _NN_CHUNK]
            _, nn = bank.nearest(feats[chunk].reshape(-1, self.dim))
            idx[chunk] = nn.reshape(len(chunk), hw)
            for i in chunk if bank.key else ():
                save_npy(self.cache.path("nn", bank.key, names[i]), idx[i].astype(np.int32).reshape(self.grid))
        st["seconds"] += time.perf_counter() - t0
        return idx

    def _residuals(self, names: list[str], make_input: Callable[[int], np.ndarray], bank: MemoryBank) -> torch.Tensor:
        out = self._grids(names, make_input)
        idx = self._nn_indices(names, out, bank)
        for i in range(len(out)):
            out[i] -= bank.vectors[idx[i]].reshape(out.shape[1:])
        return torch.from_numpy(out).permute(0, 3, 1, 2)

    def residuals(self, paths: Sequence[str | Path], bank: MemoryBank) -> torch.Tensor:
        """Residuals r = f − NN_bank(f) of image files (paper Eq. 2).

        Args:
            paths: N image files.
            bank: from :meth:`bank`.

        Returns:
            (N, D, h, w) float32 (channels-last memory).
        """
        return self._residuals(*self._file_inputs(paths), bank)

    def residuals_arrays(self, images: Sequence[np.ndarray], keys: Sequence[str], bank: MemoryBank) -> torch.Tensor:
        """As :meth:`residuals` for in-memory uint8 (H, W, 3) images cached under ``keys``: (N, D, h, w)."""
        if len(images) != len(keys):
            raise ValueError(f"got {len(images)} images but {len(keys)} keys")
        return self._residuals(self._array_names(keys), lambda i: self._array_input(images[i]), bank)

    def anomaly_maps(self, paths: Sequence[str | Path], bank: MemoryBank, chunk: int = 32) -> np.ndarray:
        """PatchCore patch scores: distance of every patch to its nearest bank vector.

        Args:
            paths: N image files.
            bank: from :meth:`bank`.
            chunk: images held in memory at a time.

        Returns:
            (N, h, w) float32 Euclidean distances.
        """
        p = [str(x) for x in paths]
        names = [_image_key(x, self._hash_dir) for x in p]
        maps = np.empty((len(p), *self.grid), np.float32)
        for s in range(0, len(p), chunk):
            feats = self._grids(names[s : s + chunk], lambda i, s=s: self.preprocess(p[s + i]))
            idx = self._nn_indices(names[s : s + chunk], feats, bank)
            for i in range(len(feats)):
                r = feats[i].reshape(-1, self.dim) - bank.vectors[idx[i]]
                maps[s + i] = np.sqrt(np.einsum("pd,pd->p", r, r)).reshape(self.grid)
        return maps

    def anomaly_scores(self, paths: Sequence[str | Path], bank: MemoryBank) -> np.ndarray:
        """PatchCore image anomaly score: max over patches of the nearest-bank distance, (N,) float32."""
        return self.anomaly_maps(paths, bank).reshape(len(paths), -1).max(1) if len(paths) else np.zeros(0, np.float32)


SHARED_STORES: dict[tuple[str, str, str], FeatureStore] = {}
"""The feature stores of this process by (feature key, device, cache root): see :func:`shared_store`."""


def shared_store(
    config: FeatureConfig, device: str | torch.device = "cpu", cache_root: str | Path | None = None
) -> FeatureStore:
    """This process's :class:`FeatureStore` for ``config`` on ``device`` over ``cache_root`` (``None``: the process's,
    :func:`bench.paths.cache_root`), built on first use.

    The backbone is loaded once per process and the memory banks it builds stay in memory, so every job of a run
    (and ``bench detect``) that needs the same features shares them. Stores are told apart by the resolved root, so
    a process whose root changes (in-process commands, one after another) never writes into the previous one.
    """
    root = resolve_cache_root(cache_root)
    key = (config.key(), str(device), str(root))
    if key not in SHARED_STORES:
        SHARED_STORES[key] = FeatureStore(config, cache_root=root, device=str(device))
    return SHARED_STORES[key]
