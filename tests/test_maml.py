"""MAML pretraining of the contrastive classifier (docs/method-notes.md §10): the three required checks and the budget."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from bench.method import TaskContext, get_method
from bench.methods._pretrain import PretrainBatch, make_adam
from bench.methods.contrastive import ContrastiveEncoder, contrastive_episode_loss
from bench.methods.maml import adapt, maml_outer_step, maml_task_loss

D, H, W = 5, 2, 2


def _enc(dtype: torch.dtype = torch.float32) -> ContrastiveEncoder:
    torch.manual_seed(0)
    return ContrastiveEncoder(D, H, W, hidden=6, mid=3, embed_dim=4).to(dtype)


def _batch(seed: int, dtype: torch.dtype = torch.float32, k: int = 3) -> PretrainBatch:
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(2, k, D, H, W, generator=g, dtype=dtype)
    queries = torch.randn(4, D, H, W, generator=g, dtype=dtype)
    return PretrainBatch(keys, queries, torch.randint(0, k, (4,), generator=g))


def _contrastive(encode: Any, batch: PretrainBatch) -> tuple[torch.Tensor, float]:
    return contrastive_episode_loss(encode, batch, 0.07)


def test_adapted_forward_differs_from_unadapted() -> None:
    """Regression test for the reference bug: its fast weights were computed but never used in a forward."""
    model = _enc()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = adapt(model, _contrastive, _batch(1), alpha=0.01)
    x = _batch(2).queries
    model.train()
    adapted = functional_call(model, (fast, {k: v.clone() for k, v in model.named_buffers()}), (x,))
    plain = model(x)
    assert not torch.allclose(adapted, plain, atol=1e-6)
    # the inner loop changes neither θ nor the running statistics (only outer forwards update those)
    for k, v in before.items():
        if k.startswith(("conv", "fc", "bn")) and "running" not in k and "num_batches" not in k:
            assert torch.equal(model.state_dict()[k], v), k
    fresh = _enc()
    adapt(fresh, _contrastive, _batch(1), alpha=0.01)
    assert torch.equal(fresh.bn1.running_mean, torch.zeros_like(fresh.bn1.running_mean))
    assert int(fresh.bn1.num_batches_tracked) == 0


def test_alpha_zero_outer_step_equals_plain_step_on_mean_query_loss() -> None:
    """With α = 0 the outer step is the plain step on the mean query loss (an identity, so checked in float64).

    In float32 the two computations differ by round-off, and Adam amplifies it where the true gradient is zero:
    the conv biases feed BatchNorm, their gradient is ~1e-8 of noise, comparable to Adam's eps, so each step moves
    them by a sizeable fraction of the learning rate in a direction set by the noise (0.8e-3 apart after two
    steps on one machine, below 1e-6 on another).
    """
    dt = torch.float64
    tasks = [(_batch(10 + t, dt), _batch(20 + t, dt)) for t in range(3)]
    a, b = _enc(dt), _enc(dt)
    opt_a, opt_b = make_adam(a.parameters(), 1e-2), make_adam(b.parameters(), 1e-2)
    for _ in range(2):
        maml_outer_step(a, opt_a, tasks, _contrastive, alpha=0.0)
        b.train()
        opt_b.zero_grad()
        loss = sum(_contrastive(b, q)[0] for _, q in tasks) / len(tasks)
        loss.backward()
        opt_b.step()
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, atol=1e-6, rtol=1e-5, msg=k)


def _smooth_loss(encode: Any, batch: PretrainBatch) -> tuple[torch.Tensor, float]:
    """A loss with no detached branch, so finite differences see the same function autograd differentiates."""
    z = encode(torch.cat([batch.keys.flatten(0, 1), batch.queries]))
    logits = z @ torch.linspace(-1, 1, z.shape[1] * 3, dtype=z.dtype).view(z.shape[1], 3)
    return F.cross_entropy(logits, torch.arange(len(z)) % 3), 0.0


def test_second_order_gradient_matches_finite_differences() -> None:
    model = _enc(torch.float64)
    task = (_batch(3, torch.float64), _batch(4, torch.float64))
    alpha, eps = 0.5, 1e-6
    params = list(model.parameters())
    so = torch.autograd.grad(maml_task_loss(model, task, _smooth_loss, alpha)[0], params)
    fo = torch.autograd.grad(maml_task_loss(model, task, _smooth_loss, alpha, first_order=True)[0], params)
    gen = torch.Generator().manual_seed(0)
    errs_so, errs_fo = [], []
    for _ in range(4):
        v = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
        vals = []
        for sign in (1, -1):
            with torch.no_grad():
                for p, d in zip(params, v):
                    p.add_(sign * eps * d)
            vals.append(maml_task_loss(model, task, _smooth_loss, alpha)[0].item())
            with torch.no_grad():
                for p, d in zip(params, v):
                    p.sub_(sign * eps * d)
        fd = (vals[0] - vals[1]) / (2 * eps)
        errs_so.append(abs(fd - sum((g * d).sum() for g, d in zip(so, v)).item()) / max(1.0, abs(fd)))
        errs_fo.append(abs(fd - sum((g * d).sum() for g, d in zip(fo, v)).item()) / max(1.0, abs(fd)))
    assert max(errs_so) < 1e-5, errs_so
    assert max(errs_fo) > 1e-3, errs_fo  # the second-order term matters here, so the test can tell them apart


class _FakeSource:
    """Stands in for PseudoSource: random episodes, records the class restrictions asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, Any]] = []
        self.seconds = 0.0
        self.n = 0

    def episode(
        self, rng: np.random.Generator, only_classes: Any = None, exclude_classes: Any = None
    ) -> tuple[list[int], PretrainBatch]:
        self.calls.append((only_classes, exclude_classes))
        self.n += 1
        return [self.n * 10 + i for i in range(4)], _batch(self.n, k=4)


