"""Which result rows a report may use: one rule for every task, applied once by :func:`bench.report.load.load_results`
(so by ``bench report``, ``bench leaderboard`` and the ``summary.md`` of ``bench run`` alike).

A finished (``ok``) row is usable when every metric its task's tables read (its :class:`RowRule`) is a finite number
in its range. Where the row stores the predictions those metrics come from (classification ``y_true``/``y_pred``,
discovery ``y_true``/``clusters``, detection ``y_true``/``scores``; :mod:`bench.results`), the metrics are recomputed
from them: a stored number that disagrees with the row's own predictions (a hand-edited ``accuracy``, an ``"ari":
null``) would otherwise show one figure in the accuracy table and another in the confusion matrix. The recomputed
row replaces the stored one and is counted (:attr:`RowCheck.recomputed`). A row whose predictions are malformed, or
that lacks a metric and the predictions to recompute it from, is refused: it keeps its place in the expected grid
with status ``refused`` and the reason (so tables show it as a missing run, n/N), and is counted
(:attr:`RowCheck.refused`). Failed rows (``error``) pass unchanged: they are failed jobs, counted as such.

The metrics are recomputed with the functions the run itself calls: :func:`bench.metrics.classification.count_metrics`
(classification), :func:`bench.metrics.discovery.discovery_metrics` and :func:`bench.metrics.detection.image_auroc`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from bench.results import row_task
from bench.tasks import tasks

REFUSED = "refused"
"""The status a report gives an ``ok`` row it cannot use (never written to a results file)."""
def is_number(v: Any) -> bool:
    """A JSON number (``true`` is not one, though Python's bool is an int)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class Malformed(ValueError):
    """Stored predictions that cannot be what the harness wrote (wrong types, lengths or label range)."""


def labels(row: dict[str, Any], name: str, high: int | None = None) -> np.ndarray:
    """The integer list ``row[name]`` as an array, checked (non-empty, integers, in ``[0, high)`` when given)."""
    v = row.get(name)
    if not isinstance(v, list) or not v or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise Malformed(f"{name} is not a non-empty list of integers")
    a = np.asarray(v, np.int64)
    if a.min() < 0 or (high is not None and a.max() >= high):
        raise Malformed(f"{name} holds labels outside [0, {high})")
    return a


def class_names(row: dict[str, Any]) -> list[str]:
    names = row.get("class_names")
    if not isinstance(names, list) or not names:
        raise Malformed("class_names is missing")
    return [str(n) for n in names]


def classification_metrics(row: dict[str, Any]) -> dict[str, Any]:
    """:func:`bench.metrics.classification.count_metrics` of the row's ``y_true``/``y_pred`` (what the tables read;
    the run wrote them with :func:`~bench.metrics.classification.episode_metrics`), with the counts."""
    from bench.metrics.classification import count_metrics

    names = class_names(row)
    yt, yp = labels(row, "y_true", len(names)), labels(row, "y_pred", len(names))
    if len(yt) != len(yp):
        raise Malformed(f"y_true has {len(yt)} labels and y_pred {len(yp)}")
    return {**count_metrics(yt, yp, names), "n_classes": len(names), "n_queries": len(yt)}


def discovery_row_metrics(row: dict[str, Any]) -> dict[str, Any]:
    """ACC, NMI, ARI and the matched confusion from ``y_true``/``clusters`` (:func:`discovery_metrics`)."""
    from bench.metrics.discovery import discovery_metrics

    names = class_names(row)
    yt, cl = labels(row, "y_true", len(names)), labels(row, "clusters")
    if len(yt) != len(cl):
        raise Malformed(f"y_true has {len(yt)} labels and clusters {len(cl)}")
    return discovery_metrics(yt, cl, names)


def detection_metrics(row: dict[str, Any]) -> dict[str, Any]:
    """Image AUROC from ``y_true`` (1 = defective) and ``scores``."""
    from bench.metrics.detection import image_auroc

    yt, s = labels(row, "y_true", 2), row.get("scores")
    if not isinstance(s, list) or len(s) != len(yt) or not all(is_number(x) for x in s):
        raise Malformed("scores is not a list of numbers, one per y_true label")
    if not np.isfinite(np.asarray(s, float)).all():
        raise Malformed("scores holds non-finite values")
    return {"image_auroc": image_auroc(yt, s)}


@dataclass(frozen=True)
class RowRule:
    """How a report checks an ``ok`` row of one task (its record's ``rows`` hook, :class:`bench.tasks.Task`).

    Attributes:
        metrics: the metrics its tables read from the row, with their ranges.
        tolerance: how far a stored metric may be from the one recomputed from the stored predictions.
        stored: the stored predictions; ``recompute``: the function that recomputes the row's metrics from them.
    """

    metrics: dict[str, tuple[float, float]]
    tolerance: float
    stored: tuple[str, ...]
    recompute: Callable[[dict[str, Any]], dict[str, Any]]


CLASSIFICATION = RowRule({"accuracy": (0.0, 1.0)}, 1e-9, ("y_true", "y_pred"), classification_metrics)
DISCOVERY = RowRule({"cluster_accuracy": (0.0, 1.0), "nmi": (0.0, 1.0), "ari": (-1.0, 1.0)}, 1e-9,
                    ("y_true", "clusters"), discovery_row_metrics)
DETECTION = RowRule({"image_auroc": (0.0, 1.0)}, 1e-3, ("y_true", "scores"), detection_metrics)
"""Detection scores are stored rounded to 6 significant digits (``bench.run.detection``), which can tie two scores and
move the AUROC by a pair: its tolerance is wider."""


def row_rule(task: str) -> RowRule | None:
    """The rule of ``task``'s rows (``None``: a task without one; its rows are used as they are)."""
    record = tasks().get(task)
    return record.hook("rows") if record is not None else None


def describe(row: dict[str, Any]) -> str:
    """A row in a few words, for messages: ``method · category · k-shot · seed s``."""
    shots = f"{row.get('shots')}-shot · " if row.get("shots") else ""  # discovery rows have no shots (0)
    return f"{str(row.get('method'))[:40]} · {str(row.get('category'))[:40]} · {shots}seed {row.get('seed')}"


def number(v: Any) -> str:
    return f"{v:.4g}" if is_number(v) else "null" if v is None else "not a number"


def bad_metric(row: dict[str, Any], rule: RowRule) -> str:
    """The first metric of ``rule`` that ``row`` lacks or holds out of range, as a phrase ("" when all are fine)."""
    for m, (lo, hi) in rule.metrics.items():
        v = row.get(m)
        if not is_number(v) or not math.isfinite(v) or not lo <= v <= hi:
            return f"{m} is {number(v)}" + (f" (expected [{lo:g}, {hi:g}])" if is_number(v) else "")
    return ""


def disagreement(row: dict[str, Any], fresh: dict[str, Any], rule: RowRule) -> str:
    """How the stored metrics differ from ``fresh`` (recomputed), as a phrase ("" when they agree)."""
    tol = rule.tolerance
    for m in rule.metrics:
        v, w = row.get(m), fresh.get(m)
        if not isinstance(w, float) or not math.isfinite(w):
            continue
        if not is_number(v) or not math.isfinite(v) or abs(v - w) > tol:
            return f"{m} {number(v)} stored, {w:.4g} from its {' and '.join(rule.stored)}"
    if "confusion" in fresh and row.get("confusion") is not None and row.get("confusion") != fresh["confusion"]:
        return f"its confusion matrix does not match its {' and '.join(rule.stored)}"
    return ""


def check_row(row: dict[str, Any]) -> tuple[dict[str, Any], str, str]:
    """``(row to use, why it was recomputed, why it was refused)``: the one rule of this module.

    The row to use is ``row`` itself when it is fine, a copy with the recomputed metrics when its stored ones disagree
    with its predictions (or are missing), and a copy with status :data:`REFUSED` and the reason as its ``error``.
    """
    rule = row_rule(row_task(row)) if row.get("status") == "ok" else None
    if rule is None:
        return row, "", ""
    stored, recompute = rule.stored, rule.recompute
    if all(row.get(k) is not None for k in stored):
        try:
            fresh = recompute(row)
        except Malformed as exc:
            return {**row, "status": REFUSED, "error": f"{exc}: its metrics cannot be checked"}, "", str(exc)
        why = disagreement(row, fresh, rule)
        if why:
            row = {**row, **fresh}
    else:
        why = ""
    bad = bad_metric(row, rule)
    if bad:
        missing = [k for k in stored if row.get(k) is None]
        reason = f"{bad} and the row stores no {' or '.join(missing)} to recompute it from" if missing else bad
        return {**row, "status": REFUSED, "error": reason}, "", reason
    return row, why, ""


@dataclass
class RowCheck:
    """The rows after :func:`check_row`, with what was recomputed and what was refused (``describe: reason``)."""

    rows: list[dict[str, Any]]
    recomputed: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def check_rows(rows: list[dict[str, Any]]) -> RowCheck:
    """:func:`check_row` over ``rows``, in order."""
    out = RowCheck([])
    for r in rows:
        use, why, refused = check_row(r)
        out.rows.append(use)
        if why:
            out.recomputed.append(f"{describe(r)}: {why}")
        if refused:
            out.refused.append(f"{describe(r)}: {refused}")
    return out
