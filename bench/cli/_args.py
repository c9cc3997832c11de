"""What several commands share: the list and option parsers, and the flags of the report commands.

``parse_int_list`` reads ``--shots``/``--seeds`` (``1-5``, ``1,3,5``, ``1 3 5``, YAML lists); ``parse_set`` reads
``--set key=value`` options as YAML scalars; ``command_line`` rebuilds the command that regenerates a document
(``bench report`` and ``bench leaderboard`` record it). Command modules import this module, never each other.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from typing import Any

import yaml

from bench.errors import BenchError, ConfigError, brief, clip
from bench.report.stats import DEFAULT_BOOT, DEFAULT_BOOT_SEED


_INT_ITEM = re.compile(r"\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?")
"""One item of an integer list: ``5``, ``-1`` (read, so that the run can say it is negative) or a range ``1-5``."""


def parse_int_list(text: str | int | list | tuple, option: str = "list", limit: int | None = None) -> list[int]:
    """``"1-5"`` → [1..5], ``"1,3,5"`` → [1, 3, 5], ``3`` → [3]; a list (``--shots 1 2 3``, YAML ``[1, 2]``) joins
    the parse of each item (``["1-3", "5"]`` → [1, 2, 3, 5]). Negative numbers are read (``-1``, ``-3--1``): the
    run's configuration refuses them by name.

    Raises:
        ConfigError: naming the option and a short form of the value (never the whole of a huge YAML value); also
            when the list would hold more than ``limit`` values, before it is built (``1-10000000000``).
    """
    fix = f"{option}: use e.g. 1-5, 1,2,5 or 1 2 5"

    def unreadable(value: object) -> ConfigError:
        return ConfigError(f"cannot read {brief(value)} as a list of integers ({fix})")

    def add(value: object, out: list[int]) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise unreadable(text if isinstance(text, (list, tuple)) else value)
        for part in [value] if isinstance(value, int) else value.split(","):
            if isinstance(part, int):
                lo = hi = part
            elif not part.strip():
                continue
            elif (m := _INT_ITEM.fullmatch(part)) is None:
                raise unreadable(value)
            else:
                try:  # a number of thousands of digits is refused by int() (sys.get_int_max_str_digits)
                    lo = int(m[1])
                    hi = lo if m[2] is None else int(m[2])
                except ValueError:
                    raise unreadable(value) from None
                if hi < lo:
                    raise ConfigError(f"empty range {brief(part.strip())} for {option} ({fix})")
            if limit is not None and len(out) + hi - lo + 1 > limit:
                given = " ".join(map(str, text)) if isinstance(text, (list, tuple)) else text  # as typed
                raise ConfigError(
                    f"{option} {clip(given, 60)} gives more than {limit:,} values, the most a run takes (each value is "
                    f"a whole set of jobs): give fewer, e.g. {option} 1-5."
                )
            out.extend(range(lo, hi + 1))

    out: list[int] = []
    for value in text if isinstance(text, (list, tuple)) else [text]:
        add(value, out)
    if not out:
        raise ConfigError(f"empty integer list {brief(text)} for {option} ({fix})")
    return out


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["lr=1e-4", "features=raw"]`` → {"lr": 0.0001, "features": "raw"} (values parsed as YAML, safely)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {brief(item)}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError as exc:  # also the tags safe_load refuses (!!python/...)
            problem = str(getattr(exc, "problem", "") or type(exc).__name__)
            raise ConfigError(
                f"--set {k.strip()}=...: cannot read the value {brief(v)} ({problem}). Give a number, a word, true/false "
                "or a list like 0,45,25 (quote it in the shell if it holds spaces or brackets)."
            ) from None
    return out


def command_line(name: str, args: argparse.Namespace, flags: dict[str, str]) -> str:
    """Reconstruct ``python -m bench NAME ...`` from parsed arguments (the exact regenerating command)."""
    parts = ["python", "-m", "bench", name, *[str(p) for p in args.results]]
    for dest, flag in flags.items():
        v = getattr(args, dest, None)
        if v is None or v is False:
            continue
        if v is True:
            parts.append(flag)
        elif isinstance(v, (list, tuple)):
            parts += [flag, *[str(x) for x in v]]
        else:
            parts += [flag, str(v)]
    return shlex.join(parts)


def add_document_options(p: argparse.ArgumentParser) -> None:
    """``--no-plots``, ``--boot`` and ``--boot-seed`` of ``bench report`` and ``bench leaderboard``."""
    p.add_argument("--no-plots", action="store_true", help="skip the PNG/SVG plots")
    p.add_argument("--boot", type=int, default=DEFAULT_BOOT, help=f"bootstrap resamples (default {DEFAULT_BOOT:,})")
    p.add_argument("--boot-seed", type=int, default=DEFAULT_BOOT_SEED, help="seed of the bootstrap generator (default 0)")


def check_boot(n_boot: int) -> None:
    """Refuse a bootstrap too small for a 95% interval (``--boot``)."""
    if n_boot < 100:
        raise BenchError(
            f"--boot {n_boot} is too few bootstrap resamples for a 95% interval; use ≥ 1000 (default 10,000)."
        )


def note_skipped_lines(n: int) -> None:
    """Say on stderr how many results lines were unreadable (they are left out of every table)."""
    if n:
        print(f"skipped {n} unreadable or incomplete line(s) in the results (e.g. a run killed mid-write)",
              file=sys.stderr)  # fmt: skip
