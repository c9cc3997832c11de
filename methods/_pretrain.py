"""Shared machinery of the paper's trained classifiers: feature grids, prototypes, pseudo-defect pretraining.

Liu et al., "Anomaly Multi-classification in Industrial Scenarios: Transferring Few-shot Learning to a New
Task", arXiv 2406.05645, §3.3–§3.5 (docs/method-notes.md §4.4, §7, §9, §13). Not a registered method (the leading
underscore keeps it out of the registry): ``relationnet.py``, ``contrastive.py`` and ``maml.py`` build on it.

* **Grids.** Every image is a (D, H, W) grid (channels = feature dims; D = 1024 and H = W = 28 for the
  paper's ResNet-50 at 224 px; all shapes are read off the tensors, never hard-coded, §11 item 17) of raw
  PatchCore features f or residuals r = f − NN_bank(f) (paper Eq. 2). ``residual_layout="raw_reshape"``
  reproduces the reference code, which reshapes the flat (H·W patches × D) vector straight to (D, H, W) and so
  scrambles space and features (§11 item 2).
* **Prototypes** (§9): ``pixel_mean`` (code) averages the n support images in pixel space, then embeds the
  mean image and takes its residual; ``embedding_mean`` is handled by each method.
* **Pretraining** (§7) on pseudo-defects from :class:`bench.datasets.pseudo.PseudoDefectGenerator`: every episode
  draws ``episode_classes`` fresh pseudo classes from the dedicated ``pretrain-sampler`` stream (the code
  probably reuses one subset, §11 item 7), ``episode_groups`` support groups (one source image per group) and
  ``episode_queries`` queries; one optimiser step per episode; stop as soon as the CURRENT batch accuracy
  exceeds ``stop_accuracy`` or after ``max_episodes`` (paper 1000). Only the images an episode uses are made,
  and their features go through the feature store under the generator's content keys (cached, reused).
  Pseudo residuals are coreset residuals (paper Eq. 2, default); ``pretrain_residual="paired_source"``
  reproduces the code's oracle f(syn) − f(source image) (§11 item 1). Test queries are never touched (§11
  item 15). Train mode during updates, eval mode for prediction (§11 item 5). The pseudo data use a fixed
  generation seed (``pseudo_seed``, 0) for every run seed, as the code generates its pseudo set once; the run
  seed drives the classifier init and the episode sampler.
* **Cache.** The pretrained state (model + Adam state, which carries on into fine-tuning, §8) depends on
  (category, seed, config minus fine-tuning fields, feature config, bank, textures) but not on the shots: it is
  stored atomically under ``<cache>/pretrained/<hash>.pt`` and reused by every shot count (§13).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import operator
import threading
import time
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from bench.errors import ConfigError
from bench.images import load_rgb
from bench.method import Method, SupportSet, config_dict, config_hash

log = logging.getLogger(__name__)
PRETRAIN_VERSION = 2  # 2: the key hashes the train images' bytes (was: their paths and sizes)
_CHOICES: dict[str, tuple[str, ...]] = {
    "features": ("residual", "raw"),
    "pseudo_mask": ("perlin", "polygon"),
    "pretrain_residual": ("coreset", "paired_source"),
    "residual_layout": ("proper", "raw_reshape"),
    "prototype": ("pixel_mean", "embedding_mean"),
}


@dataclass(frozen=True)
class PaperConfig:
    """Options shared by the RelationNet baseline and the contrastive classifier (defaults = paper)."""

    features: str = "residual"  # "residual" (paper Eq. 2) | "raw" (Tables 5, 11)
    pretrain: bool = True  # pseudo-defect pretraining (§7)
    max_episodes: int = 1000  # pretraining budget (paper 1000)
    stop_accuracy: float = 0.4  # stop when the current training-batch accuracy exceeds this
    pseudo_mask: str = "perlin"  # "perlin" (paper) | "polygon" (Appendix C, Table 9)
    pseudo_seed: int = 0  # data-generation seed: the code generates its pseudo set once, for every run seed
    texture_bgr: bool = False  # blend textures in BGR (reference-code bug, §11 item 9)
    pretrain_residual: str = "coreset"  # "coreset" (paper) | "paired_source" (code's oracle, §11 item 1)
    residual_layout: str = "proper"  # "proper" | "raw_reshape" (code's scramble, §11 item 2)
    prototype: str = "pixel_mean"  # "pixel_mean" (code, §9) | "embedding_mean"
    lr: float = 1e-4  # Adam, pretraining and fine-tuning
    episode_classes: int = 10
    episode_groups: int = 9
    episode_queries: int = 9
    query_chunk: int = 10  # prediction batch (no effect in eval mode, §9)

    FINETUNE_FIELDS: ClassVar[tuple[str, ...]] = ("prototype", "query_chunk")

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        for name in ("max_episodes", "episode_groups", "episode_queries", "query_chunk"):
            if int(getattr(self, name)) < (0 if name == "max_episodes" else 1):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.episode_classes < 2:
            raise ValueError(f"episode_classes must be >= 2, got {self.episode_classes}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    def pretrain_identity(self) -> dict[str, Any]:
        """The config without the fine-tuning / prediction fields (what the pretrained model depends on)."""
        d = config_dict(self)
        for k in self.FINETUNE_FIELDS:
            d.pop(k, None)
        return d


def make_adam(params: Any, lr: float) -> torch.optim.Optimizer:
    """Adam (the paper's optimiser). The fused kernel: about 6× faster per step on the 12.8 M-weight Linear on CPU."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):  # a device without a fused kernel
        return torch.optim.Adam(params, lr=lr)


def head_input(x: Any, layout: str, device: torch.device) -> torch.Tensor:
    """Feature-store output (N, D, H, W) → float32 in ``layout`` on ``device``, channels-last in memory.

    Channels-last makes the 1×1 convolutions about 1.5× faster on CPU (values are unchanged).
    """
    x = apply_layout(torch.as_tensor(x).float(), layout).to(device)
    return x.contiguous(memory_format=torch.channels_last)


def apply_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """Lay a (N, D, H, W) grid out for the heads.

    ``proper`` returns it unchanged. ``raw_reshape`` reproduces the reference code: the flat patch-major vector
    (H·W patches × D dims, row-major) is reshaped straight to (D, H, W), so a "channel" is a run of H·W
    consecutive values mixing patches and dims (docs/method-notes.md §11 item 2).
    """
    if layout == "proper":
        return x
    n, d, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n, d, h, w)


