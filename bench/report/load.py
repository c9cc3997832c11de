"""Results files → one frame of jobs with their configurations, labels and groups: what every table reads.

Rows are read with :func:`bench.results.read_rows` (truncated or corrupt lines are skipped and counted),
checked by the one rule of :mod:`bench.report.rows` (metrics recomputed from the stored predictions, or the row
refused, each counted) and deduplicated per job key with :func:`bench.results.latest_ok`. A *configuration* is everything in a
row except category, shots, seed and bookkeeping (key, timing, env, created, metrics): method, method
options, feature options, backbone weights, dataset, protocol, class set, textures and harness version.
Rows of different configurations are never averaged together; each configuration gets a readable label
(the method name plus only the fields that differ between configurations of that method). A *group* is a
dataset × protocol × class-set universe; its categories, seeds and shots (the union over all its rows,
failed ones included) are the expected grid, so missing seeds, failed jobs and missing categories show as
n/N instead of being averaged as if complete. Accuracies are in percent.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.report.rows import REFUSED, check_rows
from bench.results import DEFAULT_TASK, OK_METRICS, latest_ok, not_a_regular_file, read_rows, row_task
from bench.tasks import tasks
from bench.seeding import stable_int

log = logging.getLogger(__name__)

# Fields that follow from another one: not repeated in labels when that one already differs.
IMPLIED = {"weights": ("weights.source", "weights.sha256", "weights.package", "zero_init_last"),
           "weights.sha256": ("weights.source", "weights.package")}
SHORT = {"weights.sha256": "sha256", "weights.source": "source", "method_config_hash": "config"}


def as_text(v: Any) -> str:
    """A field value as the text that identifies it in a configuration (``None`` → ``"none"``, JSON for containers)."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, sort_keys=True, default=str)
    return str(v)


def config_fields(row: dict[str, Any]) -> dict[str, str]:
    """The fields that identify a row's configuration (all values as strings)."""
    feats = dict(row.get("features") or {})
    feats.setdefault("image_fit", "crop")  # rows from before the field existed were all made with the centre crop
    feats.setdefault("mean", [0.485, 0.456, 0.406])  # ... and with the ImageNet normalisation (bench.images.IMAGENET_*)
    feats.setdefault("std", [0.229, 0.224, 0.225])
    feats.setdefault("bank", "per-run-seed")  # ... and with a memory bank per run seed (before --bank-seed)
    for derived in ("layer_dims", "dim"):  # follow from the backbone, layers and dims already in the row
        feats.pop(derived, None)
    w = dict(row.get("weights") or {})
    sha = w.get("sha256") or ""
    f = {
        **({} if row_task(row) == DEFAULT_TASK else {"task": row_task(row)}),  # classification ids stay as they were
        "method": as_text(row.get("method")),
        "method_config_hash": as_text(row.get("method_config_hash")),
        "backbone": as_text(w.get("backbone") or feats.get("backbone")),
        "weights": as_text(w.get("weights") or feats.get("weights")),
        "weights.source": "" if sha else as_text(w.get("source")),
        "weights.sha256": sha[:12],
        "weights.package": f"{w['package']} {w.get('package_version') or ''}".strip() if w.get("package") else "",
        "zero_init_last": as_text(w.get("zero_init_last", feats.get("zero_init_last"))),
        "dataset": as_text(row.get("dataset")),
        "protocol": as_text(row.get("protocol")),
        "textures": as_text(row.get("textures")),
        "harness": as_text((row.get("env") or {}).get("harness")),
    }
    unit, loc = row.get("unit") or "image", dict(row.get("localisation") or {})
    if unit != "image" or loc.get("queries", "none") != "none":  # rows from before units existed: image, none
        f["unit"] = as_text(unit)
        f["localisation"] = localisation_text(loc)
        if row.get("region_rule"):
            f["region_rule"] = as_text(row.get("region_rule"))
    for k, v in sorted((row.get("method_config") or {}).items()):
        f[f"option.{k}"] = as_text(v)
    for k, v in sorted(feats.items()):
        if k not in ("key", "backbone", "weights", "zero_init_last"):
            f[f"features.{k}"] = as_text(v)
    for k, v in sorted((row.get("class_set") or {}).items()):
        f[f"class_set.{k}"] = as_text(v)
    return f


