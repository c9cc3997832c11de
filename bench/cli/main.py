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
from typing import NoReturn, Sequence

from bench.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, BenchError, Terminated, clip
from bench.registry import UnknownNameError, import_plugins

MAX_MESSAGE = 2000
"""The longest ``error:`` line printed (characters): a message that quotes a huge argument is cut in the middle,
keeping the problem and the fix (the README promises a short form; a 2,000,000-name list once printed 19 MB)."""

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("bench.cli.run", "run a grid of methods × categories × shots × seeds"),
    "list": ("bench.cli.list", "list {choices} (registered, or timm's)"),
    "detect": ("bench.cli.detect", "PatchCore image AUROC per category (feature-pipeline sanity check)"),
    "cache": ("bench.cli.cache", "the feature / bank / dataset cache: {choices}"),
    "report": ("bench.cli.report", "tables (per method, ablation, per class) from results files"),
    "leaderboard": ("bench.cli.leaderboard", "ranked methods with confidence intervals"),
    "tsne": ("bench.cli.tsne", "t-SNE of support and query embeddings"),
    "show-pseudo": ("bench.cli.pseudo", "save a picture of generated pseudo-defects"),
    "maps": ("bench.cli.maps", "anomaly maps of a detector as PNG files (the discovery task's input)"),
    "show-crops": ("bench.cli.crops", "save a picture of the MEBin masks and crops of a few images (discovery)"),
    "perf": ("bench.cli.perf", "speed benchmarks: {choices}"),
}
"""Command → (module, its line in the top-level help). ``{choices}`` in a line is filled from the command's own parser
(:func:`command_help`): the lists of what ``list``, ``cache`` and ``perf`` take are never typed twice (the hand-written
ones had drifted: no ``discoverers``, no ``prune``, benchmarks that did not exist)."""


def or_list(items: Sequence[object]) -> str:
    """``a, b or c``."""
    words = [str(i) for i in items]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def command_help(name: str) -> str:
    """The command's line in the top-level help: :data:`COMMANDS`' text, its ``{choices}`` the choices of the first
    positional argument that the command's own ``configure`` declares (so the two cannot disagree). Only those
    commands' modules are imported, and they import nothing heavy: ``--help`` stays fast."""
    module, text = COMMANDS[name]
    if "{choices}" not in text:
        return text
    probe = argparse.ArgumentParser(add_help=False)
    importlib.import_module(module).configure(probe)
    # argparse lists a parser's arguments nowhere else than in _actions
    choices = next(a.choices for a in probe._actions if not a.option_strings and a.choices)
    return text.format(choices=or_list(list(choices)))


