"""Plots for reports and the leaderboard (matplotlib, Agg, no pyplot state): each saved as PNG and SVG.

* :func:`accuracy_vs_shots`: mean accuracy over categories per configuration, with 95 % CI bands.
* :func:`category_bars`: per-category accuracy at one shot count, error bars = 95 % t-interval across seeds; with
  one category, one horizontal bar per configuration, ranked (a grouped chart of one group is one crowded bar).
* :func:`confusion_heatmap`: a row-normalised confusion matrix (summed over seeds) with class names.
* :func:`tsne_scatter`: support and query embeddings before and after a method (paper Figs. 7–8).

Every figure is meant to be pasted into a paper or a slide as it is: a title for people and a subtitle with the
protocol, class set and backbone (:mod:`bench.report.headings`, the random-init caveat included) inside the picture;
legends outside the axes, so they cover no data; each configuration its own colour, marker, line style and hatch
(:func:`method_styles`: no two of up to 20 share a colour); saved with a tight bounding box.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure as MplFigure

from bench.errors import BenchError
from bench.report.document import Figure

_SAVE = {"png": {"dpi": 130}, "svg": {}}

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p")
LINESTYLES = ("-", "--", "-.", ":")
HATCHES = ("", "//", "..", "xx")
REFERENCE_LINES = ("--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)))
REFERENCE_MARKERS = ("x", "+", "1", "|")
"""Reference curves (chance, majority, published numbers) are grey; each its own dash pattern and marker (a published
curve may be one point), named in the legend."""


@dataclass(frozen=True)
class Style:
    """How one configuration is drawn in every figure of a document."""

    color: tuple[float, float, float]
    marker: str
    linestyle: str
    hatch: str


def _palette() -> list[tuple[float, float, float]]:
    """tab20's 10 strong colours, then their 10 light twins: the first ten methods get the clearest colours."""
    tab20 = list(colormaps["tab20"].colors)
    return tab20[0::2] + tab20[1::2]


def method_styles(labels: Sequence[str]) -> dict[str, Style]:
    """A style per label, in order, no two alike: 20 distinct colours (so no two of up to 20 configurations share one);
    a light twin (i + 10) of a strong colour gets another marker, line style and hatch than its twin, so the pair
    stays apart in grey print too; past 20 the colours repeat with another marker and line style."""
    palette = _palette()
    out = {}
    for i, label in enumerate(labels):
        tier = i // 10
        out[label] = Style(palette[i % 20], MARKERS[(i + 3 * tier) % len(MARKERS)],
                           LINESTYLES[tier % len(LINESTYLES)], HATCHES[tier % len(HATCHES)])  # fmt: skip
    return out


def _wrap(text: str, width: int = 70) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def _heading(fig: MplFigure, ax: Axes, title: str, subtitle: str, width: int = 80) -> None:
    """The title above the figure, the subtitle (what the numbers depend on, and caveats) above the axes."""
    fig.suptitle(_wrap(title, width), fontsize=11, fontweight="bold")
    if subtitle:
        ax.set_title(_wrap(subtitle, int(width * 1.35)), fontsize=8, color="0.25")


def _legend_outside(ax: Axes, n_entries: int) -> None:
    """The legend right of the axes (two columns past 16 entries), never over the data."""
    if n_entries:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False,
                  ncol=1 if n_entries <= 16 else 2)  # fmt: skip


