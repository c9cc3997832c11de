"""Direct classification: fine-tune an ImageNet ResNet-50 on the support images (paper Appendix D, Table 10).

Liu et al., "Anomaly Multi-classification in Industrial Scenarios: Transferring Few-shot Learning to a New
Task", arXiv 2406.05645, Appendix D. The classifier head of the backbone is replaced by ``Linear(2048, C)``
(default init) and trained with cross-entropy, Adam (lr 1e-5), 100 epochs, batch 1 (each epoch visits every
support image once, in a seeded random order); prediction = argmax over the C classes.

Deviations from the reference code (docs/method-notes.md §11 item 4), each with a switch:

* ``scope="head"`` (default, the paper's text): only the new head is trained; the backbone stays frozen in
  eval mode. Because the frozen backbone is deterministic and there is no augmentation, its pooled features
  are computed once per image (and cached on disk, so every later job and process reads them) and the head is
  trained on them: mathematically the same as running the whole network at every step, hundreds of times cheaper. ``scope="all"`` trains every parameter (the code).
* ``test_bn="eval"`` (default): prediction in eval mode. ``test_bn="batch"`` reproduces the code, which
  never calls ``eval()``: test-time BatchNorm uses the statistics of each chunk of 10 queries (transductive).

Input: the normalised 224×224 images (Resize 256, CenterCrop 224), from the backbone/weights of the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from bench.features.backbones import create_backbone
from bench.features.extractor import FeatureConfig
from bench.errors import ConfigError
from bench.method import Method, SupportSet, register_method

_POOLED_CACHE: dict[tuple[str, str], np.ndarray] = {}  # (backbone identity, image path) -> (F,) pooled features


@dataclass(frozen=True)
class DirectConfig:
    scope: str = "head"  # "head" (paper) | "all" (reference code)
    epochs: int = 100
    lr: float = 1e-5
    test_bn: str = "eval"  # "eval" | "batch" (reference code, transductive)
    query_chunk: int = 10

    def __post_init__(self) -> None:
        if self.scope not in ("head", "all"):
            raise ValueError(f"scope must be 'head' or 'all', got {self.scope!r}")
        if self.test_bn not in ("eval", "batch"):
            raise ValueError(f"test_bn must be 'eval' or 'batch', got {self.test_bn!r}")


@register_method("direct", description="fine-tune the backbone's classifier head on the support images (paper App. D)")
@register_method(
    "direct-all",
    overrides={"scope": "all", "test_bn": "batch"},
    description="direct, reference-code variant: train the whole network, transductive test-time BN",
)
class Direct(Method):
    """Direct ResNet fine-tuning baseline."""

    Config = DirectConfig

    @classmethod
    def reads(cls, config: Any) -> set[str]:
        return set()  # its own pooled backbone features, not the PatchCore pipeline

    @property
    def _features(self) -> FeatureConfig:
        """The run's feature configuration, handed down (docs/architecture.md): its backbone, weights and
        preprocessing, without the PatchCore feature store."""
        if self.ctx.feature_config is None:
            raise ConfigError("'direct' needs the run's feature configuration (TaskContext.feature_config)")
        return self.ctx.feature_config

    def _images(self, paths: Sequence[str]) -> torch.Tensor:
        pre = self._features.preprocess()  # the backbone's own normalisation
        return torch.from_numpy(np.stack([pre(p) for p in paths]))

    def _build(self, n_classes: int) -> nn.Module:
        fc = self._features
        self.ctx.seed_torch("direct-init")
        model, _ = create_backbone(fc.backbone, fc.weights, fc.zero_init_last, num_classes=n_classes)
        return model.to(self.ctx.device)

    def _pooled(self, model: nn.Module, paths: Sequence[str]) -> torch.Tensor:
        """(N, F) globally pooled backbone features of the frozen, eval-mode backbone, cached per image in this
        process and on disk (``features/<feature key>-direct-pooled[-seed<S>]/<content hash>.npy``, F floats): every
        job of a category reads the same images' features, in any process (a worker, a resumed run), and computing
        them was 80 % of a warm job (issue #23). What is read back is what the network gave, bit for bit."""
        from bench.cache import DiskCache, file_sha256, hash_memo_dir, load_npy, save_npy

        fc = self._features
        # With random weights the backbone itself depends on the run seed (it is built after seed_torch), so
        # the seed is part of the identity; pretrained backbones are the same for every seed.
        key = fc.key() + (f"-seed{self.ctx.seed}" if fc.weights == "random" else "")
        disk = DiskCache(self.ctx.cache_root)
        memo = hash_memo_dir(disk.root)
        counts = self.ctx.log.setdefault("pooled", {"memory": 0, "disk": 0, "computed": 0})
        todo = []
        for p in dict.fromkeys(paths):
            if (key, p) in _POOLED_CACHE:
                counts["memory"] += 1
                continue
            path = disk.path("features", f"{key}-direct-pooled", file_sha256(p, memo))
            a = load_npy(path, dtype=np.float32)
            if a is not None and a.ndim == 1:
                _POOLED_CACHE[(key, p)] = a
                counts["disk"] += 1
            else:
                todo.append((p, path))
        counts["computed"] += len(todo)
        model.eval()
        with torch.no_grad():
            for i in range(0, len(todo), 16):
                chunk = todo[i : i + 16]
                x = self._images([p for p, _ in chunk]).to(self.ctx.device)
                feats = model.forward_head(model.forward_features(x), pre_logits=True)
                for (p, path), f in zip(chunk, feats.float().cpu().numpy()):
                    _POOLED_CACHE[(key, p)] = f
                    save_npy(path, f)
        return torch.from_numpy(np.stack([_POOLED_CACHE[(key, p)] for p in paths]))

    def fit(self, support: SupportSet) -> None:
        cfg = self.config
        self.model = self._build(support.n_classes)
        head = self.model.get_classifier()
        if not isinstance(head, nn.Linear):
            raise ConfigError(f"backbone {self._features.backbone} has no linear classifier head for 'direct'")
        y = torch.tensor(support.labels)
        if cfg.scope == "head":
            with self.ctx.timer("features"):
                x = self._pooled(self.model, support.paths).to(self.ctx.device)
            params = list(head.parameters())
            forward = head
        else:
            x = self._images(support.paths).to(self.ctx.device)
            params = list(self.model.parameters())
            forward = self.model
            self.model.train()
        opt = torch.optim.Adam(params, lr=cfg.lr)
        gen = self.ctx.torch_generator("direct-batches")
        losses = []
        for _ in range(cfg.epochs):
            epoch_loss = 0.0
            for i in torch.randperm(len(y), generator=gen).tolist():
                opt.zero_grad()
                loss = nn.functional.cross_entropy(forward(x[i : i + 1]), y[i : i + 1].to(self.ctx.device))
                loss.backward()
                opt.step()
                epoch_loss += loss.item()
            losses.append(epoch_loss / len(y))
        self.ctx.log["loss_per_epoch"] = [round(v, 5) for v in losses]

    @torch.no_grad()
    def predict(self, query_paths: Sequence[str]) -> np.ndarray:
        cfg = self.config
        if cfg.scope == "head":
            x = self._pooled(self.model, query_paths).to(self.ctx.device)
            return self.model.get_classifier()(x).cpu().numpy()
        self.model.train(cfg.test_bn == "batch")
        out = []
        for i in range(0, len(query_paths), cfg.query_chunk):
            out.append(self.model(self._images(query_paths[i : i + cfg.query_chunk]).to(self.ctx.device)).cpu())
        return torch.cat(out).numpy()
