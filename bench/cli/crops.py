"""Save a picture of the MEBin masks and anomaly-centred crops of a few images of a category (AnomalyNCD's first
stage, as ``bench run --task discovery`` computes it: maps and MEBin's range over the protocol's whole set).

Examples::

    python -m bench show-crops --category tile --dataset synthetic-tiny
    python -m bench show-crops --category magnetic_tile --dataset mtd --data-root ../shared/data/mtd/Magnetic-Tile-Defect
    python -m bench show-crops --category screw --dataset mvtec_ad --data-root /data/mvtec_ad --maps /data/musc_maps --out runs/crops_screw.png   # another detector's maps
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.cli._args import (
    Stages, add_config_option, add_feature_options, add_progress_option, apply_config_file, feature_options,
    show_progress, use_threads,
)
from bench.paths import default_output


def configure(p: argparse.ArgumentParser) -> None:
    from bench.discovery.protocol import PROTOCOLS

    p.add_argument("--category", required=True)
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--data-root")
    p.add_argument("--protocol", choices=PROTOCOLS, default=PROTOCOLS[0], help="the set MEBin's range is taken over")
    p.add_argument("--maps", help="folder of 8- or 16-bit PNG maps <maps>/<category>/<type>/<name>.png, as bench maps "
                   "writes them (default: PatchCore)")
    add_feature_options(p)
    p.add_argument("--seed", type=int, default=1, help="drives the coreset of the memory bank")
    p.add_argument("--images", type=int, default=6, help="images (rows) to show, one per class in turn")
    p.add_argument("--out", type=Path, help="picture file, .png or .jpg, or an existing folder (default "
                   f"{default_output('crops_<category>.png')}); never inside the dataset folder")
    add_progress_option(p)
    add_config_option(p)


def main(args: argparse.Namespace) -> int:
    from bench.datasets import DatasetOptions, load_dataset
    from bench.discovery.maps import Frame, patchcore_maps, png_map_paths, png_maps
    from bench.discovery.pictures import check_writable, picture_format, save_crops_picture
    from bench.discovery.protocol import discovery_set
    from bench.errors import ConfigError
    from bench.features.store import shared_store
    from bench.paths import set_cache_root
    from bench.run.config import feature_config, resolve_device
    from bench.run.grid import check_out_outside_data

    apply_config_file(args)
    if args.images < 1:
        raise ConfigError(f"--images {args.images} is not allowed: at least 1")
    out = args.out or default_output(f"crops_{args.category}.png")
    if out.is_dir():
        out = out / f"crops_{args.category}.png"
    picture_format(out)
    if args.cache_dir:
        set_cache_root(args.cache_dir)
    maps_stages = ["read maps"] if args.maps else ["backbone and memory bank", "anomaly maps"]
    names = ["dataset", *maps_stages, "MEBin and picture"]
    with Stages("show-crops", names, enabled=show_progress(args)) as progress:
        progress.stage("dataset")
        options = DatasetOptions(categories=(args.category,), min_defect_types=1)
        samples = load_dataset(args.dataset, args.data_root, options)
        check_out_outside_data(out, samples.root)  # as `run` does: a picture there would be read as a defect image
        check_writable(out)
        ls = discovery_set(samples, args.category, args.protocol)
        fcfg = feature_config(args.dataset, **feature_options(args))
        frame = Frame(fit=fcfg.image_fit, side=fcfg.crop, resize=fcfg.resize)
        if args.maps:
            progress.stage("read maps")
            paths = png_map_paths(args.maps, args.category, [ls.class_names[y] for y in ls.labels], ls.paths)
            maps = png_maps(paths, ls.paths, frame, args.maps)
        else:
            progress.stage("backbone and memory bank")
            use_threads(args.threads)
            store = shared_store(fcfg, resolve_device(args.device))  # over the root set above
            store.progress = show_progress(args)
            if not store.weights_info.pretrained:
                progress.write("note: RANDOM backbone weights: the maps are a pipeline check, not a detector's.")
            bank = store.bank(samples.train_paths(args.category), seed=args.seed, coreset_ratio=args.coreset_ratio)
            progress.stage("anomaly maps")
            maps = patchcore_maps(store, bank, ls.paths, frame)
        progress.stage("MEBin and picture")
        save_crops_picture(ls, maps, frame, out, args.images)
    print(f"wrote {out} ({min(args.images, len(ls.paths))} of {len(ls.paths)} images of {args.category}; maps: "
          f"{maps.info['source']}, MEBin range over the whole {args.protocol} set)")  # fmt: skip
    return 0