def localisation_text(loc: dict[str, Any]) -> str:
    """A row's localisation as its column shows it: ``none``, ``gt``, or ``estimated (top3)``."""
    q = str(loc.get("queries", "none"))
    return f"{q} ({loc['estimator']})" if q == "estimated" and loc.get("estimator") else q


def group_label(f: dict[str, str]) -> str:
    """The comparison universe of a configuration: task · dataset · protocol · [unit, localisation ·] class set, the
    task named only when it is not classification and the unit only when it is not the whole image (so the groups of
    earlier results keep their names). No table spans two groups, hence none mixes tasks, units or localisations."""
    cs = f"combined {f.get('class_set.combined', '?')}, good {f.get('class_set.good', '?')}"
    task = f"{f['task']} · " if f.get("task", DEFAULT_TASK) != DEFAULT_TASK else ""
    unit = ""
    if "unit" in f:
        rule = f" per {f['region_rule'].rstrip('s')}" if f.get("region_rule") not in (None, "", "none") else ""
        unit = f"unit {f['unit']}{rule}, masks {f['localisation']} · "
    return f"{task}{f['dataset']} · {f['protocol']} · {unit}{cs}"


def short_name(key: str) -> str:
    return SHORT.get(key, key.split(".", 1)[1] if "." in key else key)


def make_labels(configs: dict[str, dict[str, str]]) -> dict[str, str]:
    """Method name, plus ``[field=value, ...]`` for the fields that differ between configs of that method in a group.

    Groups (dataset · protocol · class set) are never compared with each other, so they are named by their
    section, not in the label.
    """
    by_method: dict[tuple[str, str], list[str]] = defaultdict(list)
    for cid, f in configs.items():
        by_method[(f["method"], group_label(f))].append(cid)
    labels = {}
    for (method, _), ids in by_method.items():
        if len(ids) == 1:
            labels[ids[0]] = method
            continue
        keys = sorted({k for i in ids for k in configs[i]})
        diff = [k for k in keys if k != "method_config_hash" and len({configs[i].get(k, "none") for i in ids}) > 1]
        diff = diff or ["method_config_hash"]
        implied = {d for k in diff for d in IMPLIED.get(k, ())}
        for keys_ in ([k for k in diff if k not in implied], diff):  # shortest labels that are still unique
            cand = {i: f"{method} [" + ", ".join(f"{short_name(k)}={configs[i].get(k, 'none')}" for k in keys_) + "]" for i in ids}
            if len(set(cand.values())) == len(ids):
                break
        labels.update(cand)
    return labels


def weights_desc(f: dict[str, str]) -> str:
    """Backbone and weights, with random-init results flagged as not comparable with the paper."""
    if f["weights"] == "random":
        return f"{f['backbone']} / random init (NOT comparable with the paper)"
    if f.get("weights.package"):  # ImageNet weights from an installed package (no hub offline)
        return f"{f['backbone']} / {f['weights']} ({f['weights.package']}, sha256:{f['weights.sha256']})"
    if f["weights"] == "file" or f["weights.sha256"]:
        return f"{f['backbone']} / {f['weights']} sha256:{f['weights.sha256']}"
    return f"{f['backbone']} / {f['weights']}"


COLLAPSE_SHARE = 0.5
COLLAPSE_RATIO = 2.0
COLLAPSE_RULE = ("⚠ k/n = k of n runs collapsed: their most-predicted class (discovery: their largest cluster) holds "
                 "≥ 50 % of the queries and ≥ 2× that class's true share, so at least half of what it holds is wrong; "
                 "? = rows written before the share was recorded")  # fmt: skip
"""The collapse rule as a table's footnote states it (:func:`collapse_flag`)."""


