"""Stronger backbones (#22): AnomalyDINO's image score.

* ``patchcore-kshot`` takes AnomalyDINO's image score (the mean of the top 1 % patch distances) as an option; the
  variant ``anomalydino`` sets it. The default stays the maximum, with the same job keys.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.errors import ConfigError
from bench.method import config_dict

# --------------------------------------------------------------------------------------------- AnomalyDINO's score
def test_top_one_percent_score_on_a_hand_made_map() -> None:
    from bench.detection.detector import get_detector
    from bench.detectors.patchcore_kshot import top_fraction_score

    maps = np.zeros((2, 20, 20), np.float32)  # 400 patches: the top 1 % is 4 of them
    maps[0, 0, :5] = [10, 8, 6, 4, 2]
    maps[1, 3, 3] = 5.0  # one hot patch: the mean of the top 4 is 5 / 4
    want = np.array([(10 + 8 + 6 + 4) / 4, 5 / 4], np.float32)
    np.testing.assert_allclose(top_fraction_score(maps, 0.01), want)
    np.testing.assert_array_equal(top_fraction_score(maps, 0.0), [10, 5])  # the maximum
    np.testing.assert_array_equal(top_fraction_score(maps[:, :9, :9], 0.01), [10, 5])  # 81 patches: ⌊0.81⌋ = 0 → max
    spec = get_detector("anomalydino")
    det = spec.cls(spec.make_config({}), None)
    det.anomaly_maps = lambda paths: maps
    np.testing.assert_allclose(det.score(["a", "b"]), want)
    kshot = get_detector("patchcore-kshot")
    assert config_dict(kshot.make_config({})) == {"coreset_ratio": 1.0}
    with pytest.raises(ConfigError, match=r"patchcore-kshot': top_fraction must lie in \[0, 1\]"):
        kshot.make_config({"top_fraction": 1.5})


