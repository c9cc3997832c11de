"""What the Gaussian and COFT-AD-style detectors share: augmented views of the shots, pooled backbone embeddings
(cached), and the Ledoit–Wolf Gaussian with its Mahalanobis score (docs/tasks.md §A.2).

Library code, not a detector: it lives beside the PatchCore pipeline, not in the plugin folder ``detectors/``
(docs/architecture.md), and registers nothing.

* **Views** (:func:`augment`, :func:`view_key`): mild augmentations of a shot, drawn from a generator seeded by the
  image's content and the view index only (never by the run seed), so view j of an image is the same picture in
  every job, k and seed, and its embedding is computed once (docs/tasks.md §A.2 item 2): a crop of
  ``crop_scale``–1 of the area at the image's aspect ratio, a rotation of ±``rotate_deg`` degrees (reflected
  border), brightness and contrast ±``jitter``. View 0 is the image itself. No flips and no hue changes: they are
  defect types of some categories (metal_nut ``flip``; ``color`` in pill, carpet, wood, leather); rotation is one too
  (transistor ``misplaced``) and is switched off there (:data:`DEFECT_LIKE_AUGMENTATIONS`).
* **Embedder** (:class:`Embedder`): the run's backbone with its weights (``FeatureConfig``: backbone, weights, image
  fit, normalisation), whole, not truncated at the PatchCore layers; h = pooling of its last feature map
  (``forward_features``: EfficientNet-Lite0's 1280-channel head, a ResNet's ``layer4``), ``pooling`` ``mean``
  (global average pooling, docs/tasks.md §A.2 item 1), ``max``, or ``meanmax`` (both, concatenated). The network is
  split into a frozen *prefix* and a *tail* of the last ``train_stages`` stages (plus the head convolution): the
  prefix's output of every image and view is computed once and cached on disk (``features/<key>-prefix/``) and in
  memory, and only the tail runs again when it is fine-tuned. With ``train_stages = 0`` nothing trains and the
  pooled embedding itself is cached (``features/<key>-pooled-<pooling>/``, D floats per image). BatchNorm stays in
  eval mode throughout (docs/tasks.md §A.2 item 1: 2k views give noise statistics).
* **Gaussian** (:class:`Gaussian`, :func:`mahalanobis`): mean and Ledoit–Wolf shrunk covariance (sklearn's
  estimator) of the view embeddings; score = Mahalanobis distance sqrt((x − μ)ᵀ Σ⁻¹ (x − μ)), computed through the
  Woodbury identity (n embeddings ≪ D dimensions).
"""

from __future__ import annotations

import copy
import logging
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from bench.cache import DiskCache, file_sha256, hash_memo_dir, load_npy, save_npy, stable_hash
from bench.errors import ConfigError
from bench.features.backbones import create_backbone
from bench.features.extractor import FeatureConfig
from bench.images import DECODING, load_rgb
from bench.paths import cache_root as resolve_cache_root
from bench.seeding import numpy_rng

log = logging.getLogger(__name__)

EMBED_VERSION = 1
POOLINGS = ("mean", "max", "meanmax")
DEFECT_LIKE_AUGMENTATIONS: dict[str, tuple[str, ...]] = {"transistor": ("rotate",)}
"""Per category, the augmentations left out because they are one of its defect types (docs/tasks.md §A.2 item 2:
transistor ``misplaced`` is a rotated part). Flips and hue changes are never used (metal_nut ``flip``, ``color``)."""


# ---------------------------------------------------------------------------------------------------- views
@dataclass(frozen=True)
class ViewParams:
    """The augmentation of the views (docs/tasks.md §A.2 item 2, [design] values)."""

    crop_scale: float = 0.85  # crop area drawn in [crop_scale, 1]
    rotate_deg: float = 10.0
    jitter: float = 0.1  # brightness ± jitter·255, contrast × (1 ± jitter)

    def __post_init__(self) -> None:
        if not 0 < self.crop_scale <= 1:
            raise ValueError(f"crop_scale must lie in (0, 1], got {self.crop_scale}")
        if self.rotate_deg < 0 or self.jitter < 0:
            raise ValueError("rotate_deg and jitter must be ≥ 0")

    def for_category(self, category: str) -> "ViewParams":
        """These parameters without the augmentations that are a defect type of ``category``."""
        off = DEFECT_LIKE_AUGMENTATIONS.get(category, ())
        return ViewParams(self.crop_scale, 0.0 if "rotate" in off else self.rotate_deg, self.jitter)


