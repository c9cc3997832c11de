"""PatchCore image AUROC per category (good vs defective test images): a sanity check of the feature pipeline.

With ImageNet weights on real MVTec AD the figures should be near the published PatchCore ones (~0.99 with
WRN-50, somewhat lower with ResNet-50); with random weights on the built-in dataset they must still be far
above 0.5. Categories without test/good images (e.g. the shared real screw subset) get "n/a" and a note.

Example: ``python -m bench detect --dataset synthetic --backbone resnet18 --weights random``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.errors import BenchError


def configure(p: argparse.ArgumentParser) -> None:
    from bench.images import FITS

    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--data-root")
    p.add_argument("--categories", nargs="+")
    p.add_argument("--backbone", help="timm backbone (default tf_efficientnet_lite0, ImageNet weights installed with the harness)")
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
    from bench.datasets import DatasetOptions, dataset_image_fit, load_dataset
    from bench.features.detect import detect, format_detect
    from bench.features.backbones import DEFAULT_BACKBONE
    from bench.features.extractor import FeatureConfig
    from bench.features.store import shared_store
    from bench.paths import set_cache_root
    from bench.report.render import check_output, csv_safe
    from bench.run.config import resolve_device

    if args.out:  # before the features are computed: the table would be printed, then the CSV lost
        check_output(args.out)
    fcfg = FeatureConfig(
        backbone=args.backbone or DEFAULT_BACKBONE, weights=args.weights, precision=args.precision,
        zero_init_last=None if args.zero_init_last is None else args.zero_init_last == "true",
        layers=tuple(args.layers) if args.layers else None, image_fit=args.image_fit or dataset_image_fit(args.dataset),
    )  # fmt: skip
    device = resolve_device(args.device)
    if args.cache_dir:
        set_cache_root(args.cache_dir)
    # detection needs every category with test images, including single-type ones (toothbrush)
    samples = load_dataset(args.dataset, args.data_root, DatasetOptions(categories=tuple(args.categories) if args.categories else None, min_defect_types=1))
    store = shared_store(fcfg, device)  # over the root set above
    if not store.weights_info.pretrained:
        print("note: RANDOM backbone weights: AUROCs are a pipeline sanity check, not PatchCore's published figures.")
    df = detect(samples, store, seed=args.seed, coreset_ratio=args.coreset_ratio)
    print(format_detect(df))
    if args.out:
        try:
            csv_safe(df).to_csv(args.out, index=False)
        except OSError as exc:
            raise BenchError(f"cannot write {args.out} ({exc.strerror or exc}); the table is printed above.") from None
        print(f"wrote {args.out}")
    return 0
