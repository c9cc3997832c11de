"""Few-shot defect-type classifiers, one file per method family.

Importable as ``bench.methods``. Every module here is imported on first use of the registry, so a new
file with a ``@register_method`` class is all it takes to add a method. Out-of-tree methods: pass
``--plugin my_package.my_module`` to ``python -m bench`` (the module is imported before the run).
"""

from __future__ import annotations

import importlib
import pkgutil

_IMPORTED = False


def import_all() -> None:
    """Import every method module so that their registrations run."""
    global _IMPORTED
    if _IMPORTED:
        return
    _IMPORTED = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
