"""Plots for reports and the leaderboard (matplotlib, Agg, no pyplot state): each saved as PNG and SVG.

* :func:`accuracy_vs_shots`: mean accuracy over categories per configuration, with 95 % CI bands.
* :func:`category_bars`: per-category accuracy at one shot count, error bars = 95 % t-interval across seeds.
* :func:`confusion_heatmap`: a row-normalised confusion matrix (summed over seeds) with class names.
* :func:`tsne_scatter`: support and query embeddings before and after a method (paper Figs. 7–8).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure as MplFigure

from bench.errors import BenchError
from bench.report.document import Figure

_SAVE = {"png": {"dpi": 130}, "svg": {}}


def _wrap(text: str, width: int = 70) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def _save(fig: MplFigure, stem: Path, caption: str) -> Figure:
    """Save ``fig`` as ``stem.png`` and ``stem.svg`` (no timestamps, so files are reproducible).

    Raises:
        BenchError: the folder cannot be made or written (read-only, full, a file in the way), naming it.
    """
    fig.tight_layout()
    png, svg = stem.with_suffix(".png"), stem.with_suffix(".svg")
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png, metadata={"Software": None}, **_SAVE["png"])
        fig.savefig(svg, metadata={"Date": None})
    except OSError as exc:
        raise BenchError(f"cannot write the plot {exc.filename or png} ({exc.strerror or exc}). Free some space, choose "
                         "another --out or pass --no-plots.") from None  # fmt: skip
    return Figure(png=png, svg=svg, caption=caption)


def accuracy_vs_shots(
    curves: Mapping[str, pd.DataFrame],
    stem: Path,
    title: str,
    references: Mapping[str, pd.Series] | None = None,
    caption: str = "",
    ylabel: str = "accuracy (%)",
    xlabel: str = "shots per defect type",
) -> Figure:
    """Accuracy (%) versus shots, one line per configuration, shaded 95 % CI (or another metric: ``ylabel``).

    Args:
        curves: label → frame with columns shots, mean_pct, ci_low_pct, ci_high_pct.
        stem: output path without suffix.
        title: plot title.
        references: name → accuracy % by shots (chance, majority), drawn dashed.
        caption: figure caption for documents.
    """
    fig = MplFigure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    for label, d in curves.items():
        d = d[np.isfinite(d.mean_pct.astype(float))].sort_values("shots")
        partial = (d.n < d.N).to_numpy() if {"n", "N"} <= set(d.columns) else np.zeros(len(d), bool)
        line = ax.plot(d.shots, d.mean_pct, marker="o", label=label + (" (incomplete: open markers)" if partial.any() else ""))[0]
        if partial.any():
            ax.plot(d.shots[partial], d.mean_pct[partial], "o", markerfacecolor="white", color=line.get_color())
        ax.fill_between(d.shots, d.ci_low_pct, d.ci_high_pct, color=line.get_color(), alpha=0.18, linewidth=0)
    for name, s in (references or {}).items():
        s = s.dropna()
        if s.empty:
            continue
        ax.plot(s.index, s.values, linestyle="--", color="grey", linewidth=1)
        ax.annotate(name, (s.index[-1], s.values[-1]), fontsize=8, color="grey", xytext=(3, 0), textcoords="offset points")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(_wrap(title), fontsize=10)
    ax.set_xticks(sorted({int(s) for d in curves.values() for s in d.shots}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, stem, caption or title)


def category_bars(means: pd.DataFrame, errors: pd.DataFrame | None, stem: Path, title: str, caption: str = "") -> Figure:
    """Grouped bars: categories on x, one bar per configuration.

    Args:
        means: category × label accuracy %.
        errors: same shape, half-widths of the error bars (NaN = none).
        stem, title, caption: as in :func:`accuracy_vs_shots`.
    """
    means = means.loc[:, means.notna().any(axis=0)]  # configurations without runs at this shot count
    cats, labels = list(means.index), list(means.columns)
    fig = MplFigure(figsize=(max(6, 0.9 * len(cats) * max(1, len(labels)) ** 0.5 + 2), 4.2))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(labels))
    x = np.arange(len(cats))
    for i, lab in enumerate(labels):
        err = None if errors is None else np.nan_to_num(errors[lab].to_numpy(float))
        ax.bar(x + (i - (len(labels) - 1) / 2) * width, means[lab].to_numpy(float), width, yerr=err, capsize=2, label=lab)
    ax.set_xticks(x, cats, rotation=30, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(_wrap(title), fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if labels:
        ax.legend(fontsize=7)
    return _save(fig, stem, caption or title)


def confusion_heatmap(
    counts: np.ndarray, class_names: Sequence[str], stem: Path, title: str, caption: str = "",
    columns: Sequence[str] | None = None, xlabel: str = "predicted",
) -> Figure:
    """Row-normalised confusion matrix (rows = true class, columns = predicted), counts annotated.

    ``columns`` names the columns when they differ from the rows (discovery: the matched class names plus
    ``unmatched``); ``xlabel`` says what they are.
    """
    counts = np.asarray(counts, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    cols = list(columns) if columns is not None else list(class_names)
    n, m = len(class_names), len(cols)
    fig = MplFigure(figsize=(2.5 + 0.55 * m, 2 + 0.5 * n))
    ax = fig.add_subplot()
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(m), cols, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(m):
            ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.6 else "black")  # fmt: skip
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_title(_wrap(title, 50), fontsize=9)
    return _save(fig, stem, caption or title)


def tsne_scatter(
    panels: Mapping[str, np.ndarray],
    labels: Sequence[int],
    is_support: Sequence[bool],
    class_names: Sequence[str],
    stem: Path,
    title: str,
) -> Figure:
    """Side-by-side 2-D embeddings; colour = class, marker = support (star) or query (dot).

    Args:
        panels: panel title → (N, 2) coordinates (same N and order in every panel).
        labels: (N,) class index of each point.
        is_support: (N,) whether each point is a support image.
        class_names: the class names, for the legend.
        stem, title: output path without suffix and overall title.
    """
    y, sup = np.asarray(labels), np.asarray(is_support, dtype=bool)
    fig = MplFigure(figsize=(5.2 * len(panels), 4.8))
    colors = colormaps["tab10" if len(class_names) <= 10 else "tab20"]
    for k, (name, xy) in enumerate(panels.items(), 1):
        ax = fig.add_subplot(1, len(panels), k)
        for c, cname in enumerate(class_names):
            q = (y == c) & ~sup
            s = (y == c) & sup
            ax.scatter(xy[q, 0], xy[q, 1], s=14, color=colors(c % colors.N), alpha=0.75, label=f"{cname} (query)")
            ax.scatter(xy[s, 0], xy[s, 1], s=120, marker="*", color=colors(c % colors.N), edgecolors="black",
                       linewidths=0.7, label=f"{cname} (support)")  # fmt: skip
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(title, fontsize=10)
    return _save(fig, stem, title)
