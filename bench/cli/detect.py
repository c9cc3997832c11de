"""PatchCore image AUROC per category (good vs defective test images): a sanity check of the feature pipeline.

With ImageNet weights on real MVTec AD the figures should be near the published PatchCore ones (~0.99 with
WRN-50, somewhat lower with ResNet-50); with random weights on the built-in dataset they must still be far
above 0.5. Categories without test/good images (e.g. the shared real screw subset) get "n/a" and a note.

Example: ``python -m bench detect --dataset synthetic --backbone resnet18 --weights random``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.cli._args import (
    add_config_option, add_feature_options, add_progress_option, apply_config_file, feature_options, show_progress,
    use_threads,
)
from bench.errors import BenchError


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--data-root")
    p.add_argument("--categories", nargs="+")
    add_feature_options(p)
    p.add_argument("--seed", type=int, default=1, help="drives the coreset")
    p.add_argument("--out", type=Path, help="also write the table as CSV here")
    add_progress_option(p)
    add_config_option(p)


def main(args: argparse.Namespace) -> int:
    from bench.datasets import DatasetOptions, load_dataset
    from bench.features.detect import detect, format_detect
    from bench.features.store import shared_store
    from bench.paths import set_cache_root
    from bench.report.render import check_output, csv_frame
    from bench.run.config import feature_config, resolve_device

    apply_config_file(args)
    if args.out:  # before the features are computed: the table would be printed, then the CSV lost
        check_output(args.out)
    fcfg = feature_config(args.dataset, **feature_options(args))
    device = resolve_device(args.device)
    use_threads(args.threads)
    if args.cache_dir:
        set_cache_root(args.cache_dir)
    # detection needs every category with test images, including single-type ones (toothbrush)
    samples = load_dataset(args.dataset, args.data_root, DatasetOptions(categories=tuple(args.categories) if args.categories else None, min_defect_types=1))
    store = shared_store(fcfg, device)  # over the root set above
    store.progress = show_progress(args)
    if not store.weights_info.pretrained:
        print("note: RANDOM backbone weights: AUROCs are a pipeline sanity check, not PatchCore's published figures.")
    df = detect(samples, store, seed=args.seed, coreset_ratio=args.coreset_ratio, progress=show_progress(args))
    print(format_detect(df))
    if args.out:
        try:
            csv_frame(df).to_csv(args.out, index=False)
        except OSError as exc:
            raise BenchError(f"cannot write {args.out} ({exc.strerror or exc}); the table is printed above.") from None
        print(f"wrote {args.out}")
    return 0
