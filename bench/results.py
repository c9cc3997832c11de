"""The append-only results store: one JSON object per line, one line per finished job.

Writes take an exclusive ``flock`` on the file and append the whole line with a single ``write`` followed
by ``fsync``, so concurrent runs writing to the same file never interleave, and a killed run leaves at
most one truncated last line. Reading tolerates such a line (and any corrupt line): it is skipped and
counted. Rows are keyed by the job key (a hash of everything that defines the job); a job is finished
when a row with its key and ``status == "ok"`` exists, so re-running a command resumes it. A failed job is
tried again on resume, but its failure row is stored once: a run that fails it again with the same error
appends nothing (:meth:`ResultsStore.append_new`), so resuming a grid with jobs that cannot run never grows
the file.

Row schema (``schema: 1``), top-level keys:

* identity: ``key``, ``task`` (what the job solves, :data:`OK_METRICS`; a row without it is a
  ``classification`` row, written before tasks existed), ``status`` ("ok" | "error"), ``error`` (message or
  null), ``method``,
  ``method_config`` (dict), ``method_config_hash``, ``features`` (feature/backbone config dict with the
  resolved ``layers``, the normalisation ``mean``/``std``, ``layer_dims`` and the feature dim ``dim``, and
  ``decoding``: EXIF orientation, float and 16-bit handling; rows from before ``mean``/``std``/``dim`` existed
  were made with the ImageNet statistics and D = ``target_dim``),
  ``weights`` (what was loaded: backbone, weights, pretrained, source, sha256, zero_init_last, and since
  weights packages ``source_kind`` hub | package | file | random, ``package``, ``package_version``),
  ``dataset``, ``data_root``, ``dataset_manifest`` (hash of the category's file names), ``dataset_content``
  (hash of their names and bytes; part of the job key), ``category``, ``shots``, ``seed``, ``protocol``,
  ``class_set`` ({combined, good, min_defect_types}), ``episode`` ({hash, file, support_rule}).
* outcome (``discovery`` rows: ``cluster_accuracy``, ``nmi``, ``ari``, the matched ``confusion`` with its
  ``confusion_columns``, ``transductive``, ``k_known``, ``maps``; :mod:`bench.run.discovery`): ``class_names``,
  ``n_classes``, ``n_queries``, ``accuracy``, ``macro_f1``, ``balanced_accuracy``,
  ``per_class_recall`` ({class: recall}), ``confusion`` (C×C list), ``chance``, ``majority``,
  ``y_true``, ``y_pred`` (query labels and predictions, for paired statistics), ``top_pred_share``,
  ``top_pred_class``, ``top_pred_true_share`` (the most-predicted class; discovery rows: ``top_cluster_*`` of the
  largest cluster, and ``defects_only``, ``good_share``; rows from before these fields have none: unknown).
* detection rows (``task: detection``, docs/tasks.md §A; :mod:`bench.run.detection`): ``image_auroc``,
  ``pixel_auroc`` (or null), ``auroc_per_type``, ``support`` (the k shot files), ``extra_data``
  (``none`` | ``imagenet`` | ...), ``synthetic_negatives``, ``n_test``, ``n_test_good``, ``n_test_defect``,
  ``scores`` and ``y_true`` (per test image), and ``episode`` pointing at the persisted draw; no class fields.
* provenance: ``timing`` ({stage: seconds}), ``cache`` (hit counts), ``train_log`` (loss curves),
  ``env`` (code version, library versions, device, threads), ``created`` (UTC ISO time).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, MutableMapping

import numpy as np

from bench.errors import BenchError
from bench.tasks import tasks

log = logging.getLogger(__name__)
SCHEMA = 1


def _default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


@dataclass
class ReadResult:
    rows: list[dict[str, Any]]
    skipped_lines: int = 0
    skipped_detail: list[str] = field(default_factory=list)


class ResultsStore:
    """A JSON-lines results file with locking, resume and tolerant reading."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # Incremental view of the finished keys and of the stored failures, (key, error) (see `is_finished`/
        # `append_new`): bytes already scanned.
        self._scanned = 0
        self._finished: set[str] = set()
        self._failures: set[tuple[str, str]] = set()

    def append(self, row: dict[str, Any]) -> None:
        """Append one row atomically (whole line, locked, fsynced)."""
        self._append(row, unique=False)

    def append_new(self, row: dict[str, Any]) -> bool:
        """Append ``row`` unless a finished (``ok``) row with its key is already in the file, or, for a failure
        row, a failure row with its key and the same error.

        The check and the write happen under the same exclusive lock, so two runs (or a resumed run and a
        straggling worker of a killed one) that finish the same job never store it twice, and a job that fails
        the same way on every resume keeps one row. A failure with a new error is appended (reports show a key's
        last row, :func:`latest_ok`: the newest reason). Returns whether the row was written.
        """
        return self._append(row, unique=True)

    def is_finished(self, key: str) -> bool:
        """Whether an ``ok`` row with ``key`` is in the file now (reads only what was appended since last time)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        except OSError:
            return key in self._finished
        try:
            self._scan(fd)
        finally:
            os.close(fd)
        return key in self._finished

    def _scan(self, fd: int) -> None:
        """Add the keys of ``ok`` rows appended since the last scan (complete lines only)."""
        size = os.fstat(fd).st_size
        if size < self._scanned:  # the file was replaced or truncated: start again
            self._scanned, self._finished, self._failures = 0, set(), set()
        if size == self._scanned:
            return
        data = os.pread(fd, size - self._scanned, self._scanned)
        end = data.rfind(b"\n") + 1  # a line still being written (or cut by a kill) waits for its newline
        for raw in data[:end].splitlines():
            if b'"ok"' not in raw and b'"error"' not in raw:
                continue
            try:
                row = json.loads(raw)
            except (ValueError, UnicodeDecodeError, RecursionError):
                continue
            self._note(row)
        self._scanned += end

    def _note(self, row: Any) -> None:
        """Remember a stored row's key as finished (``ok``) or its (key, error) as a stored failure."""
        if not isinstance(row, dict) or not isinstance(row.get("key"), str):
            return
        if row.get("status") == "ok":
            self._finished.add(row["key"])
        elif row.get("status") == "error":
            self._failures.add((row["key"], str(row.get("error"))))

    def _append(self, row: dict[str, Any], unique: bool) -> bool:
        row = {"schema": SCHEMA, **row}
        line = json.dumps(row, default=_default, allow_nan=True, separators=(",", ":")) + "\n"
        data = line.encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise BenchError(
                f"cannot write results to {self.path} ({exc.strerror}). Choose a writable folder with --out."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if unique:
                self._scan(fd)
                if row.get("key") in self._finished or (
                    row.get("status") == "error" and (row.get("key"), str(row.get("error"))) in self._failures
                ):
                    return False
            # A previous writer killed mid-line leaves no trailing newline: start on a fresh line so the
            # partial line stays one skippable line and this row stays intact.
            size = os.fstat(fd).st_size
            if size:
                with open(self.path, "rb") as f:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        data = b"\n" + data
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        except OSError as exc:
            raise BenchError(
                f"failed writing results to {self.path} ({exc.strerror}); earlier rows are intact. "
                + ("Free some space on that disk (or choose another --out), then " if exc.errno == errno.ENOSPC else "")
                + "run the same command again to resume."
            ) from None
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        self._note(row)
        return True

    def read(self) -> ReadResult:
        """All parseable rows, in file order; truncated or corrupt lines are skipped and counted.

        A results file that does not exist yet (a fresh ``--out`` folder) reads as no rows.

        Raises:
            BenchError: the path is not a regular file (:func:`check_results_file`).
        """
        check_results_file(self.path)
        if not self.path.exists():
            return ReadResult(rows=[])
        return read_rows([self.path])

    def finished_keys(self) -> set[str]:
        return {r["key"] for r in self.read().rows if r.get("status") == "ok" and "key" in r}


def check_results_file(path: str | Path, fix: str = "Move it away, or choose another --out.") -> None:
    """Refuse a results path that exists but is not a regular file: a folder, a FIFO, a device, a socket.

    Opening a FIFO blocks until something writes to it (``bench run`` and ``bench report`` hung on a
    ``results.jsonl`` that was one), and a folder or a device cannot hold rows. A path that does not exist yet is
    fine (a fresh ``--out``); a symbolic link is judged by what it points to. ``fix`` ends the message (what the
    command's user can do).

    Raises:
        BenchError: naming the path, what it is, and ``fix``.
    """
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise BenchError(f"cannot use the results file {p} ({exc.strerror}). {fix}") from None
    kind = not_a_regular_file(mode)
    if kind:
        raise BenchError(f"the results file {p} is {kind}: rows are stored in a regular file (JSON lines). {fix}")


def not_a_regular_file(mode: int) -> str:
    """What a path with this ``st_mode`` is, in words, when it is not a regular file ("a folder", "a FIFO (named
    pipe)", "a device", "a socket"); "" for a regular file. The run's and the report's checks of a results path."""
    if stat.S_ISREG(mode):
        return ""
    return (
        "a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
        else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
        else "not a regular file"
    )  # fmt: skip


REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "key": str, "status": str, "method": str, "category": str, "shots": int, "seed": int,
}  # fmt: skip
"""Fields every row has, with their JSON types; a line without them is skipped like a corrupt one."""
class _OkMetrics(MutableMapping[str, str]):
    """Task → metric, read from the task records (:func:`bench.tasks.tasks`; a registered plugin task included); a
    name set here (a test's task without a record) is added on top."""

    def __init__(self) -> None:
        self._extra: dict[str, str] = {}

    def _all(self) -> dict[str, str]:
        return {**{name: t.metric for name, t in tasks().items()}, **self._extra}

    def __getitem__(self, task: str) -> str:
        return self._all()[task]

    def __setitem__(self, task: str, metric: str) -> None:
        self._extra[task] = metric

    def __delitem__(self, task: str) -> None:
        del self._extra[task]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


