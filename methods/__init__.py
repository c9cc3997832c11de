"""Few-shot defect-type classifiers, one file per method family.

Importable as ``bench.methods``. Every module here is imported on first use of the registry, so a new
file with a ``@register_method`` class is all it takes to add a method. Out-of-tree methods: pass
``--plugin my_package.my_module`` to ``python -m bench`` (the module is imported before the run).
"""

from __future__ import annotations

from bench.method import METHODS


def import_all() -> None:
    """Import every method module so that their registrations run (:meth:`bench.registry.Registry.import_all`)."""
    METHODS.import_all()