def _save(fig: MplFigure, stem: Path, caption: str) -> Figure:
    """Save ``fig`` as ``stem.png`` and ``stem.svg`` (no timestamps, so files are reproducible), cut to what is
    drawn (the legends outside the axes included).

    Raises:
        BenchError: the folder cannot be made or written (read-only, full, a file in the way), naming it.
    """
    fig.tight_layout()
    png, svg = stem.with_suffix(".png"), stem.with_suffix(".svg")
    tight = {"bbox_inches": "tight", "pad_inches": 0.12}
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png, metadata={"Software": None}, **_SAVE["png"], **tight)
        fig.savefig(svg, metadata={"Date": None}, **tight)
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
    subtitle: str = "",
) -> Figure:
    """Accuracy (%) versus shots, one line per configuration, shaded 95 % CI (or another metric: ``ylabel``).

    Args:
        curves: label → frame with columns shots, mean_pct, ci_low_pct, ci_high_pct.
        stem: output path without suffix.
        title: plot title (for people: what, and on which dataset).
        references: name → accuracy % by shots (chance, majority, published curves), drawn grey and dashed, named
            in the legend (a label written at a line's end runs past the axes).
        caption: figure caption for documents.
        subtitle: protocol, class set, backbone and caveats (:mod:`bench.report.headings`).
    """
    fig = MplFigure(figsize=(8.6, 4.6))
    ax = fig.add_subplot()
    styles = method_styles(list(curves))
    for label, d in curves.items():
        st = styles[label]
        d = d[np.isfinite(d.mean_pct.astype(float))].sort_values("shots")
        partial = (d.n < d.N).to_numpy() if {"n", "N"} <= set(d.columns) else np.zeros(len(d), bool)
        ax.plot(d.shots, d.mean_pct, color=st.color, marker=st.marker, linestyle=st.linestyle, markersize=5,
                label=label + (" (incomplete: open markers)" if partial.any() else ""))  # fmt: skip
        if partial.any():
            ax.plot(d.shots[partial], d.mean_pct[partial], st.marker, markerfacecolor="white", color=st.color)
        ax.fill_between(d.shots, d.ci_low_pct, d.ci_high_pct, color=st.color, alpha=0.12, linewidth=0)
    refs = [(name, s.dropna()) for name, s in (references or {}).items() if not s.dropna().empty]
    for j, (name, s) in enumerate(refs):
        ax.plot(s.index, s.values, linestyle=REFERENCE_LINES[j % len(REFERENCE_LINES)], color="0.45", linewidth=1.1,
                marker=REFERENCE_MARKERS[j % len(REFERENCE_MARKERS)], markersize=6, label=name)  # fmt: skip
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    _heading(fig, ax, title, subtitle)
    ax.set_xticks(sorted({int(s) for d in curves.values() for s in d.shots}))
    ax.grid(alpha=0.3)
    _legend_outside(ax, len(curves) + len(refs))
    return _save(fig, stem, caption or title)