OK_METRICS: MutableMapping[str, str] = _OkMetrics()
"""The tasks the harness knows, each with the number an ``ok`` row of that task must carry (finite, in [0, 1]): the
``metric`` of each task record (:class:`bench.tasks.Task`)."""
DEFAULT_TASK = "classification"
"""The task of a row without a ``task`` field: rows written before tasks existed are defect-type classification."""


def row_task(row: dict[str, Any]) -> str:
    """The task a row belongs to (:data:`DEFAULT_TASK` when it does not say)."""
    return str(row.get("task") or DEFAULT_TASK)


def row_problem(row: Any) -> str:
    """Why a parsed JSON line is not a usable result row ("" when it is).

    A line can parse and still be useless: a hand-edited or foreign file, or a row of an unknown schema
    (``{"key": "zzz", "status": "ok"}``). Reports index these fields, so such a line is skipped (and counted)
    instead of failing the report with a traceback.
    """
    if not isinstance(row, dict):
        return "not a result row (a JSON object)"
    missing = [k for k, t in REQUIRED_FIELDS.items() if not isinstance(row.get(k), t) or isinstance(row.get(k), bool)]
    if missing:
        return f"not a complete result row (missing or mistyped: {', '.join(missing)})"
    if row["status"] == "ok":
        metric = OK_METRICS.get(row_task(row))
        if metric is None:
            return f"unknown task {str(row.get('task'))[:40]!r}"
        v = row.get(metric)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not 0 <= v <= 1:
            return f"an ok row without a finite {metric} in [0, 1]"
    return ""


