"""MAML pretraining of the contrastive classifier (paper Appendix G, Table 13; docs/method-notes.md §5.5, §10).

Liu et al., "Anomaly Multi-classification in Industrial Scenarios: Transferring Few-shot Learning to a New
Task", arXiv 2406.05645, Appendix G, with MAML as in Finn et al., "Model-Agnostic Meta-Learning for Fast
Adaptation of Deep Networks", ICML 2017. Everything but pretraining is the contrastive method
(``methods/contrastive.py``): encoder, InfoNCE loss (T = 0.07), fine-tuning (§8) and prediction.

Per outer step (:func:`maml_outer_step`):

1. draw B = ``maml_tasks`` (10) tasks; task t = a support pseudo episode S_t (10 classes, 9 groups + 9 queries)
   and a query episode Q_t of **disjoint** classes (the paper's "another batch of categories"; default) or of
   the same classes with fresh images (``maml_query_classes="same"``, classical MAML);
2. inner step(s) from the current θ: θ'_t = θ − α ∇_θ L(S_t; θ), α = ``inner_lr`` = 0.001 (SGD),
   ``inner_steps`` = 1;
3. outer step: one Adam (1e-4) step on L_meta = (1/B) Σ_t L(Q_t; θ'_t). Second order by default: the inner
   gradient is differentiated (``create_graph=True``); ``first_order=True`` (FOMAML) treats it as a constant.

Fast weights enter the forward pass functionally (``torch.func.functional_call``), so the adapted model is
really used: the reference code assigns them to a local variable under ``no_grad`` and never uses them, and
back-propagates only the last of its 10 loss slots (net effect: one plain step on one batch every 20
iterations, §11 item 14). **BatchNorm** (recorded in the log): batch statistics in both loops; the running
statistics are updated only by outer forwards (inner forwards run on scratch copies of the buffers).
**Budget**: ``max_episodes`` (paper 1000) pseudo episodes, two per task, so at most max_episodes / (2B) = 50 outer
steps; stop as soon as the mean post-adaptation query accuracy of a meta-batch exceeds ``stop_accuracy`` (0.4).
Fine-tuning afterwards is unchanged (§8), with Adam continuing from the outer optimiser's state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.func import functional_call

from bench.method import register_method
from bench.methods._pretrain import PretrainBatch, PseudoSource
from bench.methods.contrastive import Contrastive, ContrastiveConfig, contrastive_episode_loss

Encode = Callable[[torch.Tensor], torch.Tensor]
LossFn = Callable[[Encode, Any], tuple[torch.Tensor, float]]  # (encode, batch) -> (loss, accuracy)
Task = tuple[Any, Any]  # (support batch, query batch)


def adapt(
    model: nn.Module, loss_fn: LossFn, batch: Any, alpha: float, steps: int = 1, first_order: bool = False
) -> dict[str, torch.Tensor]:
    """Inner loop: θ' = θ − α ∇_θ L(batch; θ), ``steps`` times, from the model's current parameters.

    Args:
        model: the network; its parameters θ are not modified and its running statistics are not touched.
        loss_fn: (encode, batch) → (loss, accuracy), with ``encode`` the forward pass to use.
        first_order: do not build the graph of the inner gradient (FOMAML).

    Returns:
        The fast weights θ' by parameter name (differentiable w.r.t. θ: through the inner gradient unless
        ``first_order``).
    """
    fast = dict(model.named_parameters())
    scratch = {k: v.clone() for k, v in model.named_buffers()}  # inner forwards: batch stats, no running-stat update
    for _ in range(steps):
        loss, _ = loss_fn(lambda x: functional_call(model, (fast, scratch), (x,)), batch)
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order, allow_unused=True)
        fast = {k: v if g is None else v - alpha * g for (k, v), g in zip(fast.items(), grads)}
    return fast


def maml_task_loss(
    model: nn.Module, task: Task, loss_fn: LossFn, alpha: float, steps: int = 1, first_order: bool = False
) -> tuple[torch.Tensor, float]:
    """L(Q_t; θ'_t) with θ'_t adapted on S_t; an outer forward (it updates the model's running statistics)."""
    support, query = task
    fast = adapt(model, loss_fn, support, alpha, steps, first_order)
    buffers = dict(model.named_buffers())
    return loss_fn(lambda x: functional_call(model, (fast, buffers), (x,)), query)


def maml_outer_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    tasks: list[Task],
    loss_fn: LossFn,
    alpha: float,
    steps: int = 1,
    first_order: bool = False,
) -> tuple[float, float]:
    """One meta-update: Adam step on (1/B) Σ_t L(Q_t; θ'_t) (per-task backward, so one graph at a time).

    Returns:
        (meta-loss, mean post-adaptation query accuracy) of the meta-batch.
    """
    model.train()
    opt.zero_grad(set_to_none=True)
    total, accs = 0.0, []
    for task in tasks:
        loss, acc = maml_task_loss(model, task, loss_fn, alpha, steps, first_order)
        (loss / len(tasks)).backward()
        total += loss.item() / len(tasks)
        accs.append(acc)
    opt.step()
    return total, sum(accs) / len(accs)


@dataclass(frozen=True)
class MAMLConfig(ContrastiveConfig):
    maml_tasks: int = 10  # tasks per outer step (B)
    inner_lr: float = 0.001  # α, inner SGD
    inner_steps: int = 1
    first_order: bool = False  # FOMAML
    maml_query_classes: str = "disjoint"  # "disjoint" (paper) | "same" (classical MAML)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.maml_query_classes not in ("disjoint", "same"):
            raise ValueError(f"maml_query_classes must be 'disjoint' or 'same', got {self.maml_query_classes!r}")
        if self.maml_tasks < 1 or self.inner_steps < 1 or self.inner_lr < 0:
            raise ValueError("maml_tasks and inner_steps must be >= 1 and inner_lr >= 0")


@register_method("contrastive-maml", description="contrastive classifier, MAML pseudo-defect pretraining (App. G)")
class ContrastiveMAML(Contrastive):
    """The main method with second-order MAML pretraining instead of plain episodic pretraining."""

    Config = MAMLConfig
    config: MAMLConfig

    def _pretrain(self, source: PseudoSource) -> dict[str, Any]:
        cfg = self.config
        n_tasks, n_outer = cfg.maml_tasks, cfg.max_episodes // (2 * cfg.maml_tasks)
        if n_outer == 0 and cfg.max_episodes >= 2:  # a budget below one full meta-batch: one smaller meta-batch
            n_tasks, n_outer = cfg.max_episodes // 2, 1
        rng = self.ctx.rng("pretrain-sampler")

        def loss_fn(encode: Encode, batch: PretrainBatch) -> tuple[torch.Tensor, float]:
            return contrastive_episode_loss(encode, batch, cfg.temperature)

        losses: list[float] = []
        accs: list[float] = []
        stopped = False
        t_update = 0.0
        for _ in range(n_outer):
            tasks = []
            for _ in range(n_tasks):
                classes, s_batch = source.episode(rng)
                same = cfg.maml_query_classes == "same"
                only, exclude = (classes, None) if same else (None, classes)
                _, q_batch = source.episode(rng, only_classes=only, exclude_classes=exclude)
                tasks.append((s_batch, q_batch))
            t0 = time.perf_counter()
            loss, acc = maml_outer_step(
                self.model, self.opt, tasks, loss_fn, cfg.inner_lr, cfg.inner_steps, cfg.first_order
            )
            t_update += time.perf_counter() - t0
            losses.append(round(loss, 5))
            accs.append(round(acc, 4))
            if acc > cfg.stop_accuracy:
                stopped = True
                break
        n_ep = 2 * n_tasks * len(losses)
        return {
            "episodes": n_ep,
            "outer_steps": len(losses),
            "tasks_per_step": n_tasks,
            "stopped_by_rule": stopped,
            "final_batch_accuracy": accs[-1] if accs else None,
            "loss": losses,
            "batch_accuracy": accs,
            "order": "first" if cfg.first_order else "second",
            "query_classes": cfg.maml_query_classes,
            "batchnorm": "batch statistics in inner and outer forwards; running statistics updated by outer forwards",
            "seconds_per_episode_features": round(source.seconds / max(1, n_ep), 4),
            "seconds_per_outer_step": round(t_update / max(1, len(losses)), 4),
        }