def augment(image: np.ndarray, rng: np.random.Generator, params: ViewParams) -> np.ndarray:
    """One mild augmented view of an (H, W, 3) uint8 image (crop, rotation, brightness/contrast): same dtype."""
    import cv2

    h, w = image.shape[:2]
    s = rng.uniform(params.crop_scale, 1.0)
    ch, cw = max(1, int(round(h * np.sqrt(s)))), max(1, int(round(w * np.sqrt(s))))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    a = np.ascontiguousarray(image[y0 : y0 + ch, x0 : x0 + cw])
    angle = rng.uniform(-params.rotate_deg, params.rotate_deg)
    if angle:
        m = cv2.getRotationMatrix2D((cw / 2.0, ch / 2.0), angle, 1.0)
        a = cv2.warpAffine(a, m, (cw, ch), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    contrast = rng.uniform(1 - params.jitter, 1 + params.jitter)
    bright = rng.uniform(-params.jitter, params.jitter) * 255.0
    f = a.astype(np.float32)
    mean = f.mean()
    return np.clip((f - mean) * contrast + mean + bright, 0, 255).astype(np.uint8)


def view_image(path: str, index: int, params: ViewParams, content: str) -> np.ndarray:
    """View ``index`` of the image at ``path`` (0 = the image itself), from a generator seeded by its content."""
    img = np.asarray(load_rgb(path))
    if index == 0:
        return img
    return augment(img, numpy_rng(0, "detection-view", content, index), params)


def view_key(content: str, index: int, params: ViewParams) -> str:
    """Cache name of view ``index`` of the image with sha256 ``content`` under ``params``."""
    if index == 0:
        return content
    return stable_hash(["view", content, int(index), params.crop_scale, params.rotate_deg, params.jitter], 40)


# ---------------------------------------------------------------------------------------------------- Gaussian
def mahalanobis(x: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Mahalanobis distances sqrt((x − μ)ᵀ P (x − μ)) of (N, D) rows; with P = I it is the Euclidean distance."""
    d = np.asarray(x, np.float64) - np.asarray(mean, np.float64)
    q = np.einsum("nd,de,ne->n", d, np.asarray(precision, np.float64), d)
    return np.sqrt(np.maximum(q, 0.0))


class Gaussian:
    """Mean and Ledoit–Wolf shrunk covariance of (n, D) embeddings; :meth:`score` = Mahalanobis distance.

    The estimate is Σ = (1 − α)·S + α·ν·I (S the sample covariance with 1/n, ν = tr(S)/D, α the Ledoit–Wolf
    shrinkage, exactly sklearn's ``LedoitWolf``). With n ≪ D (32 to 256 views against D = 1280) Σ⁻¹ is never formed:
    Σ = c·I + β·XᵀX (X the centred embeddings, c = α·ν, β = (1 − α)/n), so by the Woodbury identity
    Σ⁻¹ = (I − Xᵀ(c/β·I + XXᵀ)⁻¹X)/c, an n × n solve instead of a D × D inverse (milliseconds instead of seconds).
    """

    def fit(self, v: np.ndarray) -> "Gaussian":
        from sklearn.covariance import ledoit_wolf_shrinkage

        v = np.asarray(v, np.float64)
        if v.ndim != 2 or len(v) < 2:
            raise ValueError(f"need at least 2 embeddings of shape (n, D) for a covariance, got {v.shape}")
        n, d = v.shape
        self.mean = v.mean(0)
        x = v - self.mean
        nu = float((x * x).sum() / (n * d))
        self.shrinkage = float(ledoit_wolf_shrinkage(v))
        self.c, beta = self.shrinkage * nu, (1.0 - self.shrinkage) / n
        if self.c <= 0:  # no shrinkage and no spread: fall back to the pseudo-inverse
            self.x, self.inner = None, None
            self.precision = np.linalg.pinv((1.0 - self.shrinkage) * (x.T @ x) / n)
            return self
        self.precision = None
        self.x = x
        self.inner = np.linalg.inv(self.c / beta * np.eye(n) + x @ x.T) if beta > 0 else np.zeros((n, n))
        return self

    def score(self, h: np.ndarray) -> np.ndarray:
        """(N,) Mahalanobis distances of (N, D) embeddings."""
        if self.precision is not None:
            return mahalanobis(h, self.mean, self.precision)
        d = np.asarray(h, np.float64) - self.mean
        xd = d @ self.x.T  # (N, n)
        q = (np.einsum("nd,nd->n", d, d) - np.einsum("nk,kl,nl->n", xd, self.inner, xd)) / self.c
        return np.sqrt(np.maximum(q, 0.0))


# ---------------------------------------------------------------------------------------------------- network
def pool(x: torch.Tensor, how: str) -> torch.Tensor:
    """(B, C, h, w) → (B, C) ``mean`` / ``max``, or (B, 2C) ``meanmax``."""
    if how == "mean":
        return x.mean((2, 3))
    if how == "max":
        return x.amax((2, 3))
    if how == "meanmax":
        return torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1)
    raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {how!r}")


def split_backbone(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module], list[nn.Module]] | None:
    """(stem, stages, head) modules of a timm model whose ``forward_features`` is their composition, or ``None``.

    EfficientNet / MobileNet family: ``conv_stem, bn1`` | ``blocks[i]`` | ``conv_head, bn2``; ResNets: ``conv1, bn1,
    act1, maxpool`` | ``layer1..4`` | nothing.
    """
    if hasattr(model, "conv_stem") and hasattr(model, "blocks"):
        head = [m for m in (getattr(model, "conv_head", None), getattr(model, "bn2", None)) if m is not None]
        return [model.conv_stem, model.bn1], list(model.blocks), head
    if all(hasattr(model, n) for n in ("conv1", "bn1", "act1", "maxpool", "layer1", "layer4")):
        stages = [getattr(model, f"layer{i}") for i in range(1, 5)]
        return [model.conv1, model.bn1, model.act1, model.maxpool], stages, []
    return None


class Tail(nn.Module):
    """The trainable end of the backbone: the last stages and the head convolution, then pooling → h."""

    def __init__(self, modules: Sequence[nn.Module], pooling: str) -> None:
        super().__init__()
        self.body = nn.Sequential(*modules)
        self.pooling = pooling

    def train(self, mode: bool = True) -> "Tail":  # BatchNorm (and dropout) in eval mode always
        return super().train(False)

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        """(B, C', h', w') prefix output → (B, D) pooled embedding h."""
        return pool(self.body(p), self.pooling)


class Embedder:
    """The run's backbone as a pooled embedding, split into a cached frozen prefix and a tail (module docstring).

    Args:
        features: the run's feature configuration (backbone, weights, image fit, normalisation).
        device: torch device.
        cache_root: the cache root (``None`` = the process's).
        train_stages: how many of the last stages (with the head convolution) form the tail; 0 = none (frozen).
        pooling: ``mean`` | ``max`` | ``meanmax``.

    Attributes:
        stats: ``hits``/``misses`` of the prefix (or pooled) cache and the seconds spent computing.
    """

    MEMORY_BYTES = 1 << 30  # prefix outputs kept in memory (LRU)

    def __init__(
        self, features: FeatureConfig, device: torch.device | str = "cpu", cache_root: str | Path | None = None,
        train_stages: int = 0, pooling: str = "mean",
    ) -> None:  # fmt: skip
        pool(torch.zeros(1, 1, 1, 1), pooling)  # checks the name
        self.features, self.device, self.pooling = features, torch.device(device), pooling
        self.cache = DiskCache(cache_root)
        self.hash_dir = hash_memo_dir(self.cache.root)
        self.preprocess = features.preprocess()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(features.init_seed)
            model, self.weights_info = create_backbone(features.backbone, features.weights, zero_init_last=features.zero_init_last)
        for p in model.parameters():
            p.requires_grad_(False)
        parts = split_backbone(model)
        if parts is None:
            if train_stages != 0:
                raise ConfigError(
                    f"backbone {features.backbone!r}: fine-tuning its last stages needs an EfficientNet/MobileNet- or "
                    "ResNet-style timm model; use one of those or train_stages=0 (no fine-tuning)."
                )
            prefix, tail = [_ForwardFeatures(model)], []
        else:
            stem, stages, head = parts
            if not 0 <= train_stages <= len(stages):
                raise ConfigError(f"train_stages must lie in [0, {len(stages)}] for {features.backbone}, got {train_stages}")
            cut = len(stages) - train_stages
            prefix = [*stem, *stages[:cut]] + ([] if train_stages else head)
            tail = [*stages[cut:], *head] if train_stages else []
        self.train_stages = train_stages
        self.prefix = nn.Sequential(*prefix).eval().to(self.device)
        self.tail = Tail(tail, pooling).to(self.device)
        ident = {"v": EMBED_VERSION, "backbone": features.backbone, "weights": features.weights_identity(),
                 "fit": features.image_fit, "resize": features.resize, "crop": features.crop,
                 "normalisation": features.normalisation, "decoding": DECODING, "train_stages": train_stages}  # fmt: skip
        self.key = stable_hash(ident, 24)
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._memory_bytes = 0
        self.stats = {"hits": 0, "misses": 0, "seconds": 0.0}

    # ------------------------------------------------------------------ identity
    def record(self) -> dict[str, Any]:
        """What identifies the embedding in a result row."""
        return {"embed_key": self.key, "backbone": self.features.backbone, "pooling": self.pooling,
                "train_stages": self.train_stages, "dim": self.dim, "embed_version": EMBED_VERSION}  # fmt: skip

    @property
    def dim(self) -> int:
        if not hasattr(self, "_dim"):
            with torch.no_grad():
                x = torch.zeros(1, 3, self.features.crop, self.features.crop, device=self.device)
                self._dim = int(self.tail(self.prefix(x)).shape[1])
        return self._dim

    # ------------------------------------------------------------------ items: (cache name, input maker)
    def content(self, path: str) -> str:
        """sha256 of an image file (memoised)."""
        return file_sha256(path, self.hash_dir)

    def image_items(self, paths: Sequence[str]) -> list[tuple[str, Callable[[], np.ndarray]]]:
        """Items of image files: cached by content."""
        return [(self.content(p), (lambda p=p: self.preprocess(p))) for p in paths]

    def view_items(self, paths: Sequence[str], n_views: int, params: ViewParams) -> list[tuple[str, Callable[[], np.ndarray]]]:
        """Items of ``n_views`` views of each image, image-major (view 0 = the image)."""
        items = []
        for p in paths:
            c = self.content(p)
            for j in range(n_views):
                make = lambda p=p, j=j, c=c: self.preprocess.array(Image.fromarray(view_image(p, j, params, c)))  # noqa: E731
                items.append((view_key(c, j, params), make))
        return items

    def array_items(self, images: Callable[[int], np.ndarray], keys: Sequence[str]) -> list[tuple[str, Callable[[], np.ndarray]]]:
        """Items of in-memory uint8 (H, W, 3) images (``images(i)`` makes image i; only called on a miss)."""
        return [("array-" + stable_hash(["array", k], 40), (lambda i=i: self.preprocess.array(Image.fromarray(images(i)))))
                for i, k in enumerate(keys)]  # fmt: skip

    # ------------------------------------------------------------------ cached computation
    def _lookup(self, kind: str, items: Sequence[tuple[str, Callable[[], np.ndarray]]], net: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
        """The outputs of ``net`` for ``items``, cached in memory and on disk under ``features/<key>-<kind>/``."""
        out: list[np.ndarray | None] = [None] * len(items)
        miss: dict[str, list[int]] = {}
        for i, (name, _) in enumerate(items):
            mem = self._memory.get(kind + name)
            if mem is not None:
                self._memory.move_to_end(kind + name)
                out[i] = mem
                continue
            arr = load_npy(self.cache.path("features", f"{self.key}-{kind}", name), dtype=np.float32)
            if arr is not None and np.isfinite(arr).all():
                out[i] = self._remember(kind + name, arr)
            else:
                miss.setdefault(name, []).append(i)
        self.stats["hits"] += len(items) - sum(len(v) for v in miss.values())
        self.stats["misses"] += len(miss)
        if miss:
            t0 = time.perf_counter()
            todo = list(miss.items())
            with ThreadPoolExecutor(2, thread_name_prefix="decode") as pool_:
                for s in range(0, len(todo), 32):
                    batch = todo[s : s + 32]
                    xs = list(pool_.map(lambda kv: items[kv[1][0]][1](), batch))
                    with torch.no_grad():
                        y = net(torch.from_numpy(np.stack(xs)).to(self.device)).float().cpu().numpy()
                    if not np.isfinite(y).all():
                        raise ConfigError(f"the backbone {self.features.backbone} gave non-finite outputs (NaN or inf); "
                                          "check --weights")  # fmt: skip
                    for (name, idx), a in zip(batch, y):
                        save_npy(self.cache.path("features", f"{self.key}-{kind}", name), a)
                        a = self._remember(kind + name, a)
                        for i in idx:
                            out[i] = a
            self.stats["seconds"] += time.perf_counter() - t0
        return np.stack(out) if out else np.zeros((0,), np.float32)  # type: ignore[arg-type]

    def _remember(self, key: str, a: np.ndarray) -> np.ndarray:
        a = np.ascontiguousarray(a, np.float32)
        self._memory[key] = a
        self._memory_bytes += a.nbytes
        while self._memory_bytes > self.MEMORY_BYTES and len(self._memory) > 1:
            self._memory_bytes -= self._memory.popitem(last=False)[1].nbytes
        return a

    def prefix_outputs(self, items: Sequence[tuple[str, Callable[[], np.ndarray]]]) -> torch.Tensor:
        """(N, C', h', w') frozen-prefix outputs of ``items`` (cached), on the device."""
        if self.train_stages == 0:
            raise RuntimeError("a frozen embedder (train_stages=0) caches pooled embeddings: use pooled()")
        return torch.from_numpy(self._lookup("prefix", items, self.prefix)).to(self.device)

    def pooled(self, items: Sequence[tuple[str, Callable[[], np.ndarray]]], tail: Tail | None = None, chunk: int = 64) -> np.ndarray:
        """(N, D) pooled embeddings h of ``items``: through ``tail`` (a fine-tuned copy) when given, else the
        pretrained network (cached when nothing trains)."""
        if self.train_stages == 0:
            return self._lookup(f"pooled-{self.pooling}", items, lambda x: self.tail(self.prefix(x)))
        tail = tail or self.tail
        p = self.prefix_outputs(items)
        with torch.no_grad():
            return torch.cat([tail(p[s : s + chunk]) for s in range(0, len(p), chunk)]).float().cpu().numpy()

    def stats_since(self, before: dict[str, Any]) -> dict[str, Any]:
        """The cache counters since ``before`` (a copy of :attr:`stats` taken earlier): one job's share."""
        return {k: (round(v - before.get(k, 0.0), 3) if isinstance(v, float) else v - before.get(k, 0))
                for k, v in self.stats.items()}  # fmt: skip

    def trainable_tail(self) -> Tail:
        """A fresh copy of the pretrained tail with gradients on (the shared one stays pretrained)."""
        t = copy.deepcopy(self.tail)
        for p in t.parameters():
            p.requires_grad_(True)
        return t


class _ForwardFeatures(nn.Module):
    """A model's ``forward_features`` as a module (backbones :func:`split_backbone` does not know)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


EMBEDDERS: dict[tuple[str, str, str, int, str], Embedder] = {}
"""This process's embedders by (feature key, device, cache root, train_stages, pooling): the backbone is loaded once."""


def shared_embedder(
    features: FeatureConfig, device: torch.device | str, cache_root: str | Path | None, train_stages: int, pooling: str
) -> Embedder:
    """This process's :class:`Embedder` for these settings, built on first use (``cache_root`` ``None``: the process's,
    told apart by the resolved folder as :func:`bench.features.store.shared_store` does)."""
    root = resolve_cache_root(cache_root)
    key = (features.key(), str(device), str(root), int(train_stages), pooling)
    if key not in EMBEDDERS:
        EMBEDDERS[key] = Embedder(features, device, root, train_stages, pooling)
    return EMBEDDERS[key]
