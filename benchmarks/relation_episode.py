"""Memory and time of one RelationNet pretraining update (paper §7: 9 groups × 10 classes = 90 keys × 9 queries =
810 pairs, weighted BCE, one fused Adam step) at the paper's sizes. Prints figures, asserts nothing.

Two implementations of the same update, each in a fresh child process on the same random grids from the same seed:

* ``chunked``: the harness's :meth:`RelationHead.forward_pairs` (the (810, 512, H, W) activations live one chunk of
  supports at a time, :class:`bench.methods.relationnet._PairBlock`);
* ``autograd``: the head's modules applied to the broadcast sum of the two halves of the first conv, as the harness
  did before (every (810, 512, H, W) activation kept for the backward pass).

Per implementation: milliseconds per update (median of ``--repeats`` updates after one warm-up), the process's peak
resident memory (``ru_maxrss``, which includes the interpreter, torch and the inputs: the inputs' size is printed
too) and the loss of the last update (the two must agree to float rounding).

Usage: ``python benchmarks/relation_episode.py [--dim 1024] [--grid 28] [--repeats 3] [--threads 2]``.
The machine may be shared: the 1-minute load average is printed next to the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
GROUPS, CLASSES, QUERIES = 9, 10, 9


def child(args: argparse.Namespace) -> dict[str, float]:
    """In the child process: time ``args.mode`` and return its figures."""
    import bench  # noqa: F401  (malloc mode, as the harness runs)
    import torch
    import torch.nn.functional as F

    from bench.methods._pretrain import make_adam
    from bench.methods.relationnet import RelationHead, weighted_bce

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    shape = (args.dim, args.grid, args.grid)
    keys = torch.randn(GROUPS * CLASSES, *shape, generator=gen).contiguous(memory_format=torch.channels_last)
    queries = torch.randn(QUERIES, *shape, generator=gen).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, CLASSES, (QUERIES,), generator=gen)
    target = (torch.arange(CLASSES).view(1, CLASSES, 1) == labels.view(1, 1, -1)).float().expand(GROUPS, CLASSES, -1)
    torch.manual_seed(0)
    head = RelationHead(*shape)
    opt = make_adam(head.parameters(), 1e-4)

    def autograd_pairs(s: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        d = head.in_dim
        a = F.conv2d(s, head.conv1.weight[:, :d], head.conv1.bias)
        b = F.conv2d(q, head.conv1.weight[:, d:])
        z = (a[:, None] + b[None]).flatten(0, 1)
        return head._tail(head.conv2(F.relu(head.bn1(z)))).view(len(s), len(q))

    pairs = head.forward_pairs if args.mode == "chunked" else autograd_pairs
    times, loss = [], 0.0
    for i in range(args.repeats + 1):
        t0 = time.perf_counter()
        head.train()
        out = weighted_bce(pairs(keys, queries).view(GROUPS, CLASSES, QUERIES), target, CLASSES - 1)
        opt.zero_grad(set_to_none=True)
        out.backward()
        opt.step()
        if i:  # the first update warms up the allocator and the kernels
            times.append(time.perf_counter() - t0)
        loss = out.item()
    inputs = (keys.numel() + queries.numel()) * 4
    return {"ms": 1000 * statistics.median(times), "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "inputs": inputs, "loss": loss}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=1024, help="feature dims D of a grid (paper: ResNet-50, 1024)")
    ap.add_argument("--grid", type=int, default=28, help="grid side H = W (paper: 28)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--mode", choices=("chunked", "autograd"), help=argparse.SUPPRESS)  # the child's role
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(child(args)))
        return
    print(f"RelationNet pretraining update: {GROUPS * CLASSES} keys × {QUERIES} queries = {GROUPS * CLASSES * QUERIES} "
          f"pairs of ({args.dim}, {args.grid}, {args.grid}) grids, {args.threads} thread(s), load "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")  # fmt: skip
    rows = {}
    for mode in ("chunked", "autograd"):
        cmd = [sys.executable, __file__, "--mode", mode, "--dim", str(args.dim), "--grid", str(args.grid),
               "--repeats", str(args.repeats), "--threads", str(args.threads)]  # fmt: skip
        rows[mode] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        r = rows[mode]
        print(f"  {mode:9s} {r['ms']:9.0f} ms/update   peak RSS {r['peak_rss'] / 2**30:5.2f} GiB "
              f"(inputs {r['inputs'] / 2**30:.2f} GiB)   last loss {r['loss']:.6f}")
    c, a = rows["chunked"], rows["autograd"]
    print(f"  chunked / autograd: time {c['ms'] / a['ms']:.2f}×, peak memory {c['peak_rss'] / a['peak_rss']:.2f}×; "
          f"loss difference {abs(c['loss'] - a['loss']):.2e}")


if __name__ == "__main__":
    main()
