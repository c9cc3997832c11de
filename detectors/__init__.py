"""Few-shot anomaly detectors (docs/tasks.md §A), one file per detector.

Importable as ``bench.detectors``. Every module here whose name does not start with ``_`` is imported on first use
of the registry (:data:`bench.detection.DETECTORS`), so a new file with a ``@register_detector`` class is all it takes
to add a detector. What several share (augmented views, pooled embeddings, the Gaussian score) is library code:
:mod:`bench.features.embed`.
"""

from __future__ import annotations

from bench.detection.detector import DETECTORS


def import_all() -> None:
    """Import every detector module so that their registrations run (:meth:`bench.registry.Registry.import_all`)."""
    DETECTORS.import_all()
