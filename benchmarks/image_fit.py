"""How much of each defect the network input misses, per image fit: the share of every mask outside
:meth:`bench.images.Preprocess.source_box` (pixels whose centres fall outside the part of the image that
reaches the network). Geometry only: no network, no weights. Prints figures, asserts nothing.

Why: the paper's Resize(256) + CenterCrop(224) was made for MVTec AD's square images; on elongated parts
(MTD's tiles reach 2.8 : 1) it cuts off the ends of the part, where defects may be. ``squash`` and
``letterbox`` keep the whole image by construction (0 % outside); this script says what ``crop`` loses.

Usage::

    python benchmarks/image_fit.py --dataset mtd --data-root ../shared/data/mtd/Magnetic-Tile-Defect
    python benchmarks/image_fit.py --dataset mvtec_ad --data-root /data/mvtec_anomaly_detection --fit crop

Per defect type: images, those with a non-empty mask, the mean and pooled (area-weighted) share of mask
pixels outside the box, how many images lose some / at least half / all of their mask, and the mean share
of the image area kept, and the median number of source pixels per input pixel along the longer side
(``squash`` and ``letterbox`` keep everything but shrink a long strip more than ``crop`` does).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def mask_outside(mask: np.ndarray, box: tuple[float, float, float, float]) -> tuple[int, int]:
    """(mask pixels, mask pixels whose centres lie outside ``box``) of a boolean (H, W) mask."""
    left, top, right, bottom = box
    h, w = mask.shape
    xs, ys = np.arange(w) + 0.5, np.arange(h) + 0.5
    inside = ((ys >= top) & (ys < bottom))[:, None] & ((xs >= left) & (xs < right))[None, :]
    return int(mask.sum()), int((mask & ~inside).sum())


def longer_side_shrink(pre: "Preprocess", w: int, h: int) -> float:  # noqa: F821 - imported in main
    """Source pixels per input pixel along the image's longer side (what small defects lose in resolution)."""
    if pre.fit == "crop":
        return min(w, h) / pre.resize
    return max(w, h) / pre.crop


def main(argv: list[str] | None = None) -> int:
    from tabulate import tabulate

    from bench.datasets import DatasetOptions, load_dataset
    from bench.images import FITS, Preprocess

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mtd")
    p.add_argument("--data-root", required=True)
    p.add_argument("--fit", choices=FITS, nargs="+", default=list(FITS))
    p.add_argument("--resize", type=int, default=256)
    p.add_argument("--crop", type=int, default=224)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    samples = load_dataset(args.dataset, args.data_root, DatasetOptions(min_defect_types=1))
    t = samples.table
    defects = t[(t.split == "test") & (t.label != "good") & (t.mask_path != "")]
    defects = defects.sort_values(["category", "label", "name"])
    masks = [(r.category, r.label, np.asarray(Image.open(r.mask_path).convert("L")) > 127)
             for r in defects.itertuples()]
    print(f"{args.dataset} at {samples.root}: {len(masks)} defect images with a mask file "
          f"({sum(m.any() for _, _, m in masks)} non-empty); resize {args.resize}, crop {args.crop}")
    for fit in args.fit:
        pre = Preprocess(args.resize, args.crop, fit)
        per: dict[str, list[tuple[int, int, float]]] = {}
        for cat, label, m in masks:
            box = pre.source_box((m.shape[1], m.shape[0]))
            kept = (box[2] - box[0]) * (box[3] - box[1]) / (m.shape[0] * m.shape[1])
            shrink = longer_side_shrink(pre, m.shape[1], m.shape[0])
            per.setdefault(f"{cat}/{label}", []).append((*mask_outside(m, box), kept, shrink))
        per["all"] = [x for k in list(per) for x in per[k]]
        rows = []
        for name, xs in per.items():
            tot = np.array([x[0] for x in xs], float)
            out = np.array([x[1] for x in xs], float)
            nz = tot > 0
            share = out[nz] / tot[nz]
            rows.append((name, len(xs), int(nz.sum()), f"{share.mean():.1%}", f"{out.sum() / max(tot.sum(), 1):.1%}",
                         int((share > 0).sum()), int((share >= 0.5).sum()), int((share >= 1).sum()),
                         f"{np.mean([x[2] for x in xs]):.1%}", f"{np.median([x[3] for x in xs]):.2f}"))
        print(f"\nimage fit {fit!r}")
        print(tabulate(rows, headers=["type", "images", "masked", "outside (mean)", "outside (pooled)", "some out",
                                      ">= half out", "all out", "image area kept",
                                      "shrink (longer side)"], tablefmt="simple"))
    print(f"\n{time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
