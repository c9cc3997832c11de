"""Vanilla RelationNet-style baseline on PatchCore residuals (paper Appendix B, Tables 6 and 8).

Liu et al., "Anomaly Multi-classification in Industrial Scenarios: Transferring Few-shot Learning to a New
Task", arXiv 2406.05645, §3.3 and Eq. 1 (docs/method-notes.md §5.2, §7, §8, §9), after Sung et al., "Learning to
Compare: Relation Network for Few-Shot Learning", CVPR 2018, with RelationNet's MSE replaced by a weighted BCE.

* **Relation head** (:class:`RelationHead`): concat[support grid, query grid] (B, 2D, H, W) → Conv1×1 2D→512,
  BN, ReLU → Conv1×1 512→128, BN, ReLU → flatten → Linear→128, BN1d, ReLU → Linear→1 → sigmoid; Kaiming
  weights on the convs and linears. :meth:`RelationHead.forward_pairs` scores all S×Q pairs without building
  the (S·Q, 2D, H, W) concatenation: the first 1×1 conv of a concatenation is W_s·s + W_q·q + b, so it is
  applied to the S supports and Q queries once and broadcast (identical result, a fraction of the memory).
* **Loss** (paper Eq. 1): BCE with weight C−1 on positive pairs and 1 on negatives, mean-reduced
  (:func:`weighted_bce`); computed from logits (``binary_cross_entropy_with_logits``, the same value as
  ``BCELoss(sigmoid(x))`` without its log clamp at −100).
* **Pretraining** (§7): per pseudo episode all (G·K) × Q = 810 pairs, positive weight K−1 = 9, one Adam (1e-4)
  step; stop when the K-way argmax accuracy of the batch > 0.4 (paper's "training accuracy"; the code uses the
  binary pair accuracy, which passes 0.4 almost at once since 90 % of pairs are negative:
  ``relation_stop_metric="pair"``, §11 item 6) or after ``max_episodes``. Cached per job key (shots excluded).
* **Fine-tuning** (§8): support = the first item of each class, queries = the other n−1 items of each class; all
  C × C(n−1) pairs in one batch, weighted BCE (C−1), ``finetune_steps`` (45) Adam steps; no step at 1-shot.
* **Prediction**: argmax_c relation(p_c, r_q), head in eval mode; prototype per ``prototype`` (``pixel_mean``:
  pixel-space mean of the support images, then its residual (code); ``embedding_mean``: mean of the support
  residual grids, RelationNet's class-wise feature sum up to scale).

Deviations from the reference code: explicit train/eval modes (§11 item 5), coreset residuals in pretraining
(§11 item 1, switch ``pretrain_residual``), proper (D, H, W) layout (§11 item 2, switch ``residual_layout``), a
fresh pseudo-class subset per episode (§11 item 7), K-way stop metric (§11 item 6, switch), no test-query
evaluation during pretraining (§11 item 15), shapes from the data (§11 item 17), pairs scored by broadcasting
instead of an explicit Python loop of concatenations (same values), the sigmoid folded into the loss (above),
the pixel-mean prototype rounded to uint8 before pre-processing (≤ 0.5/255 per pixel), fused Adam.

CPU cost: one 810-pair pretraining episode is the expensive part (about 10–20 s of update on 2 threads and
about 6 GB of activations at D = 1024, 28 × 28); fine-tuning is C × C(n−1) pairs per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.method import SupportSet, register_method
from bench.methods._pretrain import (
    PaperConfig,
    PaperMethod,
    PretrainBatch,
    PseudoSource,
    make_adam,
    pretrain_loop,
)


class _PairSum(torch.autograd.Function):
    """z[s·Q + q] = a[s] + b[q] for channels-last (S, C, H, W) and (Q, C, H, W): all pairs, support-major.

    Same values and gradients as ``(a[:, None] + b[None]).flatten(0, 1)``; the reductions of the backward pass
    run on a flat (S, Q, H·W·C) view, about 10× faster on CPU than autograd's broadcast reduction over
    channels-last 5-D strides.
    """

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # noqa: D102
        (s, c, h, w), q = a.shape, len(b)
        ctx.dims = (s, q, c, h, w)
        z = a.permute(0, 2, 3, 1).reshape(s, 1, -1) + b.permute(0, 2, 3, 1).reshape(1, q, -1)  # (S, Q, H·W·C)
        return z.view(s * q, h, w, c).permute(0, 3, 1, 2)  # (S·Q, C, H, W), channels-last strides

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        s, q, c, h, w = ctx.dims
        g = grad.permute(0, 2, 3, 1).reshape(s, q, -1)
        return g.sum(1).view(s, h, w, c).permute(0, 3, 1, 2), g.sum(0).view(q, h, w, c).permute(0, 3, 1, 2)


class RelationHead(nn.Module):
    """Relation module over concatenated (support, query) grids (Sung et al. 2018; docs/method-notes.md §5.2).

    Args:
        in_dim, height, width: the grid shape (D, H, W) of ONE image (the input has 2D channels).
        hidden, mid, fc_dim: widths (paper 512, 128, 128).
    """

    def __init__(
        self, in_dim: int, height: int, width: int, hidden: int = 512, mid: int = 128, fc_dim: int = 128
    ) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.conv1 = nn.Conv2d(2 * in_dim, hidden, 1)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, mid, 1)
        self.bn2 = nn.BatchNorm2d(mid)
        self.fc1 = nn.Linear(mid * height * width, fc_dim)
        self.bn3 = nn.BatchNorm1d(fc_dim)
        self.fc2 = nn.Linear(fc_dim, 1)
        for m in (self.conv1, self.conv2, self.fc1, self.fc2):
            nn.init.kaiming_normal_(m.weight)  # biases keep their default init

    def _tail(self, z: torch.Tensor) -> torch.Tensor:
        """(B, hidden, H, W) first-conv output → (B,) relation logits."""
        z = F.relu(self.bn1(z), inplace=True)  # in place: saves large allocations, autograd-safe after BN
        z = F.relu(self.bn2(self.conv2(z)), inplace=True)
        z = F.relu(self.bn3(self.fc1(z.flatten(1))), inplace=True)
        return self.fc2(z).squeeze(1)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        """(B, 2D, H, W) concat[support, query] → (B,) logits; ``torch.sigmoid`` gives the relation score."""
        return self._tail(self.conv1(pairs))

    def forward_pairs(self, support: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """All pairs: support (S, D, H, W) × query (Q, D, H, W) → (S, Q) logits, = forward(concat) pairwise."""
        d = self.in_dim
        a = F.conv2d(support, self.conv1.weight[:, :d], self.conv1.bias)  # (S, hidden, H, W)
        b = F.conv2d(query, self.conv1.weight[:, d:])  # (Q, hidden, H, W)
        z = _PairSum.apply(a, b)  # (S·Q, hidden, H, W), support-major
        return self._tail(z).view(len(support), len(query))


def weighted_bce(logits: torch.Tensor, target: torch.Tensor, pos_weight: float) -> torch.Tensor:
    """Paper Eq. 1: mean over pairs of w·BCE(sigmoid(logit), y), w = ``pos_weight`` (C−1) if y = 1 else 1."""
    w = torch.where(target > 0.5, torch.full_like(target, float(pos_weight)), torch.ones_like(target))
    return F.binary_cross_entropy_with_logits(logits, target, weight=w)


def relation_episode_loss(head: RelationHead, batch: PretrainBatch, metric: str = "way") -> tuple[torch.Tensor, float]:
    """Weighted BCE over all (G·K) × Q pairs of a pseudo episode and the batch accuracy.

    Returns:
        (loss, accuracy): ``metric="way"``: fraction of the G·Q (group, query) rows whose argmax over the K classes
        is the label (paper); ``"pair"``: binary accuracy of (score > 0.5) over all pairs (code, §11 item 6).
    """
    g, k = batch.keys.shape[:2]
    logits = head.forward_pairs(batch.keys.flatten(0, 1), batch.queries).view(g, k, -1)  # (G, K, Q)
    cls = torch.arange(k, device=logits.device)
    target = (cls.view(1, k, 1) == batch.labels.view(1, 1, -1)).float().expand_as(logits)
    loss = weighted_bce(logits, target, k - 1)
    if metric == "way":
        acc = (logits.argmax(1) == batch.labels.view(1, -1)).float().mean()
    else:
        acc = ((logits > 0) == (target > 0.5)).float().mean()
    return loss, float(acc)


def finetune_relation(head: RelationHead, opt: torch.optim.Optimizer, support: torch.Tensor, steps: int) -> list[float]:
    """Fine-tuning (§8): first item per class vs the other n−1 items of every class, full batch, ``steps`` steps.

    Args:
        support: (C, n, D, H, W) support grids, class-major.

    Returns:
        The loss of every step (empty at n = 1: there are no query items).
    """
    c, n = support.shape[:2]
    if n < 2 or steps <= 0:
        return []
    s, q = support[:, 0], support[:, 1:].flatten(0, 1)  # (C, ...), (C·(n−1), ...)
    q_labels = torch.arange(c, device=support.device).repeat_interleave(n - 1)
    target = (torch.arange(c, device=support.device).view(-1, 1) == q_labels.view(1, -1)).float()  # (C, C(n−1))
    head.train()
    losses = []
    for _ in range(steps):
        loss = weighted_bce(head.forward_pairs(s, q), target, c - 1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@dataclass(frozen=True)
class RelationConfig(PaperConfig):
    pretrain: bool = False  # the plain ``relationnet`` variant; see the registered variants
    relation_stop_metric: str = "way"  # "way" (paper: C-way argmax accuracy) | "pair" (code, §11 item 6)
    finetune_steps: int = 45

    FINETUNE_FIELDS = ("prototype", "query_chunk", "finetune_steps")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.relation_stop_metric not in ("way", "pair"):
            raise ValueError(f"relation_stop_metric must be 'way' or 'pair', got {self.relation_stop_metric!r}")
        if self.finetune_steps < 0:
            raise ValueError(f"finetune_steps must be >= 0, got {self.finetune_steps}")


@register_method("relationnet", description="RelationNet-style baseline on residuals, no pretraining (Sung et al.)")
@register_method(
    "relationnet-raw", overrides={"features": "raw"}, description="RelationNet-style baseline on raw features"
)
@register_method(
    "relationnet-residual-pretrain",
    overrides={"pretrain": True},
    description="vanilla RelationNet + residual + pseudo-defect pretraining (paper Table 8)",
)
@register_method(
    "relationnet-raw-pretrain",
    overrides={"features": "raw", "pretrain": True},
    description="RelationNet + pretraining on raw features",
)
class RelationNet(PaperMethod):
    """RelationNet-style pairwise classifier with weighted BCE; argmax of the relation score over the classes."""

    Config = RelationConfig
    config: RelationConfig

    def _pretrain(self, source: PseudoSource) -> dict[str, Any]:
        metric = self.config.relation_stop_metric
        info = pretrain_loop(self, self.head, self.opt, lambda b: relation_episode_loss(self.head, b, metric), source)
        return {**info, "stop_metric": metric}

    def fit(self, support: SupportSet) -> None:
        cfg = self.config
        sup = self.support_grids(support)  # (C, n, D, H, W)
        self.ctx.seed_torch("relationnet-init")  # independent of the shots: the pretrained model is shared
        self.head = RelationHead(*sup.shape[2:]).to(self.ctx.device)
        self.opt = make_adam(self.head.parameters(), cfg.lr)
        if cfg.pretrain:
            self.load_or_pretrain(self.head, self.opt, self._pretrain)
        with self.ctx.timer("finetune"):
            losses = finetune_relation(self.head, self.opt, sup, cfg.finetune_steps)
        self.ctx.log["finetune"] = {
            "steps": len(losses),
            "loss_per_step": [round(v, 5) for v in losses],
            "note": "" if losses else "no fine-tuning step (1-shot: no query items): the (pre)trained head as is",
        }
        self.head.eval()
        with torch.no_grad():
            self.prototypes = self.pixel_mean_grids(support) if cfg.prototype == "pixel_mean" else sup.mean(1)

    @torch.no_grad()
    def predict(self, query_paths: Sequence[str]) -> np.ndarray:
        self.head.eval()
        out = []
        for i in range(0, len(query_paths), self.config.query_chunk):
            q = self.grids(query_paths[i : i + self.config.query_chunk])
            out.append(torch.sigmoid(self.head.forward_pairs(self.prototypes, q)).T.cpu())  # (Qc, C)
        return torch.cat(out).numpy()
