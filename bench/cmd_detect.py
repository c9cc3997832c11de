"""PatchCore image AUROC per category (good vs defective test images): a sanity check of the feature pipeline.

With ImageNet weights on real MVTec AD the figures should be near the published PatchCore ones (~0.99 with
WRN-50, somewhat lower with ResNet-50); with random weights on the built-in dataset they must still be far
above 0.5. Categories without test/good images (e.g. the shared real screw subset) get "n/a" and a note.

Example: ``python -m bench detect --dataset synthetic --backbone resnet18 --weights random``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(p: argparse.ArgumentParser) -> None:
    from bench.images import FITS

    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--data-root")
    p.add_argument("--categories", nargs="+")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--weights", default="imagenet", help="imagenet (default), random, or a local weights file")
    p.add_argument("--layers", nargs="+", metavar="NAME", help="backbone stages to aggregate (default: those at strides 8 and 16)")
    p.add_argument("--zero-init-last", choices=["true", "false"], help="random init only (default false)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--image-fit", choices=FITS,
                   help="crop (resize + centre crop), squash or letterbox; default: the dataset's choice "
                   "(mtd: squash), else crop")
    p.add_argument("--seed", type=int, default=1, help="drives the coreset")
    p.add_argument("--coreset-ratio", type=float, default=0.1)
    p.add_argument("--cache-dir")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, help="also write the table as CSV here")


def main(args: argparse.Namespace) -> int:
    from bench.datasets import DatasetOptions, load_dataset
    from bench.detect import detect, format_detect
    from bench.runner import RunConfig, get_store

    zil = None if args.zero_init_last is None else args.zero_init_last == "true"
    cfg = RunConfig(
        methods=[], dataset=args.dataset, data_root=args.data_root, categories=args.categories, backbone=args.backbone,
        weights=args.weights, zero_init_last=zil, layers=args.layers, precision=args.precision, image_fit=args.image_fit,
        cache_dir=args.cache_dir, device=args.device,
    )
    if args.cache_dir:
        import os

        os.environ["BENCH_CACHE"] = str(Path(args.cache_dir).expanduser().resolve())
    # detection needs every category with test images, including single-type ones (toothbrush)
    samples = load_dataset(args.dataset, args.data_root, DatasetOptions(categories=tuple(args.categories) if args.categories else None, min_defect_types=1))
    store = get_store(cfg)
    if not store.weights_info.pretrained:
        print("note: RANDOM backbone weights: AUROCs are a pipeline sanity check, not PatchCore's published figures.")
    df = detect(samples, store, seed=args.seed, coreset_ratio=args.coreset_ratio)
    print(format_detect(df))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        from bench.render import csv_safe

        csv_safe(df).to_csv(args.out, index=False)
        print(f"wrote {args.out}")
    return 0