@dataclass
class PretrainBatch:
    """One pseudo episode as tensors.

    Attributes:
        keys: (G, K, D, H, W) support groups; ``keys[g, k]`` is class k of group g (one source image per group).
        queries: (Q, D, H, W) query grids.
        labels: (Q,) int64 index into the K episode classes.
    """

    keys: torch.Tensor
    queries: torch.Tensor
    labels: torch.Tensor


class PseudoSource:
    """Pseudo-defect episodes of one category as feature grids (docs/method-notes.md §6, §7).

    Args:
        method: the owning method (its config, context and feature access are used).
    """

    def __init__(self, method: "PaperMethod") -> None:
        from bench.datasets.pseudo.generator import PseudoConfig, PseudoDefectGenerator
        from bench.datasets.pseudo.textures import load_textures

        cfg, ctx = method.config, method.ctx
        self.method = method
        self.textures = load_textures(Path(ctx.textures) if ctx.textures else None, seed=cfg.pseudo_seed)
        self.pseudo_config = PseudoConfig(mask=cfg.pseudo_mask, texture_bgr=cfg.texture_bgr)
        self.gen = PseudoDefectGenerator(
            ctx.train_paths, self.textures, ctx.category, self.pseudo_config, seed=cfg.pseudo_seed
        )
        self.seconds = 0.0  # generation + features

    def identity(self) -> dict[str, Any]:
        return {"textures": self.textures.digest(), "generator": self.pseudo_config.key(), "seed": self.gen.seed}

    def grids(self, items: Sequence[tuple[int, int]]) -> torch.Tensor:
        """(N, D, H, W) grids of the (class, source) pseudo images, features cached under their content keys.

        The images are a lazy sequence: the store generates only those whose features are not cached yet.
        """
        m, cfg = self.method, self.method.config
        images = _LazyImages(lambda i: self.gen.image(*items[i])[0], len(items))
        keys = [self.gen.content_key(c, s) for c, s in items]
        store = m.ctx.features
        if cfg.features == "raw":
            x = store.patch_features_arrays(images, keys)
        elif cfg.pretrain_residual == "coreset":
            x = store.residuals_arrays(images, keys, m.ctx.bank())
        else:  # f(syn) - f(its source image), patch by patch (the code's oracle)
            srcs = sorted({s for _, s in items})
            src_images = _LazyImages(lambda i: self.gen.source(srcs[i])[0], len(srcs))
            src = store.patch_features_arrays(src_images, [self._source_key(s) for s in srcs])
            pos = {s: i for i, s in enumerate(srcs)}
            x = store.patch_features_arrays(images, keys) - src[[pos[s] for _, s in items]]
        return head_input(x, cfg.residual_layout, m.ctx.device)

    def _source_key(self, source_idx: int) -> str:
        from bench.datasets.pseudo.foreground import source_content

        payload = ["pseudo-source", source_content(self.gen.normal_paths[source_idx]), self.pseudo_config.size]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:32]

    def episode(
        self,
        rng: np.random.Generator,
        only_classes: Sequence[int] | None = None,
        exclude_classes: Sequence[int] | None = None,
    ) -> tuple[list[int], PretrainBatch]:
        """Draw one episode; returns (its generator classes, its tensors)."""
        cfg = self.method.config
        t0 = time.perf_counter()
        ep = self.gen.sample_episode(
            rng, cfg.episode_classes, cfg.episode_groups, cfg.episode_queries,
            only_classes=only_classes, exclude_classes=exclude_classes,
        )  # fmt: skip
        items = ep.items()
        index = {it: i for i, it in enumerate(items)}
        x = self.grids(items)
        keys = x[[index[it] for g in ep.support for it in g]].view(len(ep.support), len(ep.classes), *x.shape[1:])
        batch = PretrainBatch(keys, x[[index[it] for it in ep.queries]], torch.tensor(ep.query_labels, device=x.device))
        self.seconds += time.perf_counter() - t0
        return ep.classes, batch


