"""PatchCore image-level detection AUROC per category: the sanity anchor of the feature pipeline.

PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022): memory bank of the
category's ``train/good`` patch features (coreset), image score = max over patches of the distance to the
nearest bank vector, AUROC of good vs defective test images (docs/method-notes.md §12 item 6). With ImageNet weights
on MVTec AD this should approach the published figures (≈ 99 % with WRN-50; somewhat lower with ResNet-50);
with random weights on the built-in synthetic data it must still be far above 0.5.

Deviation from the reference: no anomaly-map smoothing or re-weighting is involved (the reference's image
score is the max of the raw patch distances as well); scores are Euclidean rather than squared distances,
which leaves the AUROC unchanged. The AUROC is the detection task's own (:func:`bench.metrics.detection.image_auroc`).

``python -m bench detect`` calls :func:`detect` and prints :func:`format_detect`.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import pandas as pd

from bench.datasets import Samples
from bench.features.store import FeatureStore
from bench.metrics.detection import image_auroc

log = logging.getLogger(__name__)

DETECT_COLUMNS = ["category", "n_train", "n_good", "n_defect", "auroc", "bank_size", "seconds", "note"]


def detect(
    samples: Samples,
    store: FeatureStore,
    seed: int = 0,
    coreset_ratio: float = 0.1,
    categories: list[str] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """PatchCore image AUROC (good vs defective test images) per category.

    Args:
        samples: the parsed dataset (``bench.datasets.load_dataset``).
        store: the feature store (backbone, weights, cache).
        seed: run seed (drives the coreset).
        coreset_ratio: coreset fraction of the memory bank.
        categories: restrict to these (default: every category of ``samples``).
        progress: a tqdm bar over the categories on stderr (``bench detect``; the store's own bar counts images).

    Returns:
        One row per category with columns :data:`DETECT_COLUMNS`: ``auroc`` is NaN, with a ``note``, when a
        category has no test/good images (e.g. the shared real screw subset), no defective test images or no
        train images. ``df.attrs`` records the feature key, weights and seed.
    """
    from tqdm import tqdm

    rows = []
    t = samples.table
    for cat in tqdm(categories or samples.categories(), desc="categories", unit="category", disable=not progress):
        sel = t[t.category == cat]
        train = samples.train_paths(cat)
        good = sorted(sel[(sel.split == "test") & (sel.label == "good")].image_path)
        defect = sorted(sel[(sel.split == "test") & (sel.label != "good")].image_path)
        row = dict(category=cat, n_train=len(train), n_good=len(good), n_defect=len(defect), auroc=math.nan,
                   bank_size=0, seconds=0.0, note="")
        missing = [what for what, n in (("train/good", len(train)), ("test/good", len(good)), ("defective test", len(defect))) if n == 0]
        if missing:
            row["note"] = f"no {' and no '.join(missing)} images: AUROC undefined"
            log.warning("detect %s: %s", cat, row["note"])
            rows.append(row)
            continue
        t0 = time.perf_counter()
        bank = store.bank(train, seed=seed, coreset_ratio=coreset_ratio)
        scores = store.anomaly_scores(good + defect, bank)
        y = np.r_[np.zeros(len(good)), np.ones(len(defect))]  # defective = positive
        row.update(auroc=image_auroc(y, scores), bank_size=len(bank),
                   seconds=round(time.perf_counter() - t0, 2))
        rows.append(row)
    df = pd.DataFrame(rows, columns=DETECT_COLUMNS)
    df.attrs.update(feature_key=store.key, weights=store.weights_info.record(), seed=seed, coreset_ratio=coreset_ratio,
                    dataset=samples.dataset, image_fit=store.config.image_fit, dataset_info=samples.info)
    return df


def format_detect(df: pd.DataFrame) -> str:
    """The :func:`detect` table as text, with the mean AUROC over the categories that have one."""
    w = df.attrs.get("weights", {})
    # zero_init_last applies to a random init only; pretrained weights record None (printed as "zero_init_last=None")
    zero = f", zero_init_last={w['zero_init_last']}" if w.get("zero_init_last") is not None else ""
    head = (f"PatchCore image AUROC ({df.attrs.get('dataset', '?')}; backbone {w.get('backbone', '?')}, weights "
            f"{w.get('weights', '?')}{zero}; seed {df.attrs.get('seed', '?')}, "
            f"coreset {df.attrs.get('coreset_ratio', '?')}; image fit {df.attrs.get('image_fit', 'crop')})")
    hold = df.attrs.get("dataset_info", {}).get("holdout")
    if hold:  # e.g. MTD: no defect-free test set of its own
        head += (f"\ntest/good = {hold['n_test_good']} {hold['source']} images held out ({hold['share']:.0%}, "
                 f"seed {hold['seed']}, names sha256 {hold['names_sha256']}); the memory bank uses the other "
                 f"{hold['n_train_good']}")
    shown = df.copy()
    shown["auroc"] = [f"{a:.4f}" if a == a else "n/a" for a in shown["auroc"]]
    body = shown.to_string(index=False)
    valid = df["auroc"].dropna()
    tail = f"mean AUROC over {len(valid)} categories: {valid.mean():.4f}" if len(valid) else "no category has an AUROC"
    return f"{head}\n{body}\n{tail}"