@pytest.mark.parametrize("max_episodes, tasks, outer, per_step", [(20, 5, 2, 5), (6, 5, 1, 3)])
def test_budget_query_classes_and_log(max_episodes: int, tasks: int, outer: int, per_step: int) -> None:
    spec = get_method("contrastive-maml")
    for mode in ("disjoint", "same"):
        opts = {"max_episodes": max_episodes, "maml_tasks": tasks, "stop_accuracy": 1.1, "maml_query_classes": mode}
        cfg = spec.make_config(opts)
        ctx = TaskContext(dataset="none", category="none", seed=1, shots=2, train_paths=[], store_factory=lambda: None)
        method = spec.cls(cfg, ctx)
        method._build((D, H, W))
        src = _FakeSource()
        info = method._pretrain(src)  # type: ignore[arg-type]
        assert info["outer_steps"] == outer and info["tasks_per_step"] == per_step
        assert info["episodes"] == len(src.calls) == 2 * outer * per_step <= max_episodes
        assert info["order"] == "second" and "running statistics" in info["batchnorm"]
        for i in range(0, len(src.calls), 2):  # (support call, query call) per task
            assert src.calls[i] == (None, None)
            only, exclude = src.calls[i + 1]
            if mode == "disjoint":
                assert only is None and exclude is not None
            else:
                assert only is not None and exclude is None


def test_stop_rule_fires_on_query_accuracy() -> None:
    spec = get_method("contrastive-maml")
    paper = spec.default_config()  # budget: 1000 episodes, 2 per task, 10 tasks per outer step -> 50 outer steps
    assert (paper.max_episodes, paper.maml_tasks, paper.inner_lr, paper.inner_steps) == (1000, 10, 0.001, 1)
    cfg = spec.make_config({"max_episodes": 40, "maml_tasks": 2, "stop_accuracy": -1.0})
    ctx = TaskContext(dataset="none", category="none", seed=1, shots=2, train_paths=[], store_factory=lambda: None)
    method = spec.cls(cfg, ctx)
    method._build((D, H, W))
    before = copy.deepcopy(method.model.state_dict())
    info = method._pretrain(_FakeSource())  # type: ignore[arg-type]
    assert info["stopped_by_rule"] and info["outer_steps"] == 1
    assert any(not torch.equal(before[k], v) for k, v in method.model.state_dict().items())
