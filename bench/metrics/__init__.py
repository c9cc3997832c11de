"""Every metric the harness computes, one module per task: the run writes them into rows and ``report/rows.py``
recomputes them from a row's stored predictions with the same functions (docs/architecture.md).

    from bench.metrics import episode_metrics, image_auroc, discovery_metrics
    m = episode_metrics(y_true, y_pred, class_names)            # classification: accuracy, macro-F1, confusion, ...
    a = image_auroc(labels, scores)                              # detection: defective = positive, ties count 1/2
    d = discovery_metrics(y_true, clusters, class_names)        # discovery: Hungarian ACC, NMI, ARI

Modules: :mod:`~bench.metrics.classification` (one few-shot episode), :mod:`~bench.metrics.detection` (the one image
AUROC, AUROC per defect type, pixel AUROC; docs/tasks.md §A.1) and :mod:`~bench.metrics.discovery` (clustering
metrics as AnomalyNCD computes them). The package reads no run state and no features: reports may import it.
"""

from bench.metrics.classification import episode_metrics, top_prediction
from bench.metrics.detection import PIXEL_FRAME, auroc_per_type, fast_auroc, image_auroc, pixel_auroc
from bench.metrics.discovery import discovery_metrics, hungarian_match

__all__ = [
    "PIXEL_FRAME", "auroc_per_type", "discovery_metrics", "episode_metrics", "fast_auroc", "hungarian_match",
    "image_auroc", "pixel_auroc", "top_prediction",
]  # fmt: skip
