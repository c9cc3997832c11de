"""Reference rows of a discovery leaderboard: what grouping with no information scores (docs/tasks.md, "Anomaly class
discovery", the cheap methods a leaderboard needs).

* ``random-ids``: each image gets a cluster id drawn uniformly from [0, K) (the run seed's ``method/random-ids``
  stream). Its Hungarian accuracy sits a little above the largest class share on small sets (matching picks the best
  of K! assignments), its NMI and ARI near 0.
* ``one-cluster``: every image in cluster 0. Hungarian matching gives it the largest class, so its accuracy is the
  largest class's share (the "majority" row of a classification table); NMI and ARI are 0. Reports flag it as a
  collapse (one cluster holds every image) whenever its largest class holds at most half of them: the flag's own check.
* Under protocol ``ncd`` both are scored on all images and, like every row, on the defect images only
  (``defects_only``, :mod:`bench.metrics.discovery`): the figure an oracle row is compared on, since ground-truth masks
  hand it ``good`` (docs/tasks.md, "Oracle rows under ncd").

Neither reads pixels, features or maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.discovery.contract import Discoverer, DiscoverySet, register_discoverer


@dataclass(frozen=True)
class ReferenceConfig:
    rule: str = "random"  # "random" | "one"

    def __post_init__(self) -> None:
        if self.rule not in ("random", "one"):
            raise ValueError(f"rule must be 'random' or 'one', got {self.rule!r}")


@register_discoverer("random-ids", description="reference row: uniformly random cluster ids (seeded)")
@register_discoverer("one-cluster", overrides={"rule": "one"}, description="reference row: every image in one cluster")
class ReferenceDiscoverer(Discoverer):
    """Reference rows: random ids or one cluster (AnomalyNCD's tables have neither; they anchor ours).

    Output: (N,) ids, uniform in [0, K) (``rule="random"``) or all 0 (``rule="one"``).
    """

    Config = ReferenceConfig

    @classmethod
    def reads(cls, config: ReferenceConfig) -> set[str]:
        return set()

    def fit_predict(self, data: DiscoverySet) -> np.ndarray:
        if self.config.rule == "one":
            return np.zeros(len(data), np.int64)
        return self.ctx.rng("random-ids").integers(0, data.k, size=len(data))