def collapse_flag(share: Any, true_share: Any) -> bool | None:
    """Whether one run collapsed into one class; ``None`` (unknown, never flagged) for a row without the fields.

    Collapsed: the most-predicted class holds at least :data:`COLLAPSE_SHARE` of the queries and at least
    :data:`COLLAPSE_RATIO` times its true share. Why these two: a class given twice its true share has a precision of
    at most ½, so at least half of the queries put there belong elsewhere, and with half of all predictions there that
    is at least a quarter of the queries misfiled into one class: the mark of a head that learned a bias, not the
    classes (a trained head at 13.9 % put 80 % of the queries into a class of 3 images). A model that follows an
    imbalanced set (predicting its 70 % class 75 % of the time) is never flagged, nor one that spreads its errors;
    a single-cluster discovery row is, whenever its largest class holds at most half of the images. The shares come
    from :func:`bench.metrics.episode_metrics` (``top_pred_*``) and :func:`bench.metrics.discovery.discovery_metrics`
    (``top_cluster_*``).
    """
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in (share, true_share)):
        return None
    return bool(share >= COLLAPSE_SHARE and share >= COLLAPSE_RATIO * true_share - 1e-12)


def top_share(row: dict[str, Any]) -> tuple[Any, Any]:
    """A row's largest prediction share and that class's true share (classification ``top_pred_*``, discovery
    ``top_cluster_*``); ``None`` for rows written before they were recorded."""
    kind = "top_cluster" if "top_cluster_share" in row else "top_pred"  # discovery rows name clusters
    return row.get(f"{kind}_share"), row.get(f"{kind}_true_share")


def share_cell(runs: pd.DataFrame) -> str:
    """Mean largest prediction share of some runs (frame rows), with ``⚠ k/n`` when k of the n runs that recorded it
    collapsed (:data:`COLLAPSE_RULE`); ``?`` when none recorded it, ``(n of N runs)`` when only some did."""
    known = runs[runs.collapsed.notna()]
    if known.empty:
        return "?" if len(runs) else "–"
    text = f"{known.top_share.mean():.2f}"
    k = int(known.collapsed.astype(bool).sum())
    text += f" ⚠ {k}/{len(known)}" if k else ""
    return text if len(known) == len(runs) else f"{text} ({len(known)} of {len(runs)} runs)"



