"""t-SNE of support and query embeddings before and after a method (as in the paper's Figures 7–8).

Examples::

    python -m bench tsne --method contrastive --category fabric --shots 5 --seed 1 --out runs/tsne/
    python -m bench tsne --method contrastive --dataset mvtec_ad --data-root /data/mvtec_ad --category screw --shots 2

Runs ONE job in this process (the same episode, features and method as ``bench run``): "before" is the
spatial mean of the raw PatchCore features (``FeatureStore.patch_features``), "after" is the method's own
embedding (its ``embed(paths) -> (N, E)`` method; methods without one cannot be shown). Writes
``tsne-<method>-<category>-<shots>shot-seed<seed>.{png,svg,csv}`` (the CSV holds both 2-D maps per image).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError, ConfigError
from bench.cli._args import (
    Stages, add_config_option, add_feature_options, add_progress_option, apply_config_file, feature_options,
    show_progress, use_threads,
)
from bench.paths import default_output

if TYPE_CHECKING:  # imported where used: --help and option errors answer before numpy/pandas load
    import numpy as np


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, help="registered method name with an embedding (e.g. contrastive)")
    p.add_argument("--category", required=True, help="category to show")
    p.add_argument("--shots", type=int, default=5, help="support images per defect type (default 5)")
    p.add_argument("--seed", type=int, default=1, help="run seed (default 1)")
    p.add_argument("--set", dest="set_", action="append", default=[], metavar="KEY=VALUE", help="method option override (repeatable)")
    p.add_argument("--dataset", default="synthetic", help="dataset adapter (default synthetic)")
    p.add_argument("--data-root", help="dataset root folder")
    p.add_argument("--protocol", choices=["paper", "random"], default="paper", help="support selection (default paper)")
    add_feature_options(p)
    p.add_argument("--perplexity", type=float, help="t-SNE perplexity (default min(30, (N-1)/3))")
    p.add_argument("--tsne-seed", type=int, default=0, help="t-SNE random state (default 0)")
    p.add_argument("--out", default=str(default_output("tsne")),
                   help=f"output folder (default {default_output('tsne')}/)")
    add_progress_option(p)
    add_config_option(p)


def _numpy(x: Any) -> np.ndarray:
    import numpy as np

    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def tsne_2d(x: np.ndarray, perplexity: float | None, seed: int) -> np.ndarray:
    """2-D t-SNE (scikit-learn, PCA init, fixed random state, exact gradients up to 1000 points) of (N, D) vectors."""
    from sklearn.manifold import TSNE

    n = len(x)
    if n < 4:
        raise BenchError(f"t-SNE needs at least 4 images, this episode has {n}: use a category with more images or more shots.")
    perp = perplexity if perplexity is not None else min(30.0, max(2.0, (n - 1) / 3))
    if perp >= n:
        raise ConfigError(f"--perplexity {perp} must be smaller than the number of images ({n}).")
    method = "exact" if n <= 1000 else "barnes_hut"  # one category has at most a few hundred images: exact is fast
    return TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed, method=method).fit_transform(x)


def main(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from bench.method import SupportSet, get_method
    from bench.metrics import episode_metrics
    from bench.report import plots
    from bench.report.headings import dataset_name, weights_text
    from bench.report.render import csv_frame
    from bench.run.config import RunConfig
    from bench.run.grid import preflight
    from bench.run.job import build_method, feature_store, make_context
    from bench.run.classification import plan

    method_options = apply_config_file(args)
    spec = get_method(args.method)
    if not callable(getattr(spec.cls, "embed", None)):
        raise BenchError(
            f"method {args.method!r} exposes no embedding (its class {spec.cls.__name__} has no embed(paths) method), so there "
            "is no 'after' space to show. Use a method that learns an embedding, e.g. --method contrastive."
        )
    given = {k: v for k, v in feature_options(args).items() if v is not None}  # else RunConfig's defaults
    cfg = RunConfig(
        methods=[args.method], method_options=method_options, dataset=args.dataset, data_root=args.data_root,
        categories=[args.category], shots=[args.shots], seeds=[args.seed], protocol=args.protocol, **given,
        coreset_ratio=args.coreset_ratio, device=args.device, threads=args.threads, cache_dir=args.cache_dir,
    )  # fmt: skip
    names = ["dataset and episode", "backbone", "method (training)", "features and embeddings", "t-SNE"]
    with Stages("tsne", names, enabled=show_progress(args)) as progress:
        progress.stage("dataset and episode")
        use_threads(cfg.threads)
        samples = preflight(cfg)
        if args.category not in samples.categories():
            why = samples.skipped.get(args.category)
            raise BenchError(f"category {args.category!r} is not usable in dataset {args.dataset!r}"
                             + (f": {why}" if why else ""))  # fmt: skip
        (job,) = plan(cfg, samples)  # the job `bench run` would run, with the same episode and method configuration
        if job.error or job.episode is None:
            raise BenchError(job.error or "no episode")
        ep = job.episode
        progress.stage("backbone")
        store = feature_store(cfg)
        store.progress = show_progress(args)  # the image bar of the feature extraction
        ctx = make_context(cfg, samples, job, store)
        progress.stage("method (training)")
        method = build_method(job, ctx)
        support = SupportSet(tuple(ep.support_paths()), tuple(ep.support_labels()), ep.class_names)
        method.fit(support)
        progress.stage("features and embeddings")
        paths = list(ep.support_paths()) + list(ep.queries)
        labels = np.array(list(ep.support_labels()) + list(ep.query_labels))
        is_support = np.arange(len(paths)) < len(support.paths)
        before = _numpy(ctx.features.patch_features(paths).mean((2, 3)))
        after = _numpy(method.embed(paths))
        if after.ndim != 2 or after.shape[0] != len(paths):
            raise BenchError(f"method {args.method!r}: embed() returned shape {after.shape}, expected "
                             f"({len(paths)}, E)")  # fmt: skip
        y_pred = np.asarray(method.predict(list(ep.queries))).argmax(axis=1)
        acc = episode_metrics(ep.query_labels, y_pred, ep.class_names)["accuracy"] if len(ep.queries) else float("nan")
        progress.stage("t-SNE")
        xy_b, xy_a = tsne_2d(before, args.perplexity, args.tsne_seed), tsne_2d(after, args.perplexity, args.tsne_seed)
    out = Path(args.out)
    stem = out / f"tsne-{args.method}-{args.category}-{args.shots}shot-seed{args.seed}"
    weights = store.weights_info.record()
    title = f"t-SNE of support and query images: {args.method}, {args.category} — {dataset_name(args.dataset)}"
    subtitle = (f"{args.shots}-shot, seed {args.seed}, protocol {cfg.protocol}, query accuracy {100 * acc:.1f}% · "
                + weights_text({"backbone": str(weights["backbone"]), "weights": str(weights["weights"])}))  # fmt: skip
    fig = plots.tsne_scatter(
        {f"before: pooled PatchCore features ({before.shape[1]}-d)": xy_b, f"after: {args.method} embedding ({after.shape[1]}-d)": xy_a},
        labels, is_support, ep.class_names, stem, title, subtitle,
    )  # fmt: skip
    csv_frame(pd.DataFrame({
        "path": paths, "class": [ep.class_names[i] for i in labels], "role": np.where(is_support, "support", "query"),
        "before_x": xy_b[:, 0], "before_y": xy_b[:, 1], "after_x": xy_a[:, 0], "after_y": xy_a[:, 1],
    })).to_csv(stem.with_suffix(".csv"), index=False)  # fmt: skip
    print(f"wrote {fig.png}, {fig.svg}, {stem.with_suffix('.csv')} ({len(paths)} images: {int(is_support.sum())} support, "
          f"{len(ep.queries)} queries; query accuracy {100 * acc:.1f}%)")  # fmt: skip
    if not weights.get("pretrained", True):
        print("note: random-init backbone (--weights random): not comparable with the paper's figures.")
    return 0
