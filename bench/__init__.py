"""fsad-bench: a benchmark harness for few-shot anomaly multi-classification (defect-type classification).

Data flows one way: dataset (``bench.datasets``) → episodes (:mod:`bench.episodes`) → features, cached
(:mod:`bench.features`) → method (``bench.methods``, on :mod:`bench.method`) → metrics → results store
(:mod:`bench.results`) → reports (:mod:`bench.report`). :mod:`bench.run` runs the grid, :mod:`bench.cli` is the
command line; docs/architecture.md describes the layout and its rules.
"""

from __future__ import annotations

from pathlib import Path as _Path

__version__ = "0.1.0"

# In a checkout the repository's top-level `datasets/` and `methods/` folders are this package's
# `bench.datasets` and `bench.methods` (an install maps them there too, see pyproject.toml), so no
# top-level `datasets` module is ever imported or installed.
_here = _Path(__file__).resolve().parent
if not (_here / "datasets").exists() and (_here.parent / "datasets" / "__init__.py").exists():
    __path__.append(str(_here.parent))  # type: ignore[name-defined]  # noqa: F821

from bench.compat import install_torchvision_hook, offline_defaults, tune_malloc, tune_numpy_hugepages  # noqa: E402

offline_defaults()
install_torchvision_hook()  # torchvision is patched when first imported: no torch at start-up
tune_malloc()
tune_numpy_hugepages()  # before NumPy loads (bench.compat: first touches of large arrays stall otherwise)
