"""Few-shot anomaly detection, the second task (docs/tasks.md §A): k normal shots, image AUROC.

    from bench.detection import get_detector, make_normal_shots
    shots = make_normal_shots(samples, "magnetic_tile", shots=4, seed=1)   # 4 seeded train/good images, all test
    spec = get_detector("patchcore-kshot")                                  # registered in detectors/

Modules: :mod:`~bench.detection.detector` (the contract and the registry), :mod:`~bench.detection.episodes` (the
k-shot draws, persisted) and :mod:`~bench.detection.maps` (anomaly maps as PNG files for the discovery task). Its
metrics (image, per-type and pixel AUROC) are in :mod:`bench.metrics.detection`. The jobs run in
:mod:`bench.run.detection`; the detectors live in ``detectors/`` (installed as ``bench.detectors``).
"""

from bench.detection.detector import (
    DETECTION_TASK, DETECTORS, Detector, get_detector, register_detector,
)  # fmt: skip
from bench.detection.episodes import DETECTION_PROTOCOL, NormalShots, make_normal_shots
from bench.detection.maps import write_maps
from bench.metrics.detection import auroc_per_type, image_auroc, pixel_auroc

__all__ = [
    "DETECTION_PROTOCOL", "DETECTION_TASK", "DETECTORS", "Detector", "NormalShots", "auroc_per_type",
    "get_detector", "image_auroc", "make_normal_shots", "pixel_auroc", "register_detector",
    "write_maps",
]  # fmt: skip
