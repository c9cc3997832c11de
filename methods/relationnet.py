"""Vanilla RelationNet-style baseline on PatchCore residuals (paper Appendix B, Tables 6 and 8).

Liu et al., "Anomaly Multi-classification in Industrial Scenarios: Transferring Few-shot Learning to a New
Task", arXiv 2406.05645, §3.3 and Eq. 1 (docs/method-notes.md §5.2, §7, §8, §9), after Sung et al., "Learning to
Compare: Relation Network for Few-Shot Learning", CVPR 2018, with RelationNet's MSE replaced by a weighted BCE.

* **Relation head** (:class:`RelationHead`): concat[support grid, query grid] (B, 2D, H, W) → Conv1×1 2D→512,
  BN, ReLU → Conv1×1 512→128, BN, ReLU → flatten → Linear→128, BN1d, ReLU → Linear→1 → sigmoid; Kaiming
  weights on the convs and linears. :meth:`RelationHead.forward_pairs` scores all S×Q pairs without building
  the (S·Q, 2D, H, W) concatenation: the first 1×1 conv of a concatenation is W_s·s + W_q·q + b, so it is
  applied to the S supports and Q queries once; the pairs' sums, their BatchNorm and ReLU exist one chunk of
  supports at a time up to the second conv (:class:`_PairBlock`; same values and gradients up to rounding).
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

CPU cost: one 810-pair pretraining episode is the expensive part. ``python -m bench perf relation`` on a quiet 2-core
machine (2026-12-07), peak resident memory of the whole process (interpreter, torch, model, Adam state and inputs
included) with :class:`_PairBlock` against every (810, 512, 28, 28) activation kept by autograd (the harness
before): Lite0's D = 152, 1 thread: 10.8 s and 1.69 GiB against 13.0 s and 5.85 GiB; 2 threads: 5.0 s and 1.74 GiB
against 7.1 s and 5.86 GiB; D = 1024 (ResNet-50), 2 threads: 5.8 s and 1.91 GiB against 7.5 s and 6.03 GiB; the losses
agree to 1e-5. Fine-tuning is C × C(n−1) pairs per step.
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


PAIR_CHUNK_BYTES = 32 * 2**20  # one chunk of (pairs, H·W, hidden) float32 activations in forward_pairs


class _PairBlock(torch.autograd.Function):
    """fc1(relu(BN2(conv2(relu(BN1(a[s] + b[q])))))) for all S × Q pairs, support-major, a chunk of supports at a time.

    The part of the relation head where the pairs are born: the first 1×1 conv of the concatenation split into its
    support and query halves (``a``, ``b``: ``a`` carries the conv's bias), the first BatchNorm (μ, ρ = 1/√(var + ε),
    γ, β), ReLU, the second 1×1 conv (``w2``, ``b2``), the second BatchNorm (μ2, ρ2, γ2, β2), ReLU and the first
    linear layer (``w3``, ``b3``) of the flattened (mid, H, W) grid. Kept for the backward pass: the halves and the
    second conv's (S·Q, mid, H, W) output ``u`` (its normalised, rectified copy is remade a chunk at a time, and the
    linear layer's input gradient too). The (S·Q, hidden, H, W) activations (hidden = 512: 1.3 GB each for a pseudo
    episode's 810 pairs of 28 × 28 grids, six of them alive in autograd's version) exist one chunk at a time and are
    recomputed from ``a`` and ``b`` in backward (elementwise work: the second conv's matrix products are done once
    forward and twice backward, as autograd does them). Same values and gradients as the modules applied to the
    explicit concatenation, up to float rounding (tested).

    With ``batch_stats`` (training) both BatchNorms normalise with batch statistics. The first's come from
    :func:`pair_batch_stats` (computed without a graph) and their gradients are folded into those of ``a`` and ``b``
    in closed form: ∂μ/∂a[s] = 1/(S·H·W) and ∂var/∂a[s] = 2·(a'[s] + E_q b')/(S·H·W) with centred halves a', b' (the
    terms through μ cancel, Σ (z − μ) = 0); symmetrically for b. The second's are computed here from ``u`` and
    returned (for the running statistics), with BatchNorm's usual backward. Otherwise (evaluation) the running
    statistics are passed in.

    Shapes: a (S, C, H, W), b (Q, C, H, W) channels-last; μ, ρ, γ, β (C,); w2 (M, C, 1, 1); b2, γ2, β2 (M,); μ2, var2
    (M,) or None with ``batch_stats``; w3 (F, M·H·W), b3 (F,); returns (S·Q, F) and the second BatchNorm's batch
    mean and biased variance (M,) (the running ones as given in evaluation).
    """

    @staticmethod
    def forward(ctx: Any, a, b, mu, rstd, gamma, beta, w2, b2, gamma2, beta2, mu2, var2, w3, b3, eps2: float,
                chunk: int, batch_stats: bool):  # noqa: D102  # fmt: skip
        (s, c, h, w), q, m = a.shape, len(b), w2.shape[0]
        af, bf = _rows(a), _rows(b)  # (S, H·W, C), (Q, H·W, C)
        scale = rstd * gamma
        shift = beta - mu * scale
        weight = w2.reshape(m, c)
        u = a.new_empty(s, q, h * w, m)
        for i in range(0, s, chunk):
            y = (af[i : i + chunk, None] + bf[None]).mul_(scale).add_(shift).relu_()  # (cs, Q, H·W, C)
            torch.addmm(b2, y.view(-1, c), weight.t(), out=u[i : i + chunk].view(-1, m))
        if batch_stats:
            var2, mu2 = torch.var_mean(u.view(-1, m), dim=0, unbiased=False)
        rstd2 = torch.rsqrt(var2 + eps2)
        out = u.new_empty(s * q, w3.shape[0])
        for i in range(0, s, chunk):
            v = _second_norm_relu(u[i : i + chunk], mu2, rstd2, gamma2, beta2)  # (cs·Q, M·H·W), channel-major
            torch.addmm(b3, v, w3.t(), out=out[i * q : (i + chunk) * q])
        ctx.save_for_backward(a, b, mu, rstd, gamma, beta, w2, u, mu2, rstd2, gamma2, beta2, w3)
        ctx.chunk, ctx.batch_stats = chunk, batch_stats
        ctx.mark_non_differentiable(mu2, var2)
        return out, mu2, var2

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, _mu2: Any, _var2: Any):  # noqa: D102
        a, b, mu, rstd, gamma, beta, w2, u, mu2, rstd2, gamma2, beta2, w3 = ctx.saved_tensors
        (s, c, h, w), q, m = a.shape, len(b), w2.shape[0]
        af, bf = _rows(a), _rows(b)
        cs = ctx.chunk
        g_w3, g_b3 = torch.zeros_like(w3), grad.sum(0)

        def second_norm(i: int, first: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
            """Chunk i's normalised u and the gradient at the second BatchNorm's output (the ReLU's mask applied),
            both (cs, Q, H·W, M); on the first pass also the linear layer's weight gradient."""
            uc = u[i : i + cs]
            xhat = (uc - mu2).mul_(rstd2)
            pre = torch.addcmul(beta2, xhat, gamma2)
            gc = grad[i * q : (i + cs) * q]
            if first:
                g_w3.addmm_(gc.t(), pre.relu().transpose(2, 3).reshape(len(gc), -1))
            gv = (gc @ w3).view(uc.shape[0], q, m, h * w).transpose(2, 3)  # (cs, Q, H·W, M)
            return xhat, gv * (pre > 0)

        g_beta2, g_gamma2 = torch.zeros_like(mu2), torch.zeros_like(mu2)
        for i in range(0, s, cs):
            xhat, gv = second_norm(i, first=True)
            g_beta2 += gv.sum((0, 1, 2))
            g_gamma2 += (gv * xhat).sum((0, 1, 2))
        n2 = s * q * h * w
        scale = rstd * gamma
        weight = w2.reshape(m, c)
        ga, gb = torch.empty_like(af), torch.zeros_like(bf)
        g_w2, g_b2 = torch.zeros_like(weight), torch.zeros_like(mu2)
        g_shift, g_centred, g_mu = (torch.zeros_like(mu) for _ in range(3))
        for i in range(0, s, cs):
            xhat, gv = second_norm(i)
            if ctx.batch_stats:  # BatchNorm's backward through its batch statistics
                gv.sub_(g_beta2 / n2).sub_(xhat.mul_(g_gamma2 / n2))
            gc = gv.mul_(rstd2 * gamma2).reshape(-1, m)  # gradient at u (a copy when the grad came channel-major)
            g_b2 += gc.sum(0)
            d = (af[i : i + cs, None] + bf[None]).sub_(mu)  # z − μ, (cs, Q, H·W, C)
            y = torch.addcmul(beta, d, scale)
            keep = y > 0
            y.relu_()
            g_w2.addmm_(gc.t(), y.view(-1, c))
            gy = (gc @ weight).view(d.shape).mul_(keep)  # gradient at the first BatchNorm's output
            g_shift += gy.sum((0, 1, 2))
            g_centred += torch.mul(gy, d, out=y).sum((0, 1, 2))  # Σ grad · (z − μ), for γ and ρ
            gz = gy.mul_(scale)
            g_mu -= gz.sum((0, 1, 2))
            ga[i : i + cs] = gz.sum(1)
            gb += gz.sum(0)
        g_rstd = g_centred * gamma
        if ctx.batch_stats:  # through μ and var = ρ^-2 − ε into the halves (closed form, see the class)
            g_var = g_rstd * rstd.pow(3) * -0.5
            ma, mb = af.mean((0, 1)), bf.mean((0, 1))  # (C,)
            a_bar, b_bar = af.mean(0) - ma, bf.mean(0) - mb  # (H·W, C): E_s a', E_q b'
            for gx, x, m_x, other_bar in ((ga, af, ma, b_bar), (gb, bf, mb, a_bar)):
                n = x.shape[0] * h * w
                gx += g_mu / n
                gx += (x - m_x + other_bar).mul_(g_var * (2 / n))
            g_mu = g_rstd = None
        back = lambda t, n: t.view(n, h, w, c).permute(0, 3, 1, 2)  # noqa: E731
        return (back(ga, s), back(gb, q), g_mu, g_rstd, g_centred * rstd, g_shift, g_w2.view_as(w2), g_b2,
                g_gamma2, g_beta2, None, None, g_w3, g_b3, None, None, None)  # fmt: skip


def _second_norm_relu(u: torch.Tensor, mu2: torch.Tensor, rstd2: torch.Tensor, gamma2: torch.Tensor,
                      beta2: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """relu(BN2(u)) of a chunk (cs, Q, H·W, M), flattened channel-major to (cs·Q, M·H·W) as the head's linear layer
    reads it."""
    v = torch.addcmul(beta2 - mu2 * rstd2 * gamma2, u, rstd2 * gamma2).relu_()
    return v.transpose(2, 3).reshape(u.shape[0] * u.shape[1], -1)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) → (N, H·W, C): a view for channels-last input (a copy otherwise)."""
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n, h * w, c)


def pair_batch_stats(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (biased) variance per channel of z[s, q] = a[s] + b[q] over all pairs and positions, without z.

    With centred halves a' = a − E a and b' = b − E b: E z = E a + E b and
    Var z = E a'² + E b'² + 2·E_hw(E_s a' · E_q b') (exact; the cross term is the positional correlation of the two
    halves' means).
    """
    var_a, ma = torch.var_mean(a, dim=(0, 2, 3), unbiased=False)
    var_b, mb = torch.var_mean(b, dim=(0, 2, 3), unbiased=False)
    cross = ((a.mean(0) - ma.view(-1, 1, 1)) * (b.mean(0) - mb.view(-1, 1, 1))).mean((1, 2))
    return ma + mb, var_a + var_b + 2 * cross


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

    def _tail(self, u: torch.Tensor) -> torch.Tensor:
        """(B, mid, H, W) second-conv output (before its BatchNorm) → (B,) relation logits."""
        v = F.relu(self.bn2(u), inplace=True)  # in place: saves large allocations, autograd-safe after BN
        return self._fc(self.fc1(v.flatten(1)))

    def _fc(self, y: torch.Tensor) -> torch.Tensor:
        """(B, fc_dim) first linear layer's output → (B,) relation logits."""
        return self.fc2(F.relu(self.bn3(y), inplace=True)).squeeze(1)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        """(B, 2D, H, W) concat[support, query] → (B,) logits; ``torch.sigmoid`` gives the relation score."""
        return self._tail(self.conv2(F.relu(self.bn1(self.conv1(pairs)))))

    def forward_pairs(self, support: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """All pairs: support (S, D, H, W) × query (Q, D, H, W) → (S, Q) logits, = forward(concat) pairwise.

        Without the (S·Q, 2D, H, W) concatenation, the (S·Q, hidden, H, W) activations and the second BatchNorm's
        output (see :class:`_PairBlock`). In training mode the first two BatchNorms' running statistics are updated
        as ``nn.BatchNorm2d`` does (momentum, unbiased variance).
        """
        d, bn1, bn2 = self.in_dim, self.bn1, self.bn2
        a = F.conv2d(support, self.conv1.weight[:, :d], self.conv1.bias)  # (S, hidden, H, W)
        b = F.conv2d(query, self.conv1.weight[:, d:])  # (Q, hidden, H, W)
        a, b = (t.contiguous(memory_format=torch.channels_last) for t in (a, b))
        batch_stats = self.training or not bn1.track_running_stats
        if batch_stats:
            with torch.no_grad():  # their gradients are folded in by _PairBlock
                mu, var = pair_batch_stats(a, b)
            mu2 = var2 = None
        else:
            mu, var, mu2, var2 = bn1.running_mean, bn1.running_var, bn2.running_mean, bn2.running_var
        per_support = len(b) * a.shape[1] * a.shape[2] * a.shape[3] * a.element_size()
        chunk = max(1, PAIR_CHUNK_BYTES // max(1, per_support))
        y1, mean2, var2 = _PairBlock.apply(
            a, b, mu, torch.rsqrt(var + bn1.eps), bn1.weight, bn1.bias, self.conv2.weight, self.conv2.bias,
            bn2.weight, bn2.bias, mu2, var2, self.fc1.weight, self.fc1.bias, bn2.eps, chunk, batch_stats,
        )  # fmt: skip
        if self.training and bn1.track_running_stats:
            n = len(a) * len(b) * a.shape[2] * a.shape[3]
            _update_running_stats(bn1, mu, var, n)
            _update_running_stats(bn2, mean2, var2, n)
        return self._fc(y1).view(len(support), len(query))


@torch.no_grad()
def _update_running_stats(bn: nn.modules.batchnorm._BatchNorm, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
    """``nn.BatchNorm2d``'s running-statistics update for a batch of ``n`` values per channel (biased ``var``)."""
    bn.num_batches_tracked += 1
    momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
    bn.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
    bn.running_var.mul_(1 - momentum).add_(var * (n / max(1, n - 1)), alpha=momentum)


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

    def _build(self, grid_shape: Sequence[int]) -> None:
        self.ctx.seed_torch("relationnet-init")  # independent of the shots: the pretrained model is shared
        self.head = RelationHead(*grid_shape).to(self.ctx.device)
        self.opt = make_adam(self.head.parameters(), self.config.lr)

    def pretrained_module(self) -> nn.Module:
        return self.head

    def fit(self, support: SupportSet) -> None:
        cfg = self.config
        sup = self.support_grids(support)  # (C, n, D, H, W)
        self.start_model(sup.shape[2:])
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