class _LazyImages(SequenceABC):
    """A read-only sequence whose items are made on first access, under a lock (the store may index it from
    its decoding threads; the generator's small LRU of source images is not thread-safe)."""

    def __init__(self, make: Callable[[int], np.ndarray], n: int) -> None:
        self._make, self._n, self._lock = make, n, threading.Lock()

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: Any) -> np.ndarray:
        i = operator.index(i)
        if not -self._n <= i < self._n:
            raise IndexError(i)
        with self._lock:
            return self._make(i % self._n)


StepFn = Callable[[PretrainBatch], tuple[torch.Tensor, float]]


def pretrain_loop(
    method: "PaperMethod", model: nn.Module, opt: torch.optim.Optimizer, step: StepFn, source: PseudoSource
) -> dict[str, Any]:
    """Episodic pretraining (§7): one optimiser step per episode, stop rule on the current batch accuracy.

    Args:
        step: (batch) -> (loss to minimise, batch accuracy in [0, 1]); called with ``model`` in train mode.

    Returns:
        The log: episodes used, per-episode loss and accuracy, final accuracy, whether the stop rule fired, timings.
    """
    cfg = method.config
    rng = method.ctx.rng("pretrain-sampler")
    losses: list[float] = []
    accs: list[float] = []
    stopped = False
    t_update = 0.0
    for _ in range(cfg.max_episodes):
        _, batch = source.episode(rng)
        t0 = time.perf_counter()
        model.train()
        loss, acc = step(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t_update += time.perf_counter() - t0
        losses.append(round(loss.item(), 5))
        accs.append(round(float(acc), 4))
        if acc > cfg.stop_accuracy:
            stopped = True
            break
    n = max(1, len(losses))
    return {
        "episodes": len(losses),
        "stopped_by_rule": stopped,
        "final_batch_accuracy": accs[-1] if accs else None,
        "loss": losses,
        "batch_accuracy": accs,
        "seconds_per_episode_features": round(source.seconds / n, 4),
        "seconds_per_episode_update": round(t_update / n, 4),
    }


class PaperMethod(Method):
    """Glue shared by the paper's trained classifiers (feature grids, prototypes, cached pretraining)."""

    config: PaperConfig

    @classmethod
    def normal_images_needed(cls, config: Any) -> str:
        """The memory bank for residual features and/or the source images of pseudo-defect pretraining."""
        needs = [super().normal_images_needed(config)]
        if getattr(config, "pretrain", False):
            needs.append("pseudo-defect pretraining (defects are pasted onto normal images)")
        return " and ".join(n for n in needs if n)

    def extra_info(self) -> dict[str, Any]:
        """The switches and the pretraining / fine-tuning counts, for reading a result row."""
        pre = self.ctx.log.get("pretrain", {})
        return {
            **describe_config(self.config),
            "pretrained_from_cache": pre.get("from_cache"),
            "pretrain_episodes": pre.get("episodes"),
            **pretrain_stop(pre),
            "finetune_steps": self.ctx.log.get("finetune", {}).get("steps"),
        }

    @classmethod
    def prepares(cls, config: Any) -> bool:
        """Pretraining (``pretrain``) is the shot-independent work a run can do ahead (:meth:`prepare`)."""
        return bool(getattr(config, "pretrain", False))

    def prepare(self) -> None:
        """Pretrain (or load) the model every shot count of this (category, seed) starts from and cache it: the model
        built as :meth:`fit` builds it (same init stream) on the grid shape of a normal image, which is the shape of
        every grid of the run's feature config."""
        if self.config.pretrain:
            self.start_model(self.grids(self.ctx.train_paths[:1]).shape[1:])

    def start_model(self, grid_shape: Sequence[int]) -> None:
        """Build the model for (D, H, W) grids (:meth:`_build`) and, with ``pretrain``, load or pretrain it: the
        model every shot's :meth:`fit` starts from, and what :meth:`prepare` caches."""
        self._build(grid_shape)
        if self.config.pretrain:
            self.load_or_pretrain(self.pretrained_module(), self.opt, self._pretrain)

    def _build(self, grid_shape: Sequence[int]) -> None:
        """Create the model for (D, H, W) grids and its optimiser (``self.opt``), initialised from the seed."""
        raise NotImplementedError

    def pretrained_module(self) -> nn.Module:
        """The module that pretraining trains (and the cache stores)."""
        raise NotImplementedError

    def _pretrain(self, source: PseudoSource) -> dict[str, Any]:
        """Pretrain :meth:`pretrained_module` on ``source``'s pseudo episodes; returns the log."""
        raise NotImplementedError

    # ------------------------------------------------------------------ features
    def grids(self, paths: Sequence[str]) -> torch.Tensor:
        """(N, D, H, W) raw or residual grids of real images, in the configured layout, on the device."""
        store = self.ctx.features
        with self.ctx.timer("features"):
            if self.config.features == "raw":
                x = store.patch_features(list(paths))
            else:
                x = store.residuals(list(paths), self.ctx.bank())
        return head_input(x, self.config.residual_layout, self.ctx.device)

    def grids_arrays(self, images: list[np.ndarray], keys: list[str]) -> torch.Tensor:
        """As :meth:`grids` for in-memory uint8 (H, W, 3) images cached under ``keys``."""
        store = self.ctx.features
        with self.ctx.timer("features"):
            if self.config.features == "raw":
                x = store.patch_features_arrays(images, keys)
            else:
                x = store.residuals_arrays(images, keys, self.ctx.bank())
        return head_input(x, self.config.residual_layout, self.ctx.device)

    def support_grids(self, support: SupportSet) -> torch.Tensor:
        """(C, n, D, H, W) support grids, class-major (the fine-tuning loops need equal n per class)."""
        groups = support.by_class()
        n = len(groups[0])
        if any(len(g) != n for g in groups) or n == 0:
            sizes = [len(g) for g in groups]
            raise ConfigError(f"{self.name}: every class needs the same number of support images, got {sizes}")
        x = self.grids([p for g in groups for p in g])
        return x.view(len(groups), n, *x.shape[1:])

    def pixel_mean_grids(self, support: SupportSet) -> torch.Tensor:
        """(C, D, H, W): per class, the grid of the pixel-space mean of its n support images (code, §9).

        The mean of the decoded RGB images (resized to the first image's size if sizes differ) is rounded to
        uint8 and goes through the shared pre-processing; since resizing and normalisation are (near-)linear this
        equals the code's mean of normalised tensors up to the rounding (≤ 0.5/255 per pixel). At n = 1 the
        image itself is used.
        """
        from PIL import Image

        out: list[torch.Tensor | None] = []
        arrays: list[np.ndarray] = []
        keys: list[str] = []
        for paths in support.by_class():
            if len(paths) == 1:
                out.append(self.grids(paths)[0])
                continue
            ims = [load_rgb(p) for p in paths]
            size = ims[0].size
            ims = [im if im.size == size else im.resize(size, Image.BILINEAR) for im in ims]
            stack = np.stack([np.asarray(im, np.float64) for im in ims])
            mean = np.clip(np.rint(stack.mean(0)), 0, 255).astype(np.uint8)
            arrays.append(mean)
            keys.append("pixel-mean:" + hashlib.sha256(mean.tobytes() + str(mean.shape).encode()).hexdigest()[:32])
            out.append(None)
        made = iter(self.grids_arrays(arrays, keys)) if arrays else iter(())
        return torch.stack([o if o is not None else next(made) for o in out])

    # ------------------------------------------------------------------ pretraining
    def pretrain_key(self, source: PseudoSource) -> str:
        """Hash of everything the pretrained model depends on (not the shots, not the fine-tuning fields)."""
        from bench.cache import file_sha256, hash_memo_dir

        ctx = self.ctx
        memo = hash_memo_dir(ctx.cache_root)
        images = [file_sha256(p, memo) for p in ctx.train_paths]  # content, not names: an edited image retrains
        ident = {
            "version": PRETRAIN_VERSION,
            "class": type(self).__name__,
            "config": self.config.pretrain_identity(),
            "dataset": ctx.dataset,
            "category": ctx.category,
            "seed": ctx.seed,
            "features": ctx.features.config.key(),
            "coreset_ratio": ctx.coreset_ratio,
            "train_images": config_hash(images),
            "pseudo": source.identity(),
            "torch": torch.__version__.split("+")[0],
        }
        if "bank" in self.reads(self.config) and ctx.bank_seed is not None and ctx.bank_seed != ctx.seed:
            ident["bank_seed"] = ctx.bank_seed  # residuals against another bank (--bank-seed); as before otherwise
        return config_hash(ident)

    def load_or_pretrain(
        self, model: nn.Module, opt: torch.optim.Optimizer, train: Callable[[PseudoSource], dict[str, Any]]
    ) -> None:
        """Load the cached pretrained model and Adam state for this job's key, or pretrain and cache them."""
        from bench.paths import make_cache_root

        with self.ctx.timer("pretrain"):
            source = PseudoSource(self)
            key = self.pretrain_key(source)
            path = make_cache_root(self.ctx.cache_root) / "pretrained" / f"{key}.pt"  # context root, else the process.s
            info: dict[str, Any] | None = None
            if path.exists():
                init = {k: v.clone() for k, v in model.state_dict().items()}
                try:
                    blob = torch.load(path, map_location=self.ctx.device, weights_only=True)
                    model_state = blob["model"]
                    bad = [k for k, v in model_state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
                    if bad:  # damaged: NaN weights would score every query NaN
                        raise ValueError(f"non-finite values in {', '.join(bad[:3])}")
                    model.load_state_dict(blob["model"])
                    opt.load_state_dict(blob["optimizer"])
                    info = {**blob["info"], "from_cache": True}
                except Exception as exc:  # noqa: BLE001 - a broken cache file is rebuilt, never fatal
                    log.warning("ignoring unreadable pretrained cache %s (%s); pretraining again", path, exc)
                    model.load_state_dict(init)
            if info is None:
                t0 = time.perf_counter()
                info = train(source)
                info["seconds"] = round(time.perf_counter() - t0, 3)
                save_checkpoint(path, {"model": model.state_dict(), "optimizer": opt.state_dict(), "info": info})
                info = {**info, "from_cache": False}
        self.ctx.log["pretrain"] = {**info, "cache_key": key}


def pretrain_stop(info: dict[str, Any]) -> dict[str, Any]:
    """Where pretraining stopped, for every row of a pretrained method (issue #23: its cost is the grid's cost):
    ``pretrain_stop_episode``, the pseudo episode at which the stop rule fired (the current batch accuracy above
    ``stop_accuracy``, §7) or the last one the budget allowed, and ``pretrain_stopped_by``, ``"rule"`` or ``"cap"``
    (``max_episodes``; MAML: the whole meta-batches that fit in it). Read from the pretraining's log, which a cached
    model carries too, so a row whose model came from the cache says where that model stopped. ``None`` for both
    without pretraining."""
    if info.get("episodes") is None:
        return {"pretrain_stop_episode": None, "pretrain_stopped_by": None}
    return {"pretrain_stop_episode": int(info["episodes"]), "pretrain_stopped_by": "rule" if info.get("stopped_by_rule") else "cap"}


def save_checkpoint(path: Path, blob: dict[str, Any]) -> None:
    """``torch.save(blob)`` to ``path``, whole or not at all, serialised in memory and written by the cache's writer
    (:func:`bench.cache.atomic_write`): on a full disk torch's own file writer raised a RuntimeError ("file write
    failed") that failed each job, and it hides a Python file object's OSError the same way; the cache's writer
    gives the OS's ``ENOSPC`` naming the entry, which the run turns into its disk-full stop. Costs one copy of the
    checkpoint in memory."""
    from bench.cache import atomic_write

    buffer = io.BytesIO()
    torch.save(blob, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def describe_config(config: PaperConfig) -> dict[str, Any]:
    """The switches that matter for reading a result row (kept small)."""
    names = [f.name for f in dataclasses.fields(config) if f.name in _CHOICES or f.name == "pretrain"]
    return {n: getattr(config, n) for n in names}
