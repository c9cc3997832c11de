"""The command line, ``python -m bench <command>``: argparse and printing only, one module per command.

Nothing outside this package imports it (the library never depends on its command line)::

    from bench.cli import main
    main(["list", "methods", "contrastive*"])      # returns the exit status

:data:`COMMANDS` maps each command to its module (``configure(parser)`` and ``main(args) -> int``); options and
helpers that several commands share are in ``bench.cli._args``.
"""

from bench.cli.main import COMMANDS, build_parser, console_main, main

__all__ = ["COMMANDS", "build_parser", "console_main", "main"]