def category_bars(
    means: pd.DataFrame, errors: pd.DataFrame | None, stem: Path, title: str, caption: str = "", subtitle: str = "",
    xlabel: str = "accuracy (%)", single_title: str | None = None,
) -> Figure:
    """Grouped bars: categories on x, one bar per configuration; one category: :func:`ranked_bars` instead.

    Args:
        means: category × label accuracy %.
        errors: same shape, half-widths of the error bars (NaN = none).
        stem, title, caption, subtitle: as in :func:`accuracy_vs_shots`.
        single_title: the title with one category, ``{category}`` standing for its name (default: ``title: name``).
    """
    means = means.loc[:, means.notna().any(axis=0)]  # configurations without runs at this shot count
    if len(means.index) == 1:
        cat = str(means.index[0])
        return ranked_bars(means.iloc[0], None if errors is None else errors.iloc[0], stem,
                           single_title.replace("{category}", cat) if single_title else f"{title}: {cat}", caption, subtitle,
                           xlabel)  # fmt: skip
    cats, labels = list(means.index), list(means.columns)
    styles = method_styles(labels)
    fig = MplFigure(figsize=(min(16.0, max(7.0, 0.3 * len(cats) * max(1, len(labels)) ** 0.7 + 3.5)), 4.6))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(labels))
    x = np.arange(len(cats))
    for i, lab in enumerate(labels):
        st = styles[lab]
        err = _error_bars(None if errors is None else errors[lab])
        ax.bar(x + (i - (len(labels) - 1) / 2) * width, means[lab].to_numpy(float), width, yerr=err, capsize=2,
               label=lab, color=st.color, hatch=st.hatch, edgecolor="white" if not st.hatch else "0.3", linewidth=0.4)  # fmt: skip
    ax.set_xticks(x, cats, rotation=30, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_ylabel(xlabel)
    _heading(fig, ax, title, subtitle)
    ax.grid(axis="y", alpha=0.3)
    _legend_outside(ax, len(labels))
    return _save(fig, stem, caption or title)


def _error_bars(half_widths: pd.Series | None) -> np.ndarray | None:
    """Error-bar half-widths, NaN where there is none (fewer seeds than an interval needs): matplotlib draws nothing
    there, where a zero would draw a cap that reads as a certain value; ``None`` when no bar has one."""
    if half_widths is None:
        return None
    a = half_widths.to_numpy(float)
    return a if np.isfinite(a).any() else None


def ranked_bars(
    means: pd.Series, errors: pd.Series | None, stem: Path, title: str, caption: str = "", subtitle: str = "",
    xlabel: str = "accuracy (%)",
) -> Figure:
    """One horizontal bar per configuration, best at the top, the value written beside each bar: the figure for a
    single category, whose grouped bar chart would be one cluster of unlabelled bars read off a legend."""
    styles = method_styles(list(means.index))
    order = means.dropna().sort_values(ascending=True)
    fig = MplFigure(figsize=(7.0, 1.6 + 0.32 * max(1, len(order))))
    ax = fig.add_subplot()
    y = np.arange(len(order))
    err = _error_bars(None if errors is None else errors.reindex(order.index))
    ax.barh(y, order.to_numpy(float), xerr=err, capsize=2, color=[styles[k].color for k in order.index],
            hatch=None, edgecolor="0.3", linewidth=0.4)  # fmt: skip
    for bar, k in zip(ax.patches, order.index):
        bar.set_hatch(styles[k].hatch)
    reach = order.to_numpy(float) + (0.0 if err is None else np.nan_to_num(err))  # where each bar's value label goes
    for yi, v, x in zip(y, order.to_numpy(float), reach):
        ax.annotate(f"{v:.1f}", (x, yi), xytext=(4, 0), textcoords="offset points", va="center", fontsize=7)
    ax.set_yticks(y, list(order.index), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_xlim(0, max([100.0, *(reach * 1.08)]))
    ax.grid(axis="x", alpha=0.3)
    _heading(fig, ax, title, subtitle, width=70)
    return _save(fig, stem, caption or title)


def confusion_heatmap(
    counts: np.ndarray, class_names: Sequence[str], stem: Path, title: str, caption: str = "",
    columns: Sequence[str] | None = None, xlabel: str = "predicted", subtitle: str = "",
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
    fig = MplFigure(figsize=(max(5.6, 2.5 + 0.55 * m), 2.8 + 0.5 * n))  # room for the title and subtitle
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
    _heading(fig, ax, title, subtitle, width=max(55, 8 * m))
    return _save(fig, stem, caption or title)


def tsne_scatter(
    panels: Mapping[str, np.ndarray],
    labels: Sequence[int],
    is_support: Sequence[bool],
    class_names: Sequence[str],
    stem: Path,
    title: str,
    subtitle: str = "",
) -> Figure:
    """Side-by-side 2-D embeddings; colour = class, marker = support (star) or query (dot).

    Args:
        panels: panel title → (N, 2) coordinates (same N and order in every panel).
        labels: (N,) class index of each point.
        is_support: (N,) whether each point is a support image.
        class_names: the class names, for the legend.
        stem, title: output path without suffix and overall title.
        subtitle: what the figure depends on (shots, seed, backbone and its caveat), under the title.
    """
    y, sup = np.asarray(labels), np.asarray(is_support, dtype=bool)
    fig = MplFigure(figsize=(5.2 * len(panels), 4.8))
    colors = _palette()
    for k, (name, xy) in enumerate(panels.items(), 1):
        ax = fig.add_subplot(1, len(panels), k)
        for c, cname in enumerate(class_names):
            q = (y == c) & ~sup
            s = (y == c) & sup
            ax.scatter(xy[q, 0], xy[q, 1], s=14, color=colors[c % len(colors)], alpha=0.75, label=f"{cname} (query)")
            ax.scatter(xy[s, 0], xy[s, 1], s=120, marker="*", color=colors[c % len(colors)], edgecolors="black",
                       linewidths=0.7, label=f"{cname} (support)")  # fmt: skip
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.suptitle(_wrap(title, 100) + ("\n" + _wrap(subtitle, 130) if subtitle else ""), fontsize=10)
    return _save(fig, stem, title)
