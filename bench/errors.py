"""User-facing errors.

A :class:`BenchError` carries a message that names the problem and the fix. The CLI prints it without a
traceback and exits with status 2; anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

import reprlib
from typing import Any

EXIT_INTERRUPTED = 130  # what a shell reports for a command stopped by Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143  # ... and for one stopped by SIGTERM (128 + 15): `kill PID`, a batch system, `timeout`


class Terminated(KeyboardInterrupt):
    """Raised in the main process when SIGTERM arrives during a run, so that it stops as after Ctrl-C: the pool
    is shut down, every finished job is kept, the resume hint is printed (see ``bench.cli.run``)."""


class BenchError(Exception):
    """A problem with the user's input or environment, with a message that says what to do."""

    exit_code = 2


class DatasetError(BenchError):
    """A dataset root, layout, category or image that cannot be used."""


class ConfigError(BenchError):
    """An invalid option, config file or combination of options."""


class WeightsError(BenchError):
    """Pretrained weights that cannot be obtained or loaded."""


_BRIEF = reprlib.Repr()  # keyword arguments only from Python 3.12
_BRIEF.maxlevel, _BRIEF.maxdict, _BRIEF.maxlist, _BRIEF.maxtuple, _BRIEF.maxset = 2, 4, 4, 4, 4
_BRIEF.maxstring, _BRIEF.maxother, _BRIEF.maxlong = 60, 60, 40


def brief(value: Any, limit: int = 80) -> str:
    """A short ``repr`` of a user-given value for an error message: never the whole value.

    A YAML file of a few hundred bytes can hold a value of billions of elements through nested aliases (a
    "billion laughs" document); ``repr`` of it would take gigabytes. :mod:`reprlib` stops after a few items per
    level and two levels, so the cost is bounded whatever the value.
    """
    text = _BRIEF.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def brief_list(values: Any, shown: int = 5, width: int = 40) -> str:
    """``a, b, c, d, e ... and 1,999,995 more``: a list of user-given names for an error message, never all of it.

    ``--categories`` with two million names once printed a 19 MB message; each name is cut to ``width`` characters
    too (a 100 KB argument stays one short item).
    """
    items = list(values) if not isinstance(values, (list, tuple)) else values
    text = ", ".join(clip(v, width) for v in items[:shown])
    return text + (f" ... and {len(items) - shown:,} more" if len(items) > shown else "")


def clip(text: Any, limit: int = 200) -> str:
    """``str(text)`` cut in the middle to at most ``limit`` characters (a path or a name of any length in a message).

    Unlike :func:`brief` it adds no quotes and keeps both ends: a path's start and its file name, a message's
    problem and its fix.
    """
    s = str(text)
    if len(s) <= limit:
        return s
    marker = " ...[{:,} characters cut]... "
    keep = max(0, limit - len(marker.format(len(s))))
    head = keep * 2 // 3
    return s[:head] + marker.format(len(s) - keep) + s[len(s) - (keep - head):]
