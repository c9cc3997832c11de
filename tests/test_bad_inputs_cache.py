"""Bad input to the cache, tried for real (issue #20): ``bench cache clear|prune|info`` given a folder that is not a
cache, user files inside a cache, unknown kinds, a missing root; a full or read-only cache disk during a run.

Each case calls :func:`bench.cli.main` in this process (the code path of ``python -m bench``) and checks the exit
status, a message that names the problem and the fix, no traceback, and, where files are at stake, that every file
of the user's folder is byte-identical afterwards.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

import bench.cache
from bench.cache import TMP_PREFIX, load_npy
from bench.cli import main

COMMON = ["--backbone", "resnet18", "--weights", "random", "--threads", "1", "--no-progress"]
ONE_JOB = ["--method", "protonet", "--categories", "tile", "--shots", "1", "--seeds", "1"]


# --------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real dataset folder in the MVTec AD layout (synthetic-tiny)."""
    from bench.datasets.synthetic import generate

    return generate(tmp_path_factory.mktemp("tiny-data"), "tiny")


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err, cap.err
    return code, cap.out, cap.err


# --------------------------------------------------------------------------------------------- full or read-only disk
class _OsWithAFullDisk:
    """``os`` as :mod:`bench.cache` sees it, on a disk with ``free`` bytes left: a write takes what still fits (a
    short write) and the next one fails with ENOSPC, as the kernel does when a disk fills up."""

    def __init__(self, free: int) -> None:
        self.free = free

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        if self.free <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = os.write(fd, memoryview(data)[: self.free])
        self.free -= n
        return n


def _run(capsys: pytest.CaptureFixture[str], data: Path, out: Path, cache: Path) -> tuple[int, str, str]:
    return _cli(capsys, "run", "--dataset", "folder", "--data-root", str(data), *COMMON, *ONE_JOB, "--out", str(out),
                "--cache-dir", str(cache))  # fmt: skip


def test_full_cache_disk_stops_the_run_with_the_disk_full_message(capsys, monkeypatch, tmp_path, tiny_root) -> None:  # noqa: ANN001
    """A short write of a feature entry (NumPy said "802816 requested and 479200 written" and every job failed)
    reaches the designed stop: one message, exit 2, no error rows, no partial entry."""
    cache, out = tmp_path / "cache", tmp_path / "out"
    monkeypatch.setattr(bench.cache, "os", _OsWithAFullDisk(free=100_000))  # room for the hash memos, not a feature
    code, _, err = _run(capsys, tiny_root, out, cache)
    assert code == 2, err
    assert "No space left on device" in err and "free space there" in err and "--cache-dir" in err
    assert "run the same command again to resume" in err and "requested and" not in err
    assert not (out / "results.jsonl").exists() or not (out / "results.jsonl").read_bytes(), "an error row was written"
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.startswith(TMP_PREFIX)], "a partial cache entry was left"
    assert all(load_npy(p) is not None for p in files if p.suffix == ".npy")


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES], ids=["read-only-disk", "no-write-permission"])
def test_read_only_cache_is_told_it_is_read_only(capsys, monkeypatch, tmp_path, tiny_root, code) -> None:  # noqa: ANN001
    """Not "free space" (the old message for EROFS; a cache without write permission failed every job instead)."""
    cache, out = tmp_path / "cache", tmp_path / "out"

    class _OsReadOnly(_OsWithAFullDisk):  # the cache only: the results folder stays writable
        def open(self, path: Any, flags: int, *a: Any) -> int:
            if flags & os.O_CREAT and Path(path).is_relative_to(cache):
                raise OSError(code, os.strerror(code), str(path))
            return os.open(path, flags, *a)

    monkeypatch.setattr(bench.cache, "os", _OsReadOnly(free=1 << 40))
    status, _, err = _run(capsys, tiny_root, out, cache)
    assert status == 2, err
    assert os.strerror(code) in err and "that folder is read-only: make it writable" in err
    assert "free space" not in err and "run the same command again to resume" in err
