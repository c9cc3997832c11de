"""Anomaly class discovery methods, one file per method family (``bench run --task discovery``).

Importable as ``bench.discoverers``. Every module here is imported on first use of the registry
(:data:`bench.discovery.contract.DISCOVERERS`), so a new file with a ``@register_discoverer`` class is all it takes
to add a method; ``python -m bench list discoverers`` lists them.
"""

from __future__ import annotations

from bench.discovery.contract import DISCOVERERS


def import_all() -> None:
    """Import every discovery-method module so that their registrations run."""
    DISCOVERERS.import_all()
