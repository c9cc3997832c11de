"""Results → tables → documents: what ``bench report``, ``bench leaderboard`` and ``summary.md`` show.

    from bench.report import build_report, load_results, write_document
    res = load_results(["runs/"])                      # one frame of jobs, configurations and their labels
    write_document(build_report(res), "md", Path("runs/report/report.md"))

It reads result rows only (:mod:`bench.results`): nothing here imports the run or the feature pipeline.
Modules: :mod:`~bench.report.load`, :mod:`~bench.report.tables`, :mod:`~bench.report.leaderboard`,
:mod:`~bench.report.summary`, :mod:`~bench.report.stats`, :mod:`~bench.report.paper`, the document model
:mod:`~bench.report.document` and its writers :mod:`~bench.report.render` (Markdown, LaTeX, CSV) and
:mod:`~bench.report.html`, :mod:`~bench.report.plots` with its titles (:mod:`~bench.report.headings`), and the plain
defaults the commands state, :mod:`~bench.report.defaults`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.report.defaults import FORMATS
    from bench.report.document import Document, Figure, Section, Table
    from bench.report.leaderboard import build_leaderboard
    from bench.report.load import Results, load_results
    from bench.report.render import write_document
    from bench.report.tables import build_report

_WHERE = {
    "FORMATS": "defaults", "Document": "document", "Figure": "document", "Results": "load", "Section": "document",
    "Table": "document", "build_leaderboard": "leaderboard", "build_report": "tables", "load_results": "load",
    "write_document": "render",
}  # fmt: skip
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    """A public name of the package, imported from its module on first use (PEP 562): importing
    ``bench.report.defaults`` must not load pandas and scipy (the report commands' ``--help``, issue #24)."""
    if name not in _WHERE:
        raise AttributeError(f"module 'bench.report' has no attribute {name!r}")
    return getattr(importlib.import_module(f"bench.report.{_WHERE[name]}"), name)
