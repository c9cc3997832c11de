"""Results → tables → documents: what ``bench report``, ``bench leaderboard`` and ``summary.md`` show.

    from bench.report import build_report, load_results, write_document
    res = load_results(["results/"])                   # one frame of jobs, configurations and their labels
    write_document(build_report(res), "md", Path("report/report.md"))

It reads result rows only (:mod:`bench.results`): nothing here imports the run or the feature pipeline.
Modules: :mod:`~bench.report.load`, :mod:`~bench.report.tables`, :mod:`~bench.report.leaderboard`,
:mod:`~bench.report.summary`, :mod:`~bench.report.stats`, :mod:`~bench.report.paper`, the document model
:mod:`~bench.report.document` and its writers :mod:`~bench.report.render` (Markdown, LaTeX, CSV) and
:mod:`~bench.report.html`, and :mod:`~bench.report.plots` with its titles (:mod:`~bench.report.headings`).
"""

from bench.report.document import Document, Figure, Section, Table
from bench.report.leaderboard import build_leaderboard
from bench.report.load import Results, load_results
from bench.report.render import FORMATS, write_document
from bench.report.tables import build_report

__all__ = [
    "FORMATS", "Document", "Figure", "Results", "Section", "Table", "build_leaderboard", "build_report", "load_results",
    "write_document",
]  # fmt: skip
