"""The run's plain defaults and bounds, which the command line states in its help: constants only, importing nothing.

:mod:`bench.run.config` (which imports torch, the datasets and the methods) uses them; ``bench.cli`` reads them from
here, so that ``python -m bench --help`` and a one-line option error answer without loading torch (issue #24).
"""

from __future__ import annotations

DEFAULT_CORESET_RATIO = 0.1
"""The share of the PatchCore memory bank kept (``--coreset-ratio``) by every command (docs/method-notes.md §4)."""
DEFAULT_BANK_SEED = 1
"""The seed of the memory bank's coreset (``--bank-seed``) for every run seed: the bank does not depend on the
episode, so one bank per category serves all seeds (issue #23). 1, so that the rows of seed 1 are those of the
harness that built a bank per seed."""
PER_RUN_SEED = "per-run-seed"
"""``--bank-seed per-run-seed``: each run seed builds its own bank (coreset seeded by the run seed), as before."""
DEFAULT_DEVICE = "auto"
"""``--device`` of every command: CUDA when available, else CPU (:func:`bench.run.config.resolve_device`)."""

MAX_LIST_VALUES = 1000
"""The most values a list option of a run takes (``--shots``, ``--seeds``, ``--categories``, ``--method``,
``--layers``): every value is a whole set of jobs, and ``--seeds 1-10000000000`` once ran out of memory while the
list was built. ``bench.cli.run`` reads ranges with this bound, before building them."""
