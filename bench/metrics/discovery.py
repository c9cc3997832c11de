"""Clustering metrics as AnomalyNCD's code computes them (docs/tasks.md, "Anomaly class discovery").

* accuracy after Hungarian matching of clusters to classes (``scipy.optimize.linear_sum_assignment`` on the
  cluster × class contingency table, maximising matches; AnomalyNCD reports it as "F1": it is micro-F1, i.e. this
  accuracy);
* NMI and ARI (scikit-learn defaults), which do not depend on the cluster ids.

The confusion matrix is reported with the *matched* class names as columns (a cluster matched to no class, possible
only when a method returns more distinct ids than classes, is a column named ``unmatched``): a report never shows a
raw cluster id as if it were a class. These numbers are not comparable with few-shot classification accuracy.

Two more figures per row, both computed here so that every discovery row carries them:

* ``defects_only``: the same ACC, NMI and ARI over the set's defect images alone (``good`` left out of the images and
  the classes, clusters re-matched), and ``good_share``, the good images' share of the set (0 without ``good``).
  Under protocol ``ncd`` an oracle that pools inside ground-truth masks is handed ``good`` for free: a good image
  has an empty mask, so every good image gets the same vector and they all land in one cluster, matched to
  ``good``; its all-images figures are inflated by the whole good share. Its defects-only figure is the honest one,
  and the same figure of the other rows is what it is compared with (docs/tasks.md, "Anomaly class discovery").
* ``top_cluster_share``: the share of the images in the largest cluster, with ``top_cluster_class`` (the class it
  was matched to, ``unmatched`` when none) and ``top_cluster_true_share`` (that class's share of the set; 0 when
  unmatched): what a report needs to flag a collapse into one cluster (:func:`bench.report.load.collapse_flag`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

NORMAL = "good"
"""The class of normal images (protocol ``ncd``, :mod:`bench.discovery.protocol`)."""


def hungarian_match(y_true: np.ndarray, clusters: np.ndarray, k: int) -> dict[int, int]:
    """The one-to-one map cluster → class that maximises the number of images whose cluster maps to their class.

    Args:
        y_true: (N,) class indices in [0, k).
        clusters: (N,) cluster ids (any non-negative integers).
        k: number of classes.

    Returns:
        ``{cluster id: class index}`` for the matched clusters (at most k of them).
    """
    ids = np.unique(clusters)
    table = np.zeros((len(ids), k), np.int64)  # rows: clusters, columns: classes
    pos = {c: i for i, c in enumerate(ids)}
    for c, y in zip(clusters, y_true):
        table[pos[c], y] += 1
    rows, cols = linear_sum_assignment(table, maximize=True)
    return {int(ids[r]): int(c) for r, c in zip(rows, cols)}


def discovery_metrics(y_true: Sequence[int], clusters: Sequence[int], class_names: Sequence[str]) -> dict:
    """Metrics of one discovery job.

    Args:
        y_true: (N,) true class indices.
        clusters: (N,) cluster ids returned by the method.
        class_names: the K class names.

    Returns:
        ``cluster_accuracy``, ``nmi``, ``ari``, ``y_pred`` (each image's matched class index, -1 when its cluster
        matched no class), ``confusion`` (K × K', true class × matched class, K' = K plus one ``unmatched`` column
        when needed), ``confusion_columns``, ``cluster_to_class`` (matched cluster id → class name),
        ``largest_class_share`` (what one cluster scores), ``n_clusters_used``, ``good_share``, ``defects_only``
        ({cluster_accuracy, nmi, ari, n_images}), ``top_cluster_share``, ``top_cluster_class`` and
        ``top_cluster_true_share`` (module docstring).
    """
    out = matched_metrics(y_true, clusters, class_names)
    yt, cl = np.asarray(y_true, np.int64), np.asarray(clusters, np.int64)
    return {**out, **defect_metrics(yt, cl, class_names), **top_cluster(yt, cl, out["cluster_to_class"], class_names)}


def matched_metrics(y_true: Sequence[int], clusters: Sequence[int], class_names: Sequence[str]) -> dict:
    """ACC, NMI, ARI and the matched confusion of :func:`discovery_metrics`, without the figures derived from them."""
    yt, cl = np.asarray(y_true, np.int64), np.asarray(clusters, np.int64)
    k = len(class_names)
    match = hungarian_match(yt, cl, k)
    yp = np.array([match.get(int(c), -1) for c in cl], np.int64)
    cols = list(class_names) + (["unmatched"] if (yp < 0).any() else [])
    cm = np.zeros((k, len(cols)), np.int64)
    for t, p in zip(yt, yp):
        cm[t, p if p >= 0 else k] += 1
    counts = np.bincount(yt, minlength=k)
    return {
        "cluster_accuracy": float((yt == yp).mean()) if len(yt) else float("nan"),
        "nmi": float(normalized_mutual_info_score(yt, cl)),
        "ari": float(adjusted_rand_score(yt, cl)),
        "y_pred": yp.tolist(),
        "confusion": cm.tolist(),
        "confusion_columns": cols,
        "cluster_to_class": {str(c): class_names[y] for c, y in sorted(match.items())},
        "largest_class_share": float(counts.max() / counts.sum()) if counts.sum() else float("nan"),
        "n_clusters_used": int(len(np.unique(cl))),
    }


def defect_metrics(yt: np.ndarray, cl: np.ndarray, class_names: Sequence[str]) -> dict:
    """``good_share`` and ``defects_only``: ACC, NMI and ARI over the defect images only, the clusters re-matched
    to the defect classes (the good images' clusters stay as the method made them; NaN when no defect image)."""
    names = list(class_names)
    good = names.index(NORMAL) if NORMAL in names else -1
    keep = yt != good
    defect_names = [c for i, c in enumerate(names) if i != good]
    index = {old: new for new, old in enumerate(i for i in range(len(names)) if i != good)}
    sub = np.array([index[int(y)] for y in yt[keep]], np.int64)
    m = matched_metrics(sub, cl[keep], defect_names) if len(sub) else {"cluster_accuracy": np.nan, "nmi": np.nan, "ari": np.nan}
    return {"good_share": float((~keep).mean()) if len(yt) else float("nan"),
            "defects_only": {"cluster_accuracy": m["cluster_accuracy"], "nmi": m["nmi"], "ari": m["ari"],
                             "n_images": int(keep.sum())}}  # fmt: skip


def top_cluster(yt: np.ndarray, cl: np.ndarray, cluster_to_class: dict[str, str], class_names: Sequence[str]) -> dict:
    """The largest cluster's share of the set, the class it was matched to and that class's true share (ties: the
    cluster whose class is the smallest, the one most over-filled)."""
    ids, sizes = np.unique(cl, return_counts=True)
    true_share = {c: float((yt == i).mean()) for i, c in enumerate(class_names)}
    matched = [cluster_to_class.get(str(int(c)), "unmatched") for c in ids]
    best = max(range(len(ids)), key=lambda i: (sizes[i], -true_share.get(matched[i], 0.0)))
    return {"top_cluster_share": float(sizes[best] / len(cl)), "top_cluster_class": matched[best],
            "top_cluster_true_share": true_share.get(matched[best], 0.0)}  # fmt: skip
