"""The document model of reports and leaderboards: :class:`Document` → :class:`Section` → :class:`Table` and
:class:`Figure`.

Each table carries two frames: ``display`` (formatted strings, what a reader sees in Markdown / LaTeX / HTML) and
``data`` (tidy numbers, written to CSV, so that anyone can recompute the displayed figures). Nothing in a table is
typed by hand: every document is built from results files by a command, whose command line the document records.
The writers (:mod:`bench.report.render`, :mod:`bench.report.html`) import this module; it imports neither.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.report.stats import DEFAULT_BOOT, DEFAULT_BOOT_SEED


@dataclass
class Table:
    """One table.

    Attributes:
        key: file-safe identifier (CSV file name, HTML id).
        title: heading.
        display: formatted cells; the index is shown as the first column (its name is the header).
        data: tidy numeric rows for CSV (``display`` is written when None).
        caption: what the numbers are, including the unit of variance.
        notes: footnotes (markers such as † explained).
    """

    key: str
    title: str
    display: pd.DataFrame
    data: pd.DataFrame | None = None
    caption: str = ""
    notes: list[str] = field(default_factory=list)

    def shown(self) -> pd.DataFrame:
        """``display`` with the index as a first column."""
        d = self.display.copy()
        name = d.index.name or ""
        d = d.reset_index()
        d.columns = [name if i == 0 else str(c) for i, c in enumerate(d.columns)]
        return d.fillna("")


@dataclass
class Figure:
    """A plot saved as PNG (embedded in HTML) and SVG."""

    png: Path
    svg: Path | None
    caption: str


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


@dataclass
class Document:
    title: str
    intro: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    command: str | None = None

    def tables(self) -> list[Table]:
        return [t for s in self.sections for t in s.tables]


def slug(text: str) -> str:
    """A file- and id-safe version of ``text``."""
    s = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "table"
    if len(s) > 80:  # keep names short but distinct
        s = s[:71].rstrip("-") + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return s


@dataclass(frozen=True)
class ReportOptions:
    """What ``bench report`` asks of every task's sections (a task record's ``report`` hook, :class:`bench.tasks.Task`):
    the published numbers beside ours (``compare``), the categories of the per-class tables (default: the first), the
    shot count of the detail tables (default: the largest), the bootstrap and where plots go (``None``: none)."""

    compare: bool = False
    categories: list[str] | None = None
    detail_shots: int | None = None
    n_boot: int = DEFAULT_BOOT
    boot_seed: int = DEFAULT_BOOT_SEED
    plots_dir: Path | None = None