class Parser(argparse.ArgumentParser):
    """argparse with bounded messages: its own errors quote the value in full (``invalid choice: '<100 KB>'``)."""

    def error(self, message: str) -> NoReturn:
        super().error(clip(message, 500))


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of every command; with ``only``, just that command is configured and its module imported
    (fast start-up; ``""``: none, for the top-level help). A command module imports its heavy libraries (torch,
    pandas, ...) in its ``main``, so that ``--help`` and an option error answer at once (``benchmarks/startup.py``)."""
    parser = Parser(
        prog="python -m bench",
        description="Benchmark harness for few-shot industrial defect tasks: defect-type classification, anomaly "
        "detection and anomaly class discovery (--task of `run`; docs/tasks.md).",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument(
        "--plugin", action="append", default=[], metavar="MODULE",
        help="import MODULE first (out-of-tree methods or datasets registering themselves); repeatable",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, _) in COMMANDS.items():
        help_text = command_help(name)
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


def tolerant_streams() -> None:
    """Let stdout and stderr print what their encoding cannot hold as backslash escapes instead of failing.

    Under ``PYTHONUTF8=0 LC_ALL=C`` (a cron job, a minimal container) both streams are ASCII: the first ``±`` or
    ``≥`` of a table or message raised UnicodeEncodeError after every job had run, and the summary was lost. A file
    name with undecodable bytes (kept by Python as surrogates) fails even a UTF-8 stream the same way. Files are
    written as UTF-8 whatever the locale (``encoding="utf-8"`` at each write).
    """
    for stream in (sys.stdout, sys.stderr):  # stdout's handler is surrogateescape in the C locale: it fails too
        if getattr(stream, "errors", None) in ("strict", "surrogateescape") and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    tolerant_streams()
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if a in COMMANDS), None)
    early = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    early.add_argument("--plugin", action="append", default=[])
    try:  # before the parser is built: a plugin's task (bench.tasks.register_task) is a --task and `list` choice
        import_plugins(early.parse_known_args(argv)[0].plugin)
    except (BenchError, UnknownNameError) as exc:
        print(f"error: {clip(exc, MAX_MESSAGE)}", file=sys.stderr)
        return 2
    parser = build_parser(only=command or "")  # no command: the top-level help, no command module configured
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    # The handler filters too, not only the root logger: libraries that set their own loggers' level would get
    # through (Dask's `distributed` is at INFO: 45 lines of cluster start-up and shutdown per --backend dask run).
    # Like basicConfig itself, this changes nothing where logging is configured already (an embedding program).
    handler = logging.StreamHandler()
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    if not getattr(args, "_main", None):
        parser.print_help()
        return 1
    try:
        import_plugins(args.plugin)
        return int(args._main(args) or 0)
    except (BenchError, UnknownNameError) as exc:
        print(f"error: {clip(exc, MAX_MESSAGE)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print("\nterminated (SIGTERM)." if isinstance(exc, Terminated) else "\ninterrupted.", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of stdout went away (`bench list methods | head`): stop quietly, as Unix tools do. Point stdout
        # at /dev/null so that the interpreter's final flush does not raise again (Python's signal docs, "Note on
        # SIGPIPE"). A run's rows are already saved line by line.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def exit_interrupted(signum: int = 2) -> None:
    """End the process by SIGINT after a handled Ctrl-C (what a shell shows as exit status 130).

    This is the Unix convention for a program that catches Ctrl-C to clean up: the calling shell or script sees
    that its child was interrupted (a ``for`` loop in bash stops, for instance). It also makes the outcome
    deterministic: CPython exits by SIGINT anyway at the end of ``python -m`` whenever a KeyboardInterrupt once
    passed through an ``exec`` of source text (dataclasses and namedtuples are built that way), even if the
    interrupt was caught, so returning 130 would give 130 or death-by-SIGINT depending on the exact moment of
    the Ctrl-C. Where SIGINT cannot end the process (another platform), it exits with 130.

    After a handled SIGTERM (``signum`` 15) the process ends by SIGTERM the same way (exit status 143).
    """
    import atexit
    import os
    import signal

    sys.stdout.flush()
    sys.stderr.flush()
    if hasattr(signal, "SIGINT") and os.name == "posix":
        # Ending by a signal skips the exit handlers: run them first, as a normal exit would. They shut down the
        # worker pool's queues and remove its shared-memory folder; without them loky's resource tracker warns
        # about "leaked semlock objects" and "leaked folder objects" after every Ctrl-C of a --jobs run.
        try:
            atexit._run_exitfuncs()
        except BaseException:  # a second Ctrl-C or a failing handler: still end as interrupted
            pass
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    sys.exit(128 + signum)


def console_main() -> None:
    """Entry point of ``python -m bench`` and of the ``bench`` script: exit with main's status, by SIGINT after
    a Ctrl-C (see :func:`exit_interrupted`)."""
    import signal

    code = main()
    if code in (EXIT_INTERRUPTED, EXIT_TERMINATED):
        exit_interrupted(signal.SIGINT if code == EXIT_INTERRUPTED else signal.SIGTERM)
    sys.exit(code)


if __name__ == "__main__":
    console_main()
