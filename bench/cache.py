"""A generic content-addressed on-disk cache (features, memory banks, nearest-neighbour assignments, ...).

Layout: ``<root>/<kind>/<namespace>/<name><suffix>`` where ``root`` is :func:`bench.paths.cache_dir`
(``$BENCH_CACHE``) unless given, ``kind`` is a top-level folder (``features``, ``banks``, ``nn``, and the
folders other modules keep there), and names are hashes of everything that changes the content
(:func:`stable_hash`). A key never has to be invalidated: when an input that matters changes, the key changes.

Safety:

* every write goes to a temporary file in the destination folder and is then renamed into place with
  :func:`os.replace` (atomic on POSIX and Windows). Two processes writing the same entry both write complete
  files; the last rename wins and the content is identical. A killed process leaves at most a ``.tmp-*``
  file, which is never read as an entry (``clear`` removes them; ``info`` counts them).
* ``.npy`` entries end with a 16-byte trailer after the array data: :data:`NPY_TRAILER_MAGIC` and the CRC-32 of
  the data (``zlib.crc32``, about 0.5 ms per 3.2 MB feature entry on our CPU; the cheapest standard checksum
  that is position-sensitive). Entries are validated on read: header, dtype, shape, exact file size and the
  checksum, so a file overwritten with NaN or with garbage of the right size is detected. An entry that fails is
  reported as a miss with a warning naming it, so the caller recomputes and overwrites it. A process checks an
  entry's checksum once: later reads of the unchanged file (same inode, size, mtime and ctime) skip it. NumPy
  still reads the files (``np.load`` ignores the trailing bytes). Entries without the trailer (written before
  it existed) fail the size check; the feature, bank and nearest-neighbour keys changed with it
  (``FEATURE_VERSION`` 2), so such entries are not even looked up.

* every write goes through :func:`os.write` (:func:`atomic_write`), never through C ``fwrite``: a full disk then
  raises :class:`OSError` with ``errno.ENOSPC`` (NumPy's ``tofile`` reports a short write as an errno-less
  "N requested and M written"), which stops a run with the "disk full" message of :mod:`bench.run.job`.

What is the cache's own (the only files :func:`clear` and :func:`prune` delete):

* the root is a cache of this harness when it holds the harness's :data:`bench.paths.CACHE_TAG`, written when the
  harness creates the folder (:func:`bench.paths.make_cache_root`). A root without it is accepted only as a cache
  written before tags existed, when everything in it is the cache's own (the kinds of :data:`KINDS` and nothing
  else at the top, and in each only files named as the harness names them); it is then tagged. Any other folder
  (a git checkout, a dataset, a project given to ``--cache-dir`` by mistake) is refused with nothing touched.
* inside a cache, an entry is a file whose path under its kind matches the kind's naming scheme (:data:`KINDS`:
  hex content hashes in hex namespaces, the synthetic generator's layout); leftovers of interrupted writes
  (``.tmp-*`` and the kinds' own temporary names) count as the cache's too. Anything else under a kind folder
  (``features/my_features.csv``) is left alone, and reported.

:func:`info`, :func:`clear` and :func:`prune` back ``python -m bench cache info|clear|prune``.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import math
import os
import re
import stat
import struct
import threading
import uuid
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from bench.errors import BenchError, ConfigError, brief
from bench.paths import (
    CACHE_ENV, CACHE_TAG, DEFAULT_CACHE, cache_root, cache_root_is_named, has_cache_tag, make_cache_root,
    write_cache_tag,
)

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"


def stable_hash(obj: Any, length: int = 32) -> str:
    """Hex sha256 of ``obj`` serialised as canonical JSON (sorted keys); the same in every process.

    Args:
        obj: JSON-serialisable data (tuples become lists; other objects are converted with ``str``).
        length: number of hex characters to keep.
    """
    payload = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


def hash_memo_dir(root: str | Path | None = None) -> Path:
    """Where :func:`file_sha256` keeps its on-disk memo: ``<cache root>/hashes`` (``None`` = ``$BENCH_CACHE``).

    The root is created and tagged here (:func:`bench.paths.make_cache_root`) when it does not exist yet: the
    memo is often the first thing a run writes into a new cache.
    """
    return make_cache_root(root) / "hashes"


_FILE_HASHES: dict[tuple[str, int, int], str] = {}
_FILE_HASH_LOCK = threading.Lock()


def file_sha256(path: str | Path, memo_dir: Path | None = None) -> str:
    """Hex sha256 of a file's bytes, memoised by the file's (resolved path, size, mtime_ns, inode, ctime_ns).

    Args:
        path: the file.
        memo_dir: also keep the memo on disk here (one 64-byte file per image file), so that another process
            does not hash the file again; ``None`` = in-process memo only. A rewrite of the file changes its
            mtime and ctime (ctime cannot be set back by users), so a stale memo is not plausible.
    """
    p = Path(path)
    st = p.stat()
    memo = (str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    with _FILE_HASH_LOCK:
        hit = _FILE_HASHES.get(memo)
    if hit is not None:
        return hit
    disk = memo_dir / stable_hash(list(memo), 40) if memo_dir is not None else None
    if disk is not None:
        try:
            text = disk.read_text()
            if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
                with _FILE_HASH_LOCK:
                    _FILE_HASHES[memo] = text
                return text
        except OSError:
            pass
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    with _FILE_HASH_LOCK:
        _FILE_HASHES[memo] = digest
    if disk is not None:
        try:
            atomic_write(disk, lambda f: f.write(digest.encode()))
        except OSError as exc:  # a read-only cache only costs speed
            log.debug("cannot write hash memo %s: %s", disk, exc)
    return digest


def forget_file_hashes() -> None:
    """Drop the in-process memos of :func:`file_sha256` and of verified cache entries (benchmarks use it to
    time a second run as a new process sees it)."""
    with _FILE_HASH_LOCK:
        _FILE_HASHES.clear()
        _VERIFIED.clear()


def atomic_write(path: Path, write: Callable[[Any], None]) -> Path:
    """Write ``path`` atomically: ``write(fileobj)`` fills a temporary file in the same folder, then rename.

    Args:
        path: final location (parent folders are created).
        write: called with a binary file object opened for writing.

    Returns:
        ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            write(_FdWriter(fd))
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno is not None and exc.filename is None:  # os.write names no file: name the entry
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


