"""Where the harness keeps generated data, cached features and results.

* cache: ``--cache-dir``, else ``$BENCH_CACHE``, else :data:`DEFAULT_CACHE` (generated datasets, features,
  banks, pretrained classifiers). Safe to delete; ``python -m bench cache clear`` does it. The root has one
  writer, :func:`set_cache_root`: a run's preflight, each of its worker processes and ``bench detect`` call it
  with ``--cache-dir``, and every reader asks :func:`cache_dir` (or :func:`cache_root` for a root given as an
  argument), so code that has no argument for it (dataset generation, foreground masks) finds the same folder.
* results: ``results/`` in the current folder unless ``--out`` says otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "BENCH_CACHE"
DEFAULT_CACHE = "~/.cache/fsad-bench"

CHECKOUT = Path(__file__).resolve().parent.parent
"""The folder that holds ``bench/`` (a source checkout's root: ``benchmarks/``, ``.git``, ``docs/``)."""


def cache_root(path: str | Path | None = None) -> Path:
    """The cache root: ``path`` when given (``--cache-dir``), else ``$BENCH_CACHE``, else :data:`DEFAULT_CACHE`;
    user-expanded and absolute, not created."""
    return Path(path or os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser().resolve()


def cache_dir() -> Path:
    """Root of the on-disk cache of this process (created on demand)."""
    p = cache_root()
    p.mkdir(parents=True, exist_ok=True)
    return p


def set_cache_root(path: str | Path) -> Path:
    """Make ``path`` the cache root of this process (and of processes it starts); returns it resolved.

    The only writer of ``$BENCH_CACHE`` in the harness.
    """
    root = cache_root(path)
    os.environ[CACHE_ENV] = str(root)
    return root


def shared_data_dir() -> Path | None:
    """The read-only real image sets (``$BENCH_SHARED_DATA`` or ``../shared/data`` next to the checkout)."""
    env = os.environ.get("BENCH_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(CHECKOUT.parent / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    return None
