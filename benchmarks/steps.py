"""Optimiser-step speed of the paper's heads at the paper's sizes. Prints figures, asserts nothing.

The paper's fine-tuning is thousands of sequential Adam steps (docs/method-notes.md §8: C·n·(n−1) steps per pass,
45/25/15/15 passes at 2–5 shots), so the time of one step sets the time of every grid that contains the paper's
methods. Each measurement runs in a fresh child process, once as the harness runs (``BENCH_MALLOC=heap``, the
default: glibc serves blocks up to 256 MiB from the heap, see :func:`bench.compat.tune_malloc`) and once with
glibc's defaults (``BENCH_MALLOC=system``), on the same random inputs from the same seed:

1. a contrastive fine-tuning step (keys of C classes encoded without gradient, one query, InfoNCE, fused Adam);
2. a RelationNet fine-tuning step (C prototypes × C·(n−1) queries, weighted BCE, fused Adam);
3. one contrastive pretraining episode update (90 keys, 9 queries).

It prints milliseconds per step (median of ``--repeats`` timed blocks), the speed-up, and whether the final losses
of the two modes agree bit for bit (the allocation mode must not change results).

Usage: ``python benchmarks/steps.py [--dim 1024] [--grid 28] [--classes 5] [--shots 5] [--steps 20]
[--repeats 3] [--threads 2]`` (also ``python -m bench perf steps``). The machine may be shared: the 1-minute load
average is printed next to the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def child(args: argparse.Namespace) -> dict[str, object]:
    """Run in the child process: time the three kinds of step and return figures as a dict."""
    import bench  # noqa: F401  (torchvision shim, malloc mode)
    import torch
    import torch.nn.functional as F

    from bench.compat import tune_malloc
    from bench.methods._pretrain import make_adam
    from bench.methods.contrastive import ContrastiveEncoder, info_nce_logits
    from bench.methods.relationnet import RelationHead, weighted_bce

    torch.set_num_threads(args.threads)
    d, g, c, n = args.dim, args.grid, args.classes, args.shots
    gen = torch.Generator().manual_seed(0)

    def grids(k: int) -> torch.Tensor:
        return torch.randn(k, d, g, g, generator=gen).contiguous(memory_format=torch.channels_last)

    def timed(step, warmup: int = 3) -> tuple[float, float]:  # noqa: ANN001 - a closure returning the loss
        for _ in range(warmup):
            step()
        blocks = []
        loss = 0.0
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for _ in range(args.steps):
                loss = step()
            blocks.append((time.perf_counter() - t0) / args.steps * 1e3)
        return statistics.median(blocks), loss

    out: dict[str, object] = {"malloc": tune_malloc(), "threads": torch.get_num_threads()}

    torch.manual_seed(0)
    enc = ContrastiveEncoder(d, g, g).train()
    opt = make_adam(enc.parameters(), 1e-4)
    keys, query, target = grids(c), grids(1), torch.tensor([0])

    def contrastive_step() -> float:
        with torch.no_grad():
            k = enc(keys)
        loss = F.cross_entropy(info_nce_logits(enc(query), k, 0.07), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    out["contrastive_finetune_ms"], out["contrastive_loss"] = timed(contrastive_step)

    torch.manual_seed(0)
    head = RelationHead(d, g, g).train()
    opt_r = make_adam(head.parameters(), 1e-4)
    protos, queries = grids(c), grids(c * (n - 1))
    q_labels = torch.arange(c).repeat_interleave(n - 1)
    rel_target = (torch.arange(c).view(-1, 1) == q_labels.view(1, -1)).float()

    def relation_step() -> float:
        loss = weighted_bce(head.forward_pairs(protos, queries), rel_target, c - 1)
        opt_r.zero_grad(set_to_none=True)
        loss.backward()
        opt_r.step()
        return loss.item()

    out["relation_finetune_ms"], out["relation_loss"] = timed(relation_step)

    torch.manual_seed(0)
    enc_p = ContrastiveEncoder(d, g, g).train()
    opt_p = make_adam(enc_p.parameters(), 1e-4)
    ep_keys, ep_queries = grids(90), grids(9)
    ep_labels = torch.arange(9) % 10

    def pretrain_step() -> float:
        with torch.no_grad():
            k = enc_p(ep_keys).view(9, 10, -1)
        loss = F.cross_entropy(info_nce_logits(enc_p(ep_queries), k, 0.07), ep_labels.repeat(9))
        opt_p.zero_grad(set_to_none=True)
        loss.backward()
        opt_p.step()
        return loss.item()

    saved = args.steps
    args.steps = max(2, saved // 5)
    out["contrastive_pretrain_ms"], out["pretrain_loss"] = timed(pretrain_step, warmup=1)
    args.steps = saved
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=1024, help="feature dims D (paper 1024)")
    p.add_argument("--grid", type=int, default=28, help="grid side H = W (paper 28)")
    p.add_argument("--classes", type=int, default=5, help="defect types C (MVTec AD screw: 5)")
    p.add_argument("--shots", type=int, default=5, help="n (RelationNet step size: C·(n−1) queries)")
    p.add_argument("--steps", type=int, default=20, help="steps per timed block")
    p.add_argument("--repeats", type=int, default=3, help="timed blocks (the median is printed)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return 0
    results = {}
    for mode in ("heap", "system"):
        env = {**os.environ, "BENCH_MALLOC": mode}
        argv = [sys.executable, __file__, "--child", *sys.argv[1:]]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            return proc.returncode
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"measured BENCH_MALLOC={mode} (in effect: {results[mode]['malloc']}), load {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} cores", flush=True)  # fmt: skip
    h, s = results["heap"], results["system"]
    print(f"\nD = {args.dim}, grid {args.grid}×{args.grid}, C = {args.classes}, n = {args.shots}, "
          f"{h['threads']} threads; ms per optimiser step (median of {args.repeats} blocks)\n")  # fmt: skip
    print("| step | harness (default) | BENCH_MALLOC=system | speed-up | same loss |")
    print("|---|---|---|---|---|")
    for key, loss, label in (
        ("contrastive_finetune_ms", "contrastive_loss", f"contrastive fine-tuning (C = {args.classes} keys, 1 query)"),
        ("relation_finetune_ms", "relation_loss", f"RelationNet fine-tuning ({args.classes} × {args.classes * (args.shots - 1)} pairs)"),
        ("contrastive_pretrain_ms", "pretrain_loss", "contrastive pretraining episode (90 keys, 9 queries)"),
    ):  # fmt: skip
        print(f"| {label} | {h[key]:.1f} | {s[key]:.1f} | {s[key] / h[key]:.2f}× | {h[loss] == s[loss]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