class _FdWriter:
    """The file object :func:`atomic_write` hands to its callback: every ``write`` is an :func:`os.write` loop.

    A short write (the disk filled up mid-entry) is continued, so the OS's own error follows with its errno
    (``ENOSPC``, ``EDQUOT``, ``EROFS``), which the run turns into its "disk full" stop (:mod:`bench.run.job`).
    A real file object would let :func:`numpy.save` use ``ndarray.tofile`` (C ``fwrite``), which reports the same
    event as an ``OSError`` without errno ("802816 requested and 479200 written"); NumPy writes to any other object
    with ``write`` (a copy of at most 16 MiB per call, far less than computing the entry costs).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        while view:
            n = os.write(self.fd, view)
            if n <= 0:  # a regular file never takes 0 bytes of a non-empty write unless the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            view = view[n:]
        return size


NPY_TRAILER_MAGIC = b"fsadcrc1"
_TRAILER = struct.Struct("<8sI4x")  # magic, CRC-32 of the array data, padding: 16 bytes after the data


def _crc(data: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(data).reshape(-1).view(np.uint8))


def save_npy(path: Path, array: np.ndarray) -> Path:
    """Atomically save ``array`` as a ``.npy`` file (no pickle) followed by its checksum trailer."""
    arr = np.ascontiguousarray(array)
    trailer = _TRAILER.pack(NPY_TRAILER_MAGIC, _crc(arr))

    def write(f: Any) -> None:
        np.save(f, arr, allow_pickle=False)
        f.write(trailer)

    return atomic_write(path, write)


def _npy_offset(f: Any, size: int, path: Path, shape: Sequence[int] | None, dtype: np.dtype | str | None) -> int | None:
    """Parse the header of an open ``.npy`` entry; the data offset, or None when it does not validate.

    The file must be exactly header + data + trailer (:func:`save_npy`); the checksum is checked by the readers.
    """
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            hdr_shape, fortran, hdr_dtype = np.lib.format.read_array_header_1_0(f)
        else:
            hdr_shape, fortran, hdr_dtype = np.lib.format.read_array_header_2_0(f)
    except (OSError, ValueError) as exc:
        log.warning("cache entry %s is unreadable (%s); recomputing it", path, exc)
        return None
    offset = f.tell()
    if (
        fortran
        or hdr_dtype.hasobject
        or size != offset + math.prod(hdr_shape) * hdr_dtype.itemsize + _TRAILER.size
        or (shape is not None and tuple(hdr_shape) != tuple(shape))
        or (dtype is not None and hdr_dtype != np.dtype(dtype))
    ):
        log.warning("cache entry %s is incomplete or has the wrong shape/dtype; recomputing it", path)
        return None
    return offset


# Entries whose checksum this process has verified, by (path, device, inode, size, mtime_ns, ctime_ns): a file
# rewritten or replaced since has another key (ctime cannot be set back), so a repeated read of an unchanged
# entry (every shot, seed and method of a grid reads the same ones) costs no second checksum.
_VERIFIED: set[tuple[str, int, int, int, int, int]] = set()
_VERIFIED_MAX = 1 << 20


def _identity(path: Path, st: os.stat_result) -> tuple[str, int, int, int, int, int]:
    return (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _trailer_ok(trailer: bytes, data: np.ndarray, path: Path, ident: tuple[str, int, int, int, int, int]) -> bool:
    """Check the trailer read after the data against the data's CRC-32 (a warning names a damaged entry)."""
    if ident in _VERIFIED:
        return True
    if len(trailer) == _TRAILER.size:
        magic, crc = _TRAILER.unpack(trailer)
        if magic == NPY_TRAILER_MAGIC and crc == _crc(data):
            with _FILE_HASH_LOCK:
                if len(_VERIFIED) >= _VERIFIED_MAX:
                    _VERIFIED.clear()
                _VERIFIED.add(ident)
            return True
    log.warning("cache entry %s is damaged (its checksum does not match its data); recomputing it", path)
    return False


