"""Dataset adapters: each turns a dataset root into one table of samples.

Importable as ``bench.datasets`` (the folder is mapped there at install time, so this project never
creates a top-level ``datasets`` module that would shadow Hugging Face ``datasets``). Every module in
this folder is imported on first use; a module registers its adapter with :func:`register_dataset`.
"""

from __future__ import annotations

import importlib
import pkgutil

from bench.datasets._base import (
    DATASETS,
    SAMPLE_COLUMNS,
    DatasetOptions,
    Samples,
    load_dataset,
    register_dataset,
)

__all__ = ["DATASETS", "SAMPLE_COLUMNS", "DatasetOptions", "Samples", "load_dataset", "register_dataset", "import_all"]

_IMPORTED = False


def import_all() -> None:
    """Import every adapter module in this package so that their registrations run."""
    global _IMPORTED
    if _IMPORTED:
        return
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    _IMPORTED = True
