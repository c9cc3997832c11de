"""Anomaly class discovery (``bench run --task discovery``): group a category's images into their K types with no
label (AnomalyNCD, Huang et al., CVPR 2025; docs/tasks.md "Anomaly class discovery").

    from bench.discovery import discovery_set, discovery_metrics
    s = discovery_set(samples, "screw", "ncd")                  # all test images, combined removed, good kept
    m = discovery_metrics(s.labels, clusters, s.class_names)    # Hungarian accuracy, NMI, ARI, matched confusion

Modules: :mod:`~bench.discovery.contract` (the method contract and registry; methods live in ``discoverers/``),
:mod:`~bench.discovery.protocol`, :mod:`~bench.discovery.maps` (anomaly maps and the frame they share with masks),
:mod:`~bench.discovery.mebin` (MEBin) and :mod:`~bench.discovery.crops` (crops and region merging); its metrics are
:mod:`bench.metrics.discovery`. The grid runs it through :mod:`bench.run.discovery`; reports through
:mod:`bench.report.discovery`.
"""

from bench.discovery.contract import DISCOVERERS, Discoverer, DiscoverySet, get_discoverer, register_discoverer
from bench.metrics.discovery import discovery_metrics, hungarian_match
from bench.discovery.protocol import PROTOCOLS, LabelledSet, discovery_set

__all__ = [
    "DISCOVERERS", "Discoverer", "DiscoverySet", "LabelledSet", "PROTOCOLS", "discovery_metrics", "discovery_set",
    "get_discoverer", "hungarian_match", "register_discoverer",
]  # fmt: skip
