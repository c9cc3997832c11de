"""What the CLI test files share: calling the CLI in this process, and a fingerprint of a folder's files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bench.cli import main


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``bench.cli.main(argv)`` (the path of ``python -m bench`` without torch's start-up per call): exit code,
    stdout, stderr; a traceback on stderr fails the test."""
    code = main(list(argv))
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err, cap.err
    return code, cap.out, cap.err


def file_tree(root: Path) -> dict[str, str]:
    """Every entry under ``root``: sha256 of each file, "dir" for folders (so an added or removed empty folder shows
    too). Equal before and after a command = the command changed nothing there."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}  # fmt: skip
