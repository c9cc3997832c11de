"""Dataset adapters: each turns a dataset root into one table of samples.

Importable as ``bench.datasets`` (the folder is mapped there at install time, so this project never
creates a top-level ``datasets`` module that would shadow Hugging Face ``datasets``). Every module in
this folder is imported on first use and registers its adapter with :func:`register_dataset`; helpers
shared by adapters are in underscore modules, and the pseudo-defect generator, which registers nothing, is
the sub-package :mod:`bench.datasets.pseudo`.
"""

from __future__ import annotations

from bench.datasets._base import (
    DATASETS,
    SAMPLE_COLUMNS,
    DatasetOptions,
    Samples,
    check_image_files,
    dataset_image_fit,
    describe_ignored,
    load_dataset,
    register_dataset,
)

__all__ = [
    "DATASETS", "SAMPLE_COLUMNS", "DatasetOptions", "Samples", "check_image_files", "dataset_image_fit",
    "describe_ignored", "import_all", "load_dataset", "register_dataset",
]  # fmt: skip


def import_all() -> None:
    """Import every adapter module in this package so that their registrations run
    (:meth:`bench.registry.Registry.import_all`)."""
    DATASETS.import_all()
