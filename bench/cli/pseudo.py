"""Save a picture of generated pseudo-defects (what the classifiers are pretrained on).

Example: ``python -m bench show-pseudo --category screw --dataset mvtec_ad --data-root ../shared/data/mvtec_ad
--textures ../shared/data/dtd --out runs/pseudo_screw.png``. Without ``--textures`` the built-in procedural texture
bank is used (the default for runs too).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.cli._args import Stages, add_progress_option, show_progress
from bench.paths import default_output


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--category", required=True)
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--data-root")
    p.add_argument("--textures", help="DTD folder (dtd/ or dtd/images/); default: built-in procedural textures")
    p.add_argument("--mask", choices=["perlin", "polygon"], default="perlin")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--classes", type=int, default=8, help="pseudo classes (rows) to show")
    p.add_argument("--sources", type=int, default=4, help="normal images (columns) to show")
    p.add_argument("--out", type=Path, help=f"PNG path (default {default_output('pseudo_<category>.png')})")
    add_progress_option(p)


def main(args: argparse.Namespace) -> int:
    from bench.datasets import DatasetOptions, load_dataset
    from bench.datasets.pseudo.generator import PseudoConfig, PseudoDefectGenerator, save_examples
    from bench.datasets.pseudo.textures import load_textures
    from bench.errors import DatasetError

    with Stages("show-pseudo", ["dataset", "textures", "pseudo-defects"], enabled=show_progress(args)) as progress:
        progress.stage("dataset")
        samples = load_dataset(args.dataset, args.data_root, DatasetOptions(categories=(args.category,)))
        train = samples.train_paths(args.category)
        if not train:
            raise DatasetError(f"category {args.category!r} has no train/good images to put pseudo-defects on.")
        progress.stage("textures")
        textures = load_textures(Path(args.textures) if args.textures else None)
        progress.stage("pseudo-defects")
        gen = PseudoDefectGenerator(train, textures, args.category, PseudoConfig(mask=args.mask), seed=args.seed)
        out = args.out or default_output(f"pseudo_{args.category}.png")
        out.parent.mkdir(parents=True, exist_ok=True)
        save_examples(gen, out, n_classes=min(args.classes, gen.n_classes), n_sources=min(args.sources, gen.n_sources),
                      seed=args.seed)  # fmt: skip
    print(f"wrote {out} ({gen.n_classes} pseudo classes from {textures.source}; {len(train)} normal images)")
    return 0
