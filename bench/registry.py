"""A small name → object registry in the style of timm's ``register_model``.

Used for methods (``methods/``) and dataset adapters (``datasets/``). Registering a name twice is an
error (unless ``override=True``); looking up an unknown name raises :class:`UnknownNameError` with the
closest registered names, so a typo on the command line gets a useful answer. A registry knows the package
whose modules register into it (:meth:`Registry.import_all`), so the module that defines a registry never
imports that package (no import circle between ``bench.method`` and ``bench.methods``).
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Iterator, Sequence, TypeVar

from bench.errors import BenchError, brief, clip

T = TypeVar("T")


class UnknownNameError(KeyError):
    """An unknown registry name; the message lists the closest matches."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


@dataclass
class Entry(Generic[T]):
    """One registered object with its metadata."""

    name: str
    obj: T
    description: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Name → :class:`Entry` map with helpful errors.

    Args:
        kind: what is registered (``method``, ``dataset``), for messages.
        package: the package whose modules register here; :meth:`import_all` imports them.
    """

    def __init__(self, kind: str, package: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self._entries: dict[str, Entry[T]] = {}

    def import_all(self) -> None:
        """Import every module of :attr:`package` so that their registrations run (see :func:`import_modules`)."""
        if self.package:
            import_modules(self.package)

    def add(self, name: str, obj: T, description: str = "", override: bool = False, **meta: Any) -> Entry[T]:
        if not name or name != name.strip() or " " in name:
            raise ValueError(f"invalid {self.kind} name {name!r}: use a non-empty name without spaces")
        if name in self._entries and not override:
            raise ValueError(f"{self.kind} {name!r} is already registered (by {self._entries[name].obj!r})")
        entry = Entry(name=name, obj=obj, description=description, meta=dict(meta))
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            # difflib is quadratic in the name's length: a 100 KB argument is no typo of a registered name
            close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.4) if len(name) < 200 else []
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {brief(name)}.{hint} Known: {', '.join(sorted(self._entries))}. "
                f"Run `python -m bench list {self.kind}s` to see them all."
            ) from None

    def names(self, pattern: str | None = None) -> list[str]:
        """The registered names, sorted; with ``pattern``, those matching the wildcard (``contrastive*``, ``*-raw``,
        ``[kl]*``: :mod:`fnmatch` rules, case-sensitive), as timm's ``list_models(filter)``."""
        return sorted(n for n in self._entries if pattern is None or fnmatch.fnmatchcase(n, pattern))

    def entries(self, pattern: str | None = None) -> list[Entry[T]]:
        """The entries of :meth:`names`, in that order."""
        return [self._entries[n] for n in self.names(pattern)]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._entries)


_IMPORTED: set[str] = set()


def import_modules(package: str) -> None:
    """Import every module of ``package`` whose name does not start with ``_``, sorted by name, once per process.

    Sub-packages are left out (``bench.datasets.pseudo`` registers nothing). The package counts as imported from
    the start, so a module that looks a name up while it is being imported does not import the package again; if
    an import fails, the next call tries again.
    """
    if package in _IMPORTED:
        return
    _IMPORTED.add(package)
    try:
        for info in sorted(pkgutil.iter_modules(importlib.import_module(package).__path__), key=lambda i: i.name):
            if not info.name.startswith("_") and not info.ispkg:
                importlib.import_module(f"{package}.{info.name}")
    except BaseException:
        _IMPORTED.discard(package)
        raise


def import_plugins(modules: Sequence[str]) -> None:
    """Import out-of-tree modules that register methods or datasets (``--plugin``); importing twice is a no-op.

    Called by the CLI and by every worker process (loky and Dask workers do not inherit the main process's
    imports, so a plugin method would otherwise be unknown there).
    """
    for mod in modules:
        if mod.endswith(".py") or "/" in mod or "\\" in mod:  # a file path, not a module name
            path = Path(mod)
            raise BenchError(
                f"--plugin takes a module name, not a file path: {brief(mod)}. Put the folder on PYTHONPATH and pass "
                f"the module name: PYTHONPATH={clip(path.parent or '.')} python -m bench --plugin "
                f"{clip(path.stem, 60)} ..."
            )
        try:
            importlib.import_module(mod)
        except ImportError as exc:
            raise BenchError(f"cannot import plugin module {brief(mod)} ({clip(exc)}). Is it on PYTHONPATH?") from None