def read_rows(paths: Iterable[str | Path]) -> ReadResult:
    """Read rows from results files (or folders containing ``results.jsonl``)."""
    out = ReadResult(rows=[])
    for p in paths:
        p = Path(p)
        if p.is_dir():
            p = p / "results.jsonl"
        if not p.exists():
            raise BenchError(f"results file not found: {p}. Pass a results.jsonl file or the folder of a run (--out).")
        with p.open("rb") as f:
            for i, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw)
                    problem = row_problem(row)
                    if problem:
                        raise ValueError(problem)
                except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                    out.skipped_lines += 1
                    out.skipped_detail.append(f"{p}:{i}: {str(exc)[:80]}")
                    continue
                out.rows.append(row)
    if out.skipped_lines:
        log.warning(
            "skipped %d unreadable or incomplete line(s) (e.g. a run killed mid-write): %s",
            out.skipped_lines,
            "; ".join(out.skipped_detail[:3]),
        )
    return out


def latest_ok(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per job key: the last ``ok`` row, else the last row (so failures stay visible)."""
    by_key: dict[str, dict[str, Any]] = {}
    for r in rows:
        k = r["key"]
        if r.get("status") == "ok" or by_key.get(k, {}).get("status") != "ok":
            by_key[k] = r
    return list(by_key.values())
