"""Results → tables → documents: what ``bench report``, ``bench leaderboard`` and ``summary.md`` show.

    from bench.report import load_results
    res = load_results(["results/"])                   # rows, configurations and their labels

It reads result rows only (:mod:`bench.results`): nothing here imports the run or the feature pipeline.
"""

from bench.report.load import Results, load_results

__all__ = ["Results", "load_results"]
