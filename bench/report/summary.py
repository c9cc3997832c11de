"""The compact table printed at the end of ``bench run`` and written to ``summary.md``.

Every task's rows get blocks of their own (its record's ``summary`` hook, :class:`bench.tasks.Task`; detection:
:func:`bench.report.detection.summary_blocks`, image AUROC; discovery: :func:`bench.report.discovery.summary_blocks`,
categories × ACC, NMI, ARI; classification: :func:`classification_blocks`, accuracy).
One block per configuration, as ``bench report`` tells configurations apart (:func:`bench.report.load_results`:
method, its options, backbone and weights, features, dataset, protocol, class set, harness version): two
runs into one folder that differ in a ``--set`` option or in the dataset are two blocks, never one cell with
their seeds pooled. Rows = categories (+ mean), columns = shots, cells = mean ± sample std over seeds (number
of seeds); with one seed there is no spread to show, so the cell is the value alone.

``bench run`` writes it to ``summary.md`` (:func:`run_summary`, :func:`write_summary`) at the end of every run, a
stopped one too (Ctrl-C, SIGTERM): the rows finished so far.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from bench.errors import BenchError
from bench.report.load import Results, load_results, weights_desc
from bench.report.render import md_text
from bench.results import DEFAULT_TASK
from bench.tasks import tasks


def cell(values: pd.Series) -> str:
    """``mean ± std (n)`` in percent; ``value (1)`` for a single seed (a spread of one value is not zero)."""
    n = int(values.count())
    if n == 1:
        return f"{values.mean():.1f} (1)"
    return f"{values.mean():.1f} ± {values.std(ddof=1):.1f} ({n})"


def summary_table(results_file: Path) -> str:
    """Markdown: every task's blocks (its record's ``summary`` hook, :class:`bench.tasks.Task`; each task's metric in
    its own blocks, never mixed), in the order of :func:`bench.tasks.tasks`."""
    try:
        res = load_results([results_file])
    except BenchError:
        return "no finished jobs"
    blocks = [b for task in tasks().values() for b in task.hook("summary")(res)]
    return "\n\n".join(blocks) if blocks else "no finished jobs"


def classification_blocks(res: Results) -> list[str]:
    """The classification task's blocks (its record's ``summary`` hook): one per configuration (grouped as ``bench
    report`` does), categories × shots, accuracy %."""
    ok = res.ok()
    ok = ok[ok.task == DEFAULT_TASK]
    blocks = []
    for (group, label), sub in ok.groupby(["group", "label"], sort=True):
        f = res.configs[sub.config.iloc[0]]
        by_cell = sub.groupby(["category", "shots"]).accuracy
        cells = by_cell.agg(cell).unstack("shots")
        means = by_cell.mean().groupby("shots").mean()
        cells.loc["mean"] = [f"{means[s]:.1f}" for s in cells.columns]
        cells.columns = [f"{s}-shot" for s in cells.columns]
        cells.index = [md_text(c) for c in cells.index]  # a category is a folder name: anything but "/"
        blocks.append(
            f"### {md_text(f'{label}  ({group}; {weights_desc(f)})')}\n\n"
            + tabulate(cells.fillna("–"), headers="keys", tablefmt="github")
            + "\n\naccuracy %, mean ± sample std over seeds (number of seeds; no ± for one seed); mean row = "
            "unweighted mean over categories"
        )
    return blocks


def run_summary(out: Path) -> str:
    """The summary of the rows in ``out/results.jsonl`` so far (``"no results"`` without that file).

    A results path that is not a regular file (the run refuses it before any job) reads as no results: opening a
    FIFO would block.
    """
    results = out / "results.jsonl"
    return summary_table(results) if results.is_file() else "no results"


def write_summary(out: Path, table: str) -> None:
    """Write ``table`` to ``out/summary.md``: atomically (runs sharing the folder may write it at the same time) and
    as UTF-8 whatever the locale (the table holds ``±``; under ``LC_ALL=C`` the default encoding is ASCII).

    Raises:
        OSError: ``summary.md`` could not be written (the results are intact).
    """
    tmp = out / f".summary.md.tmp-{os.getpid()}"
    try:
        tmp.write_text(table + "\n", encoding="utf-8")
        os.replace(tmp, out / "summary.md")
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
