"""Where the harness keeps generated data, cached features and results.

* cache: ``--cache-dir``, else ``$BENCH_CACHE``, else :data:`DEFAULT_CACHE` (generated datasets, features,
  banks, pretrained classifiers). Safe to delete; ``python -m bench cache clear`` does it.

  One channel (docs/architecture.md): the process's root is this module's. It is set once per process from the
  configuration by its one writer, :func:`set_cache_root` (a run's preflight, the prologue of every worker task,
  :func:`bench.run.workers.worker_setup`, with the other per-process settings, and ``bench detect`` /
  ``show-crops``), and read through :func:`cache_root` (:func:`cache_dir` creates it): code that has no argument
  for it (dataset generation, foreground masks, the hash memo, a method's pretrained models) finds the folder the
  run was given. It is kept in this process's ``$BENCH_CACHE``, the user-facing variable, so a process started
  from this one inherits it; no other module reads or writes that variable (``tests/test_layout.py``).
  A folder the harness creates as a cache root gets a :data:`CACHE_TAG` (:func:`make_cache_root`): the proof
  that ``bench cache clear|prune`` ask for before they delete anything (see :mod:`bench.cache`).
* outputs: :data:`DEFAULT_OUT` (``runs/`` in the current folder, ignored by git) unless ``--out`` says otherwise:
  a run's results, reports, leaderboards, maps and pictures (:func:`default_output`). The figures committed under
  ``results/`` are rewritten only by a command that names them with ``--out``.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from bench.errors import ConfigError

CACHE_ENV = "BENCH_CACHE"
DEFAULT_CACHE = "~/.cache/fsad-bench"

DEFAULT_OUT = "runs"
"""Where every command writes when not told (``--out``): one folder, ignored by git (``.gitignore``), so the default
commands never rewrite the repository's committed ``results/`` (a run once wrote its rows there and the README's
leaderboard command replaced the committed leaderboard; issue #24)."""


def default_output(name: str = "") -> Path:
    """A command's default output, ``runs/<name>`` relative to the current folder (``runs/`` itself for ``""``)."""
    return Path(DEFAULT_OUT) / name if name else Path(DEFAULT_OUT)

CHECKOUT = Path(__file__).resolve().parent.parent
"""The folder that holds ``bench/`` (a source checkout's root: ``benchmarks/``, ``.git``, ``docs/``)."""


def cache_root(path: str | Path | None = None) -> Path:
    """The cache root: ``path`` when given (``--cache-dir``, a root handed down as an argument), else this process's
    (:func:`set_cache_root`, else ``$BENCH_CACHE``), else :data:`DEFAULT_CACHE`; user-expanded and absolute, not
    created. The one reader of the process's root."""
    return Path(path or os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser().resolve()


def cache_root_is_named(path: str | Path | None = None) -> bool:
    """Whether :func:`cache_root` of ``path`` is a folder someone named (``path``, :func:`set_cache_root` or
    ``$BENCH_CACHE``) rather than :data:`DEFAULT_CACHE`: ``bench cache`` refuses a named folder that is missing and
    accepts a missing default (nothing cached yet)."""
    return path is not None or bool(os.environ.get(CACHE_ENV))


CACHE_TAG = "CACHEDIR.TAG"
"""The file that marks a folder as a cache of this harness: a Cache Directory Tag (https://bford.info/cachedir/),
so backup tools (``tar --exclude-caches``, borg, restic) skip the folder too. Another tool's tag (Cargo writes one)
does not count: the text must name this harness."""
CACHE_TAG_SIGNATURE = "Signature: 8a477f597d28d172789f06886806bc55"
_TAG_TEXT = (
    f"{CACHE_TAG_SIGNATURE}\n"
    "# This file is a cache directory tag created by fsad-bench (python -m bench): everything in this folder is\n"
    "# recomputed when missing. `python -m bench cache clear|prune` ask for this file before they delete anything.\n"
    "# For information about cache directory tags see https://bford.info/cachedir/\n"
)


def has_cache_tag(root: Path) -> bool:
    """True when ``root`` holds the :data:`CACHE_TAG` this harness writes (a regular file, not a link)."""
    tag = root / CACHE_TAG
    try:
        if tag.is_symlink() or not tag.is_file():
            return False
        with tag.open("rb") as f:
            text = f.read(512).decode("utf-8", "replace")
    except OSError:
        return False
    return text.startswith(CACHE_TAG_SIGNATURE) and "created by fsad-bench" in text


def write_cache_tag(root: Path) -> None:
    """Write :data:`CACHE_TAG` into ``root`` unless a file of that name is there already (exclusive create: two
    processes creating the cache at once, or another tool's tag, are never overwritten). A folder that cannot be
    written gets no tag; its first cache write reports the real reason."""
    try:
        fd = os.open(root / CACHE_TAG, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError:  # there already, or a read-only folder
        return
    try:
        os.write(fd, _TAG_TEXT.encode())
    except OSError:
        pass
    finally:
        os.close(fd)


def make_cache_root(path: str | Path | None = None) -> Path:
    """The cache root (:func:`cache_root`), created if needed; a folder created here, or found empty, is tagged.

    Only those two are tagged: an existing folder with content may be anything (a project given to
    ``--cache-dir`` by mistake), and a tag would make ``bench cache clear`` accept it. A cache written before tags
    existed is recognised, and then tagged, by :func:`bench.cache.checked_root`.

    Raises:
        ConfigError: the folder cannot be created (a read-only disk, a file in the way).
    """
    root = cache_root(path)
    if root.exists() and not root.is_dir():
        raise ConfigError(
            f"the cache folder {root} is a file, not a folder: choose another with --cache-dir (or ${CACHE_ENV})"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
        with os.scandir(root) as entries:
            empty = next(entries, None) is None
    except OSError as exc:
        raise ConfigError(
            f"cannot create the cache folder {root} ({exc.strerror or exc}): choose a writable folder with --cache-dir "
            f"(or ${CACHE_ENV})"
        ) from None
    if empty:
        write_cache_tag(root)
    return root


def cache_dir() -> Path:
    """Root of the on-disk cache of this process (created and tagged on demand, :func:`make_cache_root`)."""
    return make_cache_root()


def set_cache_root(path: str | Path) -> Path:
    """Make ``path`` the cache root of this process (and of processes it starts); returns it resolved.

    The one writer of the process's root (and of ``$BENCH_CACHE``) in the harness: called once per process from the
    configuration (module docstring).
    """
    root = cache_root(path)
    os.environ[CACHE_ENV] = str(root)
    return root


def shared_data_dir() -> Path | None:
    """The read-only real image sets (``$BENCH_SHARED_DATA`` or ``../shared/data`` next to the checkout)."""
    env = os.environ.get("BENCH_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(CHECKOUT.parent / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    return None


def probe_writable(folder: Path) -> None:
    """Make ``folder`` (with its parents) and write and remove an empty probe file in it: an output place that is
    read-only, blocked by a file or not creatable fails here, before anything is computed for it. The probe's name is
    unique (runs and pictures may share a folder) and starts with ``.write-test-``.

    Raises:
        OSError: the folder cannot be made or written (the caller words the message and the fix).
    """
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    probe.write_text("")
    probe.unlink()