def check_npy(path: Path, shape: Sequence[int] | None = None, dtype: np.dtype | str | None = None) -> int | None:
    """Validate a ``.npy`` entry's header and size without reading its data (the readers check the checksum).

    Args:
        path: the entry.
        shape: expected shape (``None`` = any).
        dtype: expected dtype (``None`` = any).

    Returns:
        The byte offset of the data, or ``None`` when the file is missing, truncated, not C-ordered or of
        the wrong shape/dtype (a warning is logged for an existing but bad file; callers recompute it).
    """
    try:
        with path.open("rb") as f:
            return _npy_offset(f, os.fstat(f.fileno()).st_size, path, shape, dtype)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cache entry %s is unreadable (%s); recomputing it", path, exc)
        return None


def load_npy(
    path: Path,
    shape: Sequence[int] | None = None,
    dtype: np.dtype | str | None = None,
    mmap: bool = False,
) -> np.ndarray | None:
    """Load a ``.npy`` entry if it exists, is complete and its checksum matches, else ``None``.

    Args:
        path: the entry.
        shape: expected shape (``None`` = any).
        dtype: expected dtype (``None`` = any).
        mmap: return a read-only memory map instead of reading the data (the checksum is still verified,
            which reads the mapped pages once).
    """
    try:
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            offset = _npy_offset(f, st.st_size, path, shape, dtype)
            if offset is None:
                return None
            f.seek(0)
            if mmap:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            else:
                arr = np.lib.format.read_array(f, allow_pickle=False)
            f.seek(st.st_size - _TRAILER.size)
            trailer = f.read(_TRAILER.size)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("cache entry %s is unreadable (%s); recomputing it", path, exc)
        return None
    return arr if _trailer_ok(trailer, arr, path, _identity(path, st)) else None


def read_npy_into(path: Path, out: np.ndarray, dtype: np.dtype | str | None = None) -> bool:
    """Read a ``.npy`` entry straight into ``out`` (one read, no memory map, no extra copy for equal dtypes).

    Args:
        path: the entry; it must have ``out.shape`` and dtype ``dtype``, and a matching checksum.
        out: C-contiguous destination (its dtype may differ from the stored one: then converted).
        dtype: stored dtype expected (``None`` = ``out.dtype``).

    Returns:
        False (``out`` untouched or partly written) when the entry is missing or invalid.
    """
    stored = np.dtype(dtype) if dtype is not None else out.dtype
    dest = out if stored == out.dtype and out.flags.c_contiguous else np.empty(out.shape, stored)
    try:
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            if _npy_offset(f, st.st_size, path, out.shape, stored) is None:
                return False
            n = f.readinto(memoryview(dest).cast("B"))
            trailer = f.read(_TRAILER.size)
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("cache entry %s is unreadable (%s); recomputing it", path, exc)
        return False
    if n != dest.nbytes or not _trailer_ok(trailer, dest, path, _identity(path, st)):
        return False
    if dest is not out:
        out[...] = dest
    return True


