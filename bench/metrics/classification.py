"""Per-episode metrics: the paper's micro accuracy plus what a careful reader also needs.

accuracy = correct / queries (the paper's metric); macro-F1 and balanced accuracy are not inflated by
majority classes (docs/datasets.md §1.1); per-class recall and the confusion matrix show which defect types
are confused; chance (1/C) and majority-class rates are reference rows for every table.

``top_pred_share`` is the share of the queries given the most-predicted class, with that class (``top_pred_class``)
and its true share among the queries (``top_pred_true_share``): a trained head can collapse, putting most queries
into one class (a small one, even) and ending below chance; reports flag it by a stated rule
(:func:`bench.report.load.collapse_flag`). Ties: the tied class with the fewest true queries, the one most over-filled.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score


def episode_metrics(y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str]) -> dict:
    """Metrics of one episode: :func:`count_metrics` plus macro-F1 and balanced accuracy.

    Args:
        y_true: (Q,) true class indices.
        y_pred: (Q,) predicted class indices.
        class_names: the C class names.
    """
    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    labels = list(range(len(class_names)))
    counted = count_metrics(yt, yp, class_names)
    return {
        "accuracy": counted.pop("accuracy"),
        "macro_f1": float(f1_score(yt, yp, labels=labels, average="macro", zero_division=0)),
        "balanced_accuracy": float(balanced_accuracy_score(yt, yp)),
        **counted,
    }


def count_metrics(y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str]) -> dict:
    """What the report's tables read of an episode, from the counts alone: accuracy, per-class recall, the confusion
    matrix, chance, majority and the top prediction. Reports recompute these for every row they load
    (``bench/report/rows.py``), so they leave out the F1 and balanced accuracy (2.4 ms a row with them, 0.014 ms without; measured on a
    5-class, 60-query episode)."""
    yt, yp = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    k = len(class_names)
    cm = np.bincount(yt * k + yp, minlength=k * k).reshape(k, k)  # = sklearn's confusion_matrix, without its checks
    support = cm.sum(axis=1)
    recall = {name: (float(cm[i, i] / support[i]) if support[i] else float("nan")) for i, name in enumerate(class_names)}
    return {
        "accuracy": float((yt == yp).mean()) if len(yt) else float("nan"),
        "per_class_recall": recall,
        "confusion": cm.tolist(),
        "chance": 1.0 / len(class_names),
        "majority": float(support.max() / support.sum()) if support.sum() else float("nan"),
        **top_prediction(yt, yp, class_names),
    }


def top_prediction(yt: np.ndarray, yp: np.ndarray, class_names: Sequence[str]) -> dict:
    """The most-predicted class, its share of the predictions and its true share of the queries (module docstring)."""
    c = len(class_names)
    pred, true = np.bincount(yp, minlength=c), np.bincount(yt, minlength=c)
    top = max(range(c), key=lambda i: (pred[i], -true[i]))
    return {"top_pred_share": float(pred[top] / len(yp)), "top_pred_class": class_names[top],
            "top_pred_true_share": float(true[top] / len(yt))}  # fmt: skip
