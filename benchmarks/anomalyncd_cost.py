"""What AnomalyNCD's mask-guided representation learning costs per category on this machine. Prints figures, asserts
nothing.

One training step of ``discoverers/anomalyncd.py`` (two augmented views of a batch of crops through the mask-guided
ViT, four heads, the losses, backward through the trained block and the heads, SGD) is timed for each ViT asked for,
on random crops and masks, after one untimed warm-up step; so is the test-time forward per crop. The figures are per
crop: a step's time is close to linear in the batch for a big ViT, so ViT-B/8 is timed on a small batch (for a small
ViT a small batch is dominated by overheads, so it is timed on the full 32). The cost of
a category's full schedule is then extrapolated: epochs × ⌈crops / 32⌉ steps of 32 crops, plus one test forward per
crop; augmentation and crop cutting are left out (they are a small part on a CPU).

Defaults: the paper's configuration (DINO ViT-B/8 = ``vit_base_patch8_224``, 50 epochs) and the harness's CPU default
(``vit_tiny_patch16_224``, 5 epochs), both at 224 px, timed on 4 and 32 crops per step, 2 timed steps each; the
crop count is
MTD's (the number of crops MEBin makes on MTD's 582 test images with the harness's PatchCore maps: see
``method_info.crops.n_crops`` in a ``mebin-kmeans`` or ``anomalyncd`` row).

Usage: ``python benchmarks/anomalyncd_cost.py [--vits vit_base_patch8_224 vit_tiny_patch16_224] [--epochs 50 5]
[--crops 700] [--batch 4 32] [--steps 2] [--threads 2]`` (also ``python -m bench perf anomalyncd``). The machine may be
shared: the 1-minute load average is printed next to the figures.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def measure(vit_name: str, batch: int, steps: int, k: int = 6) -> dict[str, float]:
    """Seconds per crop of a training step and of a test forward, for one ViT (random weights: same cost)."""
    import torch
    import torch.nn.functional as F

    from bench.discoverers.anomalyncd import AnomalyNCDConfig, Heads, MaskGuidedViT, build_vit, distill_loss, info_nce, memax

    cfg = AnomalyNCDConfig(vit=vit_name)
    vit, _ = build_vit(cfg)
    model = MaskGuidedViT(vit, cfg.mask_layers, cfg.train_blocks)
    heads = Heads(int(vit.embed_dim), k, cfg.n_head)
    params = [p for p in [*model.parameters(), *heads.parameters()] if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * batch, 3, 224, 224, generator=g)
    m = (torch.rand(2 * batch, 1, 224, 224, generator=g) > 0.7).float()
    w = torch.zeros(2 * batch)

    def step() -> None:
        proj, logits = heads(model(x, m))
        cluster = sum(distill_loss(lg, lg.detach(), 0.07, w) + cfg.memax_weight * memax(lg) for lg in logits) / len(logits)
        loss = (1 - cfg.sup_weight) * (cluster + info_nce(proj))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    step()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    model.eval()
    with torch.no_grad():
        t0 = time.perf_counter()
        F.softmax(heads(model(x[:batch], m[:batch]))[1][0] / 0.1, dim=-1)
        test = time.perf_counter() - t0
    return {"train_s_per_crop": statistics.median(times) / batch, "test_s_per_crop": test / batch,
            "step_s": statistics.median(times)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vits", nargs="+", default=["vit_base_patch8_224", "vit_tiny_patch16_224"])
    p.add_argument("--epochs", nargs="+", type=int, default=[50, 5], help="schedule per ViT (paper: 50)")
    p.add_argument("--crops", type=int, default=700, help="crops of the category (MTD with lite0 PatchCore maps: ~700)")
    p.add_argument("--batch", nargs="+", type=int, default=[4, 32], help="crops per timed step per ViT (two views each)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per ViT")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import bench  # noqa: F401  (torchvision shim)
    import torch

    torch.set_num_threads(args.threads)
    epochs = args.epochs + [args.epochs[-1]] * (len(args.vits) - len(args.epochs))
    batches = args.batch + [args.batch[-1]] * (len(args.vits) - len(args.batch))
    print(f"AnomalyNCD training cost on this CPU ({os.cpu_count()} cores, {args.threads} threads; load "
          f"{os.getloadavg()[0]:.1f}); {args.crops} crops per category, batches of 32, two views per crop")  # fmt: skip
    for vit, ep, batch in zip(args.vits, epochs, batches):
        t0 = time.perf_counter()
        f = measure(vit, batch, args.steps)
        per_step = 32 * f["train_s_per_crop"]
        steps = ep * math.ceil(args.crops / 32)
        total = steps * per_step + args.crops * f["test_s_per_crop"]
        print(f"\n{vit}: {f['step_s']:.2f} s per timed step of {batch} crops -> {per_step:.1f} s per step of 32 crops "
              f"(extrapolated), test forward {1000 * f['test_s_per_crop']:.0f} ms per crop")  # fmt: skip
        print(f"  {ep} epochs x {math.ceil(args.crops / 32)} steps = {steps} steps: {total / 3600:.2f} h per category "
              f"({total:.0f} s; measured in {time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.1f})")  # fmt: skip


if __name__ == "__main__":
    main()