def save_json(path: Path, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    data = json.dumps(obj, indent=1, sort_keys=True, default=str).encode()
    return atomic_write(path, lambda f: f.write(data))


def load_json(path: Path) -> Any | None:
    """Read a JSON entry, ``None`` when missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class DiskCache:
    """Entry paths under a cache root.

    Args:
        root: cache root; ``None`` = :func:`bench.paths.cache_dir` (``$BENCH_CACHE``).
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = make_cache_root(root)  # created and tagged here when new

    def path(self, kind: str, namespace: str, name: str, suffix: str = ".npy") -> Path:
        """``<root>/<kind>/<namespace>/<name><suffix>``."""
        return self.root / kind / namespace / f"{name}{suffix}"

    def __repr__(self) -> str:
        return f"DiskCache({str(self.root)!r})"


_HEX = r"[0-9a-f]{16,64}"  # content hashes and keys: 16 to 64 hex digits in every version of the harness
_SYNTHETIC_FILE = (
    r"(?:\.complete\.json|\.generating\.json|(?:train|test)/[^/]+/\d{3}\.png|ground_truth/[^/]+/\d{3}_mask\.png)"
)
KINDS: dict[str, re.Pattern[str]] = {
    "features": re.compile(rf"{_HEX}(?:-[a-z0-9-]+)?/(?:array-)?{_HEX}\.npy"),
    "banks": re.compile(rf"{_HEX}/{_HEX}\.(?:npy|json)"),
    "nn": re.compile(rf"{_HEX}/(?:array-)?{_HEX}\.npy"),
    "hashes": re.compile(_HEX),
    "pretrained": re.compile(rf"{_HEX}\.pt|\.{_HEX}\.pt\.\d+\.tmp"),
    "foreground": re.compile(rf"{_HEX}\.png|\.fg-[A-Za-z0-9_]+\.tmp"),
    "synthetic": re.compile(
        rf"[A-Za-z0-9_]+-v\d+-seed-?\d+/(?:\.[^/]+\.lock|(?:\.[^/]+\.tmp-[^/]+|[^/.][^/]*)/{_SYNTHETIC_FILE})"
    ),
}
"""The kinds (top-level folders) the harness writes under a cache root, each with the paths, relative to the kind's
folder, of the files it writes there: ``features/<key>[-<stage>]/<content hash>.npy``, ``banks/<key>/<bank key>
.npy|.json``, ``nn/<bank key>/<content hash>.npy``, ``hashes/<hash>``, ``pretrained/<key>.pt``,
``foreground/<hash>.png`` (:mod:`datasets.pseudo.foreground`) and the synthetic generator's layout
(``synthetic/<preset>-v<N>-seed<S>/<category>/...``, :mod:`datasets.synthetic`), with their temporary names."""

_MARKERS_LAST = {".complete.json", ".generating.json"}  # a half-cleared generated category stays provably generated


def _show(path: Path) -> str:
    """A path for a message: whole unless absurdly long (then :func:`bench.errors.brief`)."""
    text = str(path)
    return text if len(text) <= 300 else brief(text)


@dataclasses.dataclass
class _Entry:
    kind: str
    path: Path
    size: int
    used_ns: int  # the later of access and modification time
    tmp: bool  # a leftover of an interrupted write


@dataclasses.dataclass
class _Foreign:
    """Files under a cache root that the cache did not write: counted, the first few named, never touched."""

    count: int = 0
    examples: list[str] = dataclasses.field(default_factory=list)
    stop: bool = False  # a scan ends at the first one (enough to refuse a folder)

    def add(self, rel: str) -> None:
        self.count += 1
        if len(self.examples) < 3:
            self.examples.append(rel)

    @property
    def first(self) -> str | None:
        return self.examples[0] if self.examples else None

    def warn(self, base: Path, what: str) -> None:
        if self.count:
            names = ", ".join(brief(e) for e in self.examples) + (", ..." if self.count > 3 else "")
            one = self.count == 1
            log.warning("%d entr%s under %s %s not the cache's own (%s): %s", self.count, "y" if one else "ies", base,
                        "is" if one else "are", names, what)  # fmt: skip


def _owned(kind: str, rel: str, path: Path) -> bool | None:
    """``rel`` (a file's path under its kind's folder) as the cache sees it: ``False`` an entry, ``True`` the
    leftover of an interrupted write, ``None`` a file the cache did not write.

    The name is the proof, not the content: reading a file would set its access time, and :func:`prune` ranks
    entries by it (an entry that ``info`` read would look used today). Names are content hashes of 16 to 64 hex
    digits in hex-named folders, which no file of a user's is named by chance.
    """
    if path.name.startswith(TMP_PREFIX):
        return True
    if not KINDS[kind].fullmatch(rel):
        return None
    return path.name.endswith(".tmp")  # the kinds' own temporary names (pretrained, foreground)


def _scan(base: Path, kind: str, foreign: _Foreign) -> Iterable[_Entry]:
    """The cache's own files under ``base/kind`` (links and other non-files are foreign, never followed)."""
    top = base / kind
    for dirpath, dirs, files in os.walk(top):
        folder = Path(dirpath)
        for d in [d for d in dirs if (folder / d).is_symlink()]:
            dirs.remove(d)
            foreign.add(f"{kind}/{(folder / d).relative_to(top).as_posix()}")
        for name in files:
            p = folder / name
            rel = p.relative_to(top).as_posix()
            try:
                st = p.lstat()
            except FileNotFoundError:  # removed by a concurrent writer or clear
                continue
            tmp = _owned(kind, rel, p) if stat.S_ISREG(st.st_mode) else None  # a link or a FIFO is not an entry
            if tmp is None:
                foreign.add(f"{kind}/{rel}")
                if foreign.stop:
                    return
            else:
                yield _Entry(kind, p, st.st_size, max(st.st_atime_ns, st.st_mtime_ns), tmp)


def _kinds_present(base: Path, foreign: _Foreign | None = None) -> list[str]:
    """The kinds whose folder is under ``base``; other top-level entries (the tag aside) go to ``foreign``."""
    present = []
    for p in sorted(base.iterdir()):
        if p.name in KINDS and p.is_dir() and not p.is_symlink():
            present.append(p.name)
        elif p.name != CACHE_TAG and foreign is not None:
            foreign.add(p.name)
    return present


def checked_root(root: str | Path | None = None) -> Path | None:
    """The cache root for ``bench cache info|clear|prune``, once it is proven to be a cache of this harness.

    A root is a cache when it holds the harness's :data:`bench.paths.CACHE_TAG`. A root without one (a cache
    written before tags existed) is accepted only when it holds nothing but the cache's own files: the kinds of
    :data:`KINDS` and nothing else at the top, and in each only files named as the harness names them. This
    cannot mistake a git checkout, a dataset or a project for a cache (each holds something else), and costs one
    walk of the cache, once: the root is then tagged. An empty folder is accepted (there is nothing to delete) and
    not tagged.

    Args:
        root: ``--cache-dir`` (``None``: ``$BENCH_CACHE`` or the default).

    Returns:
        The root, or ``None`` when the default root does not exist yet (nothing is cached).

    Raises:
        ConfigError: a root given as ``--cache-dir`` or ``$BENCH_CACHE`` that does not exist, is a file, or is
            not a cache.
    """
    base = cache_root(root)
    named = cache_root_is_named(root)
    if named:
        fix = f"check {'--cache-dir' if root is not None else '$' + CACHE_ENV} (the default cache is {DEFAULT_CACHE})"
    else:
        fix = "this is the default cache folder: move away what the cache did not write, or delete the folder yourself"
    try:
        if not base.exists():
            if not named:
                return None
            raise ConfigError(f"there is no cache at {_show(base)} (no such folder): {fix}")
        if not base.is_dir():
            raise ConfigError(f"{_show(base)} is a file, not a cache folder: {fix}")
        if has_cache_tag(base):
            return base
        foreign = _Foreign(stop=True)
        kinds = _kinds_present(base, foreign)
        for kind in kinds:
            if foreign.count:
                break
            for _ in _scan(base, kind, foreign):
                pass
    except OSError as exc:
        raise ConfigError(f"cannot read the cache folder {_show(base)} ({exc.strerror or exc}): {fix}") from None
    if foreign.count:
        raise ConfigError(
            f"{_show(base)} is not a cache of this harness: it has no {CACHE_TAG} (written into every cache folder the "
            f"harness creates) and holds {brief(foreign.first)}, which the cache never writes. Nothing was changed; "
            f"{fix}."
        )
    if kinds:  # a cache written before tags existed: from now on it proves itself
        write_cache_tag(base)
    return base


def _frame(rows: list[dict[str, Any]], base: Path) -> pd.DataFrame:
    """Rows of kind, files, bytes, tmp_files as :func:`info`'s table, plus a ``total`` row."""
    df = pd.DataFrame(rows, columns=["kind", "files", "bytes", "tmp_files"])
    total = dict(kind="total", files=int(df.files.sum()), bytes=int(df.bytes.sum()), tmp_files=int(df.tmp_files.sum()))
    df = pd.concat([df, pd.DataFrame([total])], ignore_index=True)
    df["size"] = [human_bytes(b) for b in df["bytes"]]
    df = df[["kind", "files", "size", "bytes", "tmp_files"]]
    df.attrs["root"] = str(base)
    return df


def _row(kind: str, entries: Iterable[_Entry]) -> dict[str, Any]:
    entries = list(entries)
    return dict(kind=kind, files=sum(not e.tmp for e in entries), bytes=sum(e.size for e in entries),
                tmp_files=sum(e.tmp for e in entries))  # fmt: skip


def info(root: str | Path | None = None) -> pd.DataFrame:
    """Size of the cache per kind (:data:`KINDS`); files the cache did not write are not counted (a warning
    names them).

    Args:
        root: cache root (``None`` = ``$BENCH_CACHE``).

    Returns:
        One row per kind with columns ``kind``, ``files``, ``size`` (human readable), ``bytes`` and
        ``tmp_files`` (left-overs of interrupted writes), plus a ``total`` row; ``df.attrs["root"]`` is the root.

    Raises:
        ConfigError: the root is not a cache (:func:`checked_root`).
    """
    base = checked_root(root)
    if base is None:
        return _frame([], cache_root(root))
    foreign = _Foreign()
    rows = [_row(kind, _scan(base, kind, foreign)) for kind in _kinds_present(base, foreign)]
    foreign.warn(base, "not counted")
    return _frame(rows, base)


def format_info(df: pd.DataFrame) -> str:
    """The :func:`info` table as text, headed by the cache root."""
    return f"cache root: {df.attrs.get('root', '?')}\n" + df.to_string(index=False)


def _unlink(entry: _Entry, base: Path) -> bool:
    """Delete one entry; False when it could not be (a warning says why).

    Raises:
        BenchError: the cache cannot be written (a read-only disk or folder): every other entry would fail too.
    """
    try:
        entry.path.unlink()
    except FileNotFoundError:  # removed by a concurrent clear
        pass
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise BenchError(
                f"cannot remove {_show(entry.path)}: {exc.strerror or exc}. The cache at {_show(base)} is read-only "
                "for this user: make it writable (remount the disk read-write, or fix the folder's permissions) and "
                "run the command again."
            ) from None
        log.warning("cannot remove %s (%s)", entry.path, exc.strerror or exc)
        return False
    return True


def _remove_empty_folders(entry: _Entry, base: Path) -> None:
    """Remove the folders above a removed entry, up to its kind's, while they are empty (never one with content)."""
    folder, stop = entry.path.parent, base / entry.kind
    while True:
        try:
            folder.rmdir()
        except OSError:  # not empty (a foreign file, a concurrent writer's entry) or gone
            return
        if folder == stop:
            return
        folder = folder.parent


def clear(root: str | Path | None = None, kinds: Sequence[str] | None = None) -> pd.DataFrame:
    """Delete the cache's own entries (:data:`KINDS`); a file the cache did not write is left alone.

    Args:
        root: cache root (``None`` = ``$BENCH_CACHE``); it must be a cache (:func:`checked_root`).
        kinds: only these kinds (``None`` = every kind).

    Returns:
        What was removed, in the format of :func:`info` (one row per kind, plus ``total``).

    Raises:
        ConfigError: an unknown kind, or a root that is not a cache; nothing is removed then.
        BenchError: a read-only cache.
    """
    if kinds is not None:
        unknown = sorted({str(k) for k in kinds} - set(KINDS))
        if unknown:
            raise ConfigError(
                f"unknown cache kind {', '.join(brief(k) for k in unknown[:5])}: the kinds are {', '.join(KINDS)} "
                "(`bench cache info` shows what is there)"
            )
    base = checked_root(root)
    if base is None:
        return _frame([], cache_root(root))
    foreign = _Foreign()
    rows = []
    for kind in _kinds_present(base, foreign):
        if kinds is not None and kind not in kinds:
            continue
        entries = sorted(_scan(base, kind, foreign), key=lambda e: e.path.name in _MARKERS_LAST)
        removed = [e for e in entries if _unlink(e, base)]
        for e in removed:
            _remove_empty_folders(e, base)
        rows.append(_row(kind, removed))
    foreign.warn(base, "left in place")
    return _frame(rows, base)


PRUNABLE = ("features", "nn", "banks", "pretrained")  # content-addressed entries: a removed one is recomputed


def parse_size(text: str | int | float) -> int:
    """``"20G"`` / ``"500 MiB"`` / ``"1.5T"`` / ``"1048576"`` → bytes (binary units: K = 1024)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(?:i?b)?\s*", str(text).lower())
    if m is None:
        raise ConfigError(f"cannot read {text!r} as a size: use e.g. 20G, 500M or a number of bytes")
    return int(float(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2)])


def prune(
    max_bytes: int, root: str | Path | None = None, kinds: Sequence[str] | None = None, dry_run: bool = False
) -> pd.DataFrame:
    """Delete the least recently used cache entries until ``kinds`` take at most ``max_bytes`` together.

    Only content-addressed kinds (:data:`PRUNABLE`: features, nearest neighbours, memory banks, pretrained
    classifiers) are pruned: a removed entry is a cache miss later and is recomputed with identical content, so
    pruning never changes a result, and a run reading the cache at the same time at worst recomputes an entry.
    Generated datasets are never touched (``clear --kinds synthetic`` removes them whole). Only the cache's own
    entries are counted and removed (:data:`KINDS`): a file the cache did not write is left alone.

    "Recently used" is the later of the file's access and modification times. Linux's default ``relatime``
    mount option updates access times at most once a day, so entries used today rank as "used today", and among
    them the least recently written go first.

    Args:
        max_bytes: the size to get down to.
        root: cache root (``None`` = ``$BENCH_CACHE``); it must be a cache (:func:`checked_root`).
        kinds: which of :data:`PRUNABLE` to consider (default: all present).
        dry_run: only report what would be removed.

    Returns:
        What was (or would be) removed, in the format of :func:`info`, plus a ``total`` row;
        ``df.attrs["kept_bytes"]`` is the size of the considered kinds afterwards.
    """
    bad = sorted(set(kinds or ()) - set(PRUNABLE))
    if bad:
        raise ConfigError(
            f"cannot prune {', '.join(bad)}: prune works on {', '.join(PRUNABLE)} (entries that are recomputed when "
            "missing). Remove other kinds whole with `bench cache clear --kinds ...`."
        )
    base = checked_root(root)
    foreign = _Foreign()
    entries = []
    if base is not None:
        present = _kinds_present(base, foreign)
        for kind in [k for k in (kinds or PRUNABLE) if k in present]:
            entries += _scan(base, kind, foreign)
    total = sum(e.size for e in entries)
    removed: dict[str, list[_Entry]] = {}
    for e in sorted(entries, key=lambda e: (e.used_ns, str(e.path))):
        if total <= max_bytes:
            break
        if not dry_run:
            if not _unlink(e, base):
                continue
            _remove_empty_folders(e, base)
        total -= e.size
        removed.setdefault(e.kind, []).append(e)
    if base is not None:
        foreign.warn(base, "left in place" if not dry_run else "not counted")
    out = _frame([_row(k, v) for k, v in removed.items()], base or cache_root(root))
    out.attrs["kept_bytes"] = total
    return out


def human_bytes(n: int | float) -> str:
    """``1536`` → ``'1.5 KiB'``."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
