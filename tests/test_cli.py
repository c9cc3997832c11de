"""The command line: every command imports and has help, the perf pass-through, the list filters."""

from __future__ import annotations

import pytest


def test_every_cli_command_has_a_module_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    """Each entry of the command table imports and configures (a missing module would crash only when chosen)."""
    from bench.cli import COMMANDS, build_parser

    for name in COMMANDS:
        with pytest.raises(SystemExit) as exc:
            build_parser(only=name).parse_args([name, "--help"])
        assert exc.value.code == 0, name
        assert "usage:" in capsys.readouterr().out


def test_perf_passes_its_arguments_to_the_benchmark_script(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.cli import main

    assert main(["perf", "grid", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: grid.py" in out and "--jobs" in out

