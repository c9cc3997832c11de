"""Anomaly maps of a detector as PNG files, in the layout the discovery task reads (docs/tasks.md §B.1).

Examples::

    python -m bench maps --method patchcore-kshot --dataset mtd --data-root ../shared/data/mtd/Magnetic-Tile-Defect --shots 8 --seed 1 --out runs/maps-mtd/
    python -m bench maps --method patchcore-kshot --categories fabric nut --shots 4 --bits 16

Fits the detector on the same k shots as ``bench run --task detection`` (the seeded draw of (category, k, seed)) and
writes one map per test image of each category: ``<out>/<category>/<type>/<name>.png`` (``<type>`` = ``good`` or the
defect type, ``<name>`` = the image's file name with ``.png`` in place of its extension, or after it where two images
of a type share a stem), at the image's own upright size, min–max normalised jointly over the category's maps to 8
(default) or 16 bits; ``<out>/<category>/normalisation.json`` holds min, max, bits and what made them (detector, its
options, k, seed, the shot files). Only detectors that localise have maps (``patchcore-kshot``). Nothing is written to
a results file. ``--out`` is a new or empty folder, or one an earlier ``bench maps`` wrote (its marker file
``.bench-maps``): a category's maps are replaced whole, never half.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.cli._args import (
    add_config_option, add_feature_options, add_progress_option, apply_config_file, feature_options, show_progress,
    use_threads,
)
from bench.paths import default_output


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="patchcore-kshot", help="detector with anomaly maps (default patchcore-kshot)")
    p.add_argument("--dataset", default="synthetic", help="dataset adapter (default synthetic)")
    p.add_argument("--data-root", help="dataset root folder")
    p.add_argument("--categories", nargs="+", help="categories (default: all)")
    p.add_argument("--shots", type=int, default=8, help="k normal shots (default 8)")
    p.add_argument("--seed", type=int, default=1, help="the draw's seed (default 1)")
    p.add_argument("--set", dest="set_", action="append", default=[], metavar="KEY=VALUE", help="detector option (repeatable)")
    add_feature_options(p)
    p.add_argument("--exclude-combined", action="store_true", help="drop the 'combined' defect type")
    p.add_argument("--bits", type=int, choices=[8, 16], default=8, help="PNG depth (default 8, uint8 as the reference)")
    p.add_argument("--out", default=str(default_output("maps")),
                   help=f"output folder (default {default_output('maps')}/)")
    add_progress_option(p)
    add_config_option(p)


def main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from bench.detection.detector import DETECTION_TASK
    from bench.detection.maps import check_folder, claim_folder
    from bench.run.config import RunConfig
    from bench.run.detection import plan_detection, write_job_maps
    from bench.run.grid import check_out_outside_data, preflight
    from bench.run.job import feature_store

    method_options = apply_config_file(args)
    given = {k: v for k, v in feature_options(args).items() if v is not None}  # else RunConfig's defaults
    cfg = RunConfig(
        task=DETECTION_TASK, methods=[args.method], method_options=method_options, dataset=args.dataset,
        data_root=args.data_root, categories=args.categories, shots=[args.shots], seeds=[args.seed], **given,
        exclude_combined=bool(args.exclude_combined), coreset_ratio=args.coreset_ratio, device=args.device,
        threads=args.threads, cache_dir=args.cache_dir, out=args.out,
    )  # fmt: skip
    use_threads(cfg.threads)
    out = Path(args.out)
    check_folder(out)  # before the backbone loads: a file or a foreign folder is refused at once
    samples = preflight(cfg)
    check_out_outside_data(args.out, samples.root)
    claim_folder(out)
    feature_store(cfg).progress = show_progress(args)  # the store every job of this process uses: its image bar
    jobs = plan_detection(cfg, samples)
    bar = tqdm(jobs, desc="maps", unit="category", disable=not jobs or not show_progress(args))
    for job in bar:
        bar.set_postfix_str(job.describe(), refresh=True)
        written = write_job_maps(cfg, samples, job, out, args.bits)
        bar.write(f"{job.describe()}: {len(written)} maps in {out / job.category}/<type>/ (normalisation: "
                  f"{out / job.category / 'normalisation.json'})", file=sys.stdout)  # fmt: skip
    return 0
