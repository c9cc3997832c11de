"""Command line: ``python -m bench <command> ...``.

Each command lives in its own module exposing ``configure(parser)`` and ``main(args) -> int``; the table
:data:`COMMANDS` maps command names to those modules, so adding a command touches this table only.
User-facing problems (:class:`~bench.errors.BenchError`) print one clear message and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from bench.errors import BenchError
from bench.registry import UnknownNameError

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("bench.cmd_run", "run a grid of methods × categories × shots × seeds"),
    "list": ("bench.cmd_list", "list registered methods, datasets or backbones"),
    "detect": ("bench.cmd_detect", "PatchCore image AUROC per category (feature-pipeline sanity check)"),
    "cache": ("bench.cmd_cache", "show or clear the feature / bank / dataset cache"),
    "report": ("bench.cmd_report", "tables (per method, ablation, per class) from results files"),
    "leaderboard": ("bench.cmd_leaderboard", "ranked methods with confidence intervals"),
    "tsne": ("bench.cmd_tsne", "t-SNE of support and query embeddings"),
    "show-pseudo": ("bench.cmd_pseudo", "save a picture of generated pseudo-defects"),
    "perf": ("bench.cmd_perf", "speed benchmarks (features, coreset, cache, grid)"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with ``only``, just that command's module is imported (fast start-up)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark harness for few-shot anomaly multi-classification (defect-type classification).",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument(
        "--plugin", action="append", default=[], metavar="MODULE",
        help="import MODULE first (out-of-tree methods or datasets registering themselves); repeatable",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_text)
            continue
        mod = importlib.import_module(module)
        p = sub.add_parser(
            name, help=help_text, description=(mod.__doc__ or help_text).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.configure(p)
        p.set_defaults(_main=mod.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if a in COMMANDS), None)
    parser = build_parser(only=command)
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "_main", None):
        parser.print_help()
        return 1
    try:
        for mod in args.plugin:
            try:
                importlib.import_module(mod)
            except ImportError as exc:
                raise BenchError(f"cannot import plugin module {mod!r} ({exc}). Is it on PYTHONPATH?") from None
        return int(args._main(args) or 0)
    except (BenchError, UnknownNameError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
