"""Where the harness keeps generated data, cached features and results.

* cache: ``$BENCH_CACHE`` or ``~/.cache/fsad-bench`` (generated datasets, features, banks, pretrained
  classifiers). Safe to delete; ``python -m bench cache clear`` does it.
* results: ``results/`` in the current folder unless ``--out`` says otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path


CHECKOUT = Path(__file__).resolve().parent.parent
"""The folder that holds ``bench/`` (a source checkout's root: ``benchmarks/``, ``.git``, ``docs/``)."""


def cache_dir() -> Path:
    """Root of the on-disk cache (created on demand)."""
    p = Path(os.environ.get("BENCH_CACHE", "~/.cache/fsad-bench")).expanduser()
    p.mkdir(parents=True, exist_ok=True)
    return p


def shared_data_dir() -> Path | None:
    """The read-only real image sets (``$BENCH_SHARED_DATA`` or ``../shared/data`` next to the checkout)."""
    env = os.environ.get("BENCH_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(CHECKOUT.parent / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    return None
