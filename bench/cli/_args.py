"""What several commands share: the list and option parsers, and the flags of the report commands.

``parse_int_list`` reads ``--shots``/``--seeds`` (``1-5``, ``1,3,5``, ``1 3 5``, YAML lists); ``parse_set`` reads
``--set key=value`` options as YAML scalars; ``command_line`` rebuilds the command that regenerates a document
(``bench report`` and ``bench leaderboard`` record it). Command modules import this module, never each other.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

import yaml

from bench.errors import BenchError, ConfigError, brief
from bench.report.stats import DEFAULT_BOOT, DEFAULT_BOOT_SEED


def parse_int_list(text: str | int | list | tuple, option: str = "list") -> list[int]:
    """``"1-5"`` → [1..5], ``"1,3,5"`` → [1, 3, 5], ``3`` → [3]; a list (``--shots 1 2 3``, YAML ``[1, 2]``) joins
    the parse of each item (``["1-3", "5"]`` → [1, 2, 3, 5]).

    Raises:
        ConfigError: naming the option and a short form of the value (never the whole of a huge YAML value).
    """
    fix = f"{option}: use e.g. 1-5, 1,2,5 or 1 2 5"
    if isinstance(text, bool):
        raise ConfigError(f"cannot read {brief(text)} as a list of integers ({fix})")
    if isinstance(text, int):
        return [text]
    if isinstance(text, (list, tuple)):
        if not all(isinstance(x, (int, str)) and not isinstance(x, bool) for x in text):
            raise ConfigError(f"cannot read {brief(text)} as a list of integers ({fix})")
        out = [n for x in text for n in parse_int_list(x, option)]
        if not out:
            raise ConfigError(f"empty integer list for {option} ({fix})")
        return out
    if not isinstance(text, str):
        raise ConfigError(f"cannot read {brief(text)} as a list of integers ({fix})")
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:  # a range (no negative numbers: shots and seeds are ≥ 1 and ≥ 0)
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ConfigError(f"empty range {part!r} for {option} ({fix})")
                out.extend(range(lo, hi + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise ConfigError(f"cannot read {brief(text)} as a list of integers ({fix})") from None
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