@dataclass
class Results:
    """Rows of one or more results files, one per job, with configuration ids and labels.

    Attributes:
        frame: one row per job; columns config, label, group, task, method, dataset, category, shots, seed,
            status, error, accuracy (the task's metric, :data:`bench.results.OK_METRICS`, in percent), chance,
            majority (percent), n_classes, n_queries, image_auroc and pixel_auroc (percent; detection rows),
            top_share (the largest prediction share, a fraction) and collapsed (:func:`collapse_flag`: True, False or
            None when unknown), row (the raw dict).
        configs: per configuration id: label, group, method and the identifying fields.
    """

    frame: pd.DataFrame
    configs: dict[str, dict[str, str]]
    labels: dict[str, str]
    sources: list[str]
    skipped_lines: int = 0
    skipped_detail: list[str] = field(default_factory=list)
    superseded: int = 0
    recomputed: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def ok(self, metric: str = "accuracy") -> pd.DataFrame:
        """The finished rows with a finite ``metric`` (a column of :attr:`frame`: a task's ok metric, in percent)."""
        f = self.frame
        return f[(f.status == "ok") & np.isfinite(f[metric].astype(float))]

    def groups(self, task: str | None = None) -> list[str]:
        """The groups (comparison universes), of ``task`` only when given."""
        f = self.frame if task is None else self.frame[self.frame.task == task]
        return sorted(f.group.unique())

    def tasks(self) -> list[str]:
        return sorted(self.frame.task.unique())

    def subject(self) -> str:
        """What these results are about, for a document's title: the names of the tasks they hold
        (``Few-shot anomaly detection · Anomaly class discovery``), classification's when there are none."""
        titles = {name: t.title for name, t in tasks().items()}  # the task records' (bench.tasks.Task.title)
        return " · ".join(titles.get(t, t) for t in self.tasks()) or titles[DEFAULT_TASK]

    def grid(self, group: str) -> tuple[list[str], list[int], list[int]]:
        """Expected categories, seeds and shots of a group (union over all its rows, failed ones included)."""
        g = self.frame[self.frame.group == group]
        return sorted(g.category.unique()), sorted(int(s) for s in g.seed.unique()), sorted(int(s) for s in g.shots.unique())

    def config_ids(self, group: str) -> list[str]:
        from bench.report.paper import ablation_order

        ids = [c for c in self.configs if group_label(self.configs[c]) == group]
        return sorted(ids, key=lambda c: (ablation_order(self.configs[c]["method"]), self.labels[c]))

    def intro(self, shown: tuple[str, ...] = ()) -> list[str]:
        """The lines before a document's tables; ``shown``: tasks other than classification that it has sections for."""
        lines = [f"Sources: {', '.join(self.sources)}; {len(self.frame)} job(s), {len(self.configs)} configuration(s)."]
        if self.skipped_lines:
            lines.append(f"skipped {self.skipped_lines} unreadable or incomplete line(s) (e.g. a run killed mid-write): "
                         + "; ".join(self.skipped_detail[:3]))  # fmt: skip
        if self.refused:
            lines.append(f"refused {len(self.refused)} finished row(s) whose metrics are missing or cannot be checked, "
                         "counted as missing runs in every table: " + "; ".join(self.refused[:3]))  # fmt: skip
        if self.recomputed:
            lines.append(f"recomputed the metrics of {len(self.recomputed)} row(s) from their stored predictions, which "
                         "their stored metrics disagreed with (a hand-edited file?): " + "; ".join(self.recomputed[:3]))  # fmt: skip
        failed = self.frame[(self.frame.status != "ok") & (self.frame.status != REFUSED)]
        if len(failed):
            errors = failed.error.fillna("no message").astype(str).str.slice(0, 120).value_counts()
            lines.append(f"{len(failed)} failed job(s), counted as missing in every table: "
                         + "; ".join(f"{n}× {e}" for e, n in errors.head(3).items()))  # fmt: skip
        own = [t for t in self.tasks() if t != DEFAULT_TASK and t in shown]
        if own:
            lines.append(f"rows of the task(s) {', '.join(own)} are in their own sections: their metrics are not comparable "
                         f"with {DEFAULT_TASK} accuracy.")  # fmt: skip
        others = [t for t in self.tasks() if t != DEFAULT_TASK and t not in shown]
        if others:
            lines.append(f"rows of the task(s) {', '.join(others)} are left out of the {DEFAULT_TASK} tables (no table "
                         "mixes tasks).")  # fmt: skip
        if self.superseded:
            lines.append(f"{self.superseded} older run(s) of the same (configuration, category, shots, seed) under "
                         "another job key were superseded by the latest one.")  # fmt: skip
        return lines

    def unfinished(self, cid: str, shots: int | None = None) -> str:
        """The jobs of configuration ``cid`` (at ``shots``) that did not finish, counted with their most common
        reason, for a table's notes: ``2 failed (reason)``, ``1 refused (reason)`` (a row the report could not use,
        :mod:`bench.report.rows`); "" when every job finished."""
        f = self.frame
        sub = f[(f.config == cid) & (f.status != "ok")]
        if shots is not None:
            sub = sub[sub.shots == shots]
        parts = []
        for refused, g in sub.groupby(sub.status == REFUSED):
            reasons = g.error.fillna("no message").map(short_reason).value_counts()
            more = f"; {len(reasons) - 1} other message(s)" if len(reasons) > 1 else ""
            parts.append(f"{len(g)} {'refused' if refused else 'failed'} ({reasons.index[0]}{more})")
        return ", ".join(parts)


