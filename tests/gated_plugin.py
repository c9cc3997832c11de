"""A test plugin (``--plugin gated_plugin``): ``gated-protonet`` is ``protonet`` that waits for a gate file.

Its ``fit`` blocks until the file named by ``BENCH_TEST_GATE`` exists (or 300 s pass). A run that includes it
therefore cannot finish before the test opens the gate, which lets ``test_resilience`` interrupt a run at a
known moment without racing its end. Predictions are protonet's, unchanged.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.method import SupportSet, register_method
from bench.methods.protonet import ProtoNet


@register_method("gated-protonet", description="protonet that waits for the file $BENCH_TEST_GATE (tests only)")
class GatedProtoNet(ProtoNet):
    """Nearest class mean, after the gate file exists (tests only)."""

    def fit(self, support: SupportSet) -> None:
        gate = Path(os.environ.get("BENCH_TEST_GATE", ""))
        deadline = time.monotonic() + 300
        while not gate.is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        super().fit(support)
