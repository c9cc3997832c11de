"""The reports' plain defaults, which ``bench report`` and ``bench leaderboard`` state in their help: constants only,
importing nothing, so that their ``--help`` and a one-line option error answer before pandas and scipy load (issue #24).
:mod:`bench.report.render` and :mod:`bench.report.stats` use them under the same names.
"""

from __future__ import annotations

FORMATS = ("md", "csv", "latex", "html")
"""The document formats (:func:`bench.report.render.write_document`)."""
DEFAULT_BOOT = 10_000
"""Bootstrap resamples of a 95% interval (``--boot``; :mod:`bench.report.stats`)."""
DEFAULT_BOOT_SEED = 0
"""Seed of the bootstrap generator (``--boot-seed``)."""
