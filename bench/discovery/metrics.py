"""Clustering metrics as AnomalyNCD's code computes them (docs/tasks.md, "Anomaly class discovery").

* accuracy after Hungarian matching of clusters to classes (``scipy.optimize.linear_sum_assignment`` on the
  cluster × class contingency table, maximising matches; AnomalyNCD reports it as "F1": it is micro-F1, i.e. this
  accuracy);
* NMI and ARI (scikit-learn defaults), which do not depend on the cluster ids.

The confusion matrix is reported with the *matched* class names as columns (a cluster matched to no class, possible
only when a method returns more distinct ids than classes, is a column named ``unmatched``): a report never shows a
raw cluster id as if it were a class. These numbers are not comparable with few-shot classification accuracy.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


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
        ``largest_class_share`` (what one cluster scores) and ``n_clusters_used``.
    """
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