def short_reason(text: object, limit: int = 100) -> str:
    """A message on one line, cut at ``limit`` characters (a traceback's last line can be long)."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def results_file(path: str | Path) -> Path:
    """The results file that ``path`` names (a run folder: its ``results.jsonl``), checked to be a regular file.

    Checked before it is opened: a FIFO would block ``open`` until something writes to it (the report hangs), a
    folder or a device fails with a traceback.

    Raises:
        BenchError: naming the path, what it is, and what to pass instead.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "results.jsonl"
    fix = "Pass a results.jsonl file or the folder of a run (its --out)."
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        raise BenchError(f"results file not found: {p}. {fix}") from None
    except OSError as exc:
        raise BenchError(f"cannot read the results file {p} ({exc.strerror}). {fix}") from None
    kind = not_a_regular_file(mode)
    if kind:
        raise BenchError(f"{p} is {kind}, not a results file. {fix}")
    return p


def load_results(paths: Iterable[str | Path]) -> Results:
    """Read results files (or run folders) into :class:`Results`."""
    paths = [str(p) for p in paths]
    files = [results_file(p) for p in paths]
    try:
        read = read_rows(files)
    except OSError as exc:  # unreadable (permissions), or a read error of the disk
        raise BenchError(f"cannot read the results file {exc.filename or ', '.join(paths)} ({exc.strerror or exc}).") from None
    checked = check_rows(read.rows)
    if checked.refused:
        log.warning("refused %d finished row(s) whose metrics are missing or cannot be checked (counted as missing "
                    "runs): %s", len(checked.refused), "; ".join(checked.refused[:3]))  # fmt: skip
    if checked.recomputed:
        log.warning("recomputed the metrics of %d row(s) from their stored predictions, which their stored metrics "
                    "disagreed with: %s", len(checked.recomputed), "; ".join(checked.recomputed[:3]))  # fmt: skip
    rows = latest_ok(checked.rows)
    if not rows:
        raise BenchError(f"no result rows in {', '.join(paths)}: run `python -m bench run ...` first.")
    configs: dict[str, dict[str, str]] = {}
    recs = []
    for r in rows:
        f = config_fields(r)
        cid = str(stable_int(*sorted(f.items())))
        configs.setdefault(cid, f)
        acc = r.get(OK_METRICS.get(row_task(r), "accuracy"))  # the task's own metric (discovery: cluster_accuracy)
        recs.append({
            "config": cid, "group": group_label(f), "task": f.get("task", DEFAULT_TASK), "method": f["method"],
            "dataset": f["dataset"],
            "category": str(r.get("category")), "shots": int(r.get("shots", -1)), "seed": int(r.get("seed", -1)),
            "status": r.get("status"), "error": r.get("error"),
            "accuracy": 100 * float(acc) if acc is not None else np.nan,
            "chance": 100 * float(r["chance"]) if r.get("chance") is not None else np.nan,
            "majority": 100 * float(r["majority"]) if r.get("majority") is not None else np.nan,
            "n_classes": r.get("n_classes"), "n_queries": r.get("n_queries"),
            **{m: 100 * float(r[m]) if isinstance(r.get(m), (int, float)) else np.nan for m in ("image_auroc", "pixel_auroc")},
            "top_share": float(top_share(r)[0]) if collapse_flag(*top_share(r)) is not None else np.nan,
            "collapsed": collapse_flag(*top_share(r)),
            "created": str(r.get("created") or ""), "row": r,
        })  # fmt: skip
    frame = pd.DataFrame(recs)
    frame["_ok"] = (frame.status == "ok") & np.isfinite(frame.accuracy.astype(float))
    frame = frame.sort_values(["_ok", "created"], kind="stable")
    unit = ["config", "category", "shots", "seed"]
    superseded = int(frame.duplicated(unit, keep="last").sum())
    frame = frame.drop_duplicates(unit, keep="last").drop(columns="_ok").reset_index(drop=True)
    labels = make_labels(configs)
    frame["label"] = frame.config.map(labels)
    return Results(frame, configs, labels, paths, read.skipped_lines, read.skipped_detail, superseded, checked.recomputed,
                   checked.refused)  # fmt: skip
