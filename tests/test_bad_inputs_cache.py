"""Bad input to the cache, tried for real (issue #20): ``bench cache clear|prune|info`` given a folder that is not a
cache, user files inside a cache, unknown kinds, a missing root; a full or read-only cache disk during a run.

Each case calls :func:`bench.cli.main` in this process (the code path of ``python -m bench``) and checks the exit
status, a message that names the problem and the fix, no traceback, and, where files are at stake, that every file
of the user's folder is byte-identical afterwards.
"""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bench.cache
from bench.cache import TMP_PREFIX, DiskCache, file_sha256, hash_memo_dir, load_npy, save_json, save_npy
from bench.paths import CACHE_TAG
from tests.helpers import cli, file_tree

COMMON = ["--backbone", "resnet18", "--weights", "random", "--threads", "1", "--no-progress"]
ONE_JOB = ["--method", "protonet", "--categories", "tile", "--shots", "1", "--seeds", "1"]


# --------------------------------------------------------------------------------------------- helpers


def _git_checkout(root: Path) -> Path:
    """A real git checkout: sources, a README, a folder named like a cache kind, one commit."""
    root.mkdir()
    (root / "README.md").write_text("# my project\n")
    (root / "src").mkdir()
    (root / "src" / "main.py").write_text("print('hello')\n")
    (root / "features").mkdir()
    (root / "features" / "my_features.csv").write_text("a,b\n1,2\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "init"]):
        subprocess.run(["git", *cmd], cwd=root, env=env, check=True, capture_output=True)
    return root


def _real_cache(root: Path, image: Path) -> list[Path]:
    """A cache as the harness writes it (tagged root, an entry of each content-addressed kind); its entries."""
    store = DiskCache(root)
    bench.cache.forget_file_hashes()  # the disk memo is written on an in-process miss
    name = file_sha256(image, hash_memo_dir(root))
    entries = [save_npy(store.path("features", "a" * 24, name), np.ones((4, 4), np.float32)),
               save_npy(store.path("banks", "a" * 24, "b" * 32), np.ones((3, 8), np.float32)),
               save_json(store.path("banks", "a" * 24, "b" * 32, ".json"), {"n": 3}),
               save_npy(store.path("nn", "b" * 32, name), np.zeros((2, 2), np.int32))]  # fmt: skip
    pretrained = root / "pretrained" / f"{'c' * 16}.pt"
    pretrained.parent.mkdir()
    pretrained.write_bytes(b"weights")
    return [*entries, pretrained, *(root / "hashes").iterdir()]


def _user_files(root: Path) -> None:
    """Files of a user's that sit in folders named like cache kinds (issue #20, item 2)."""
    (root / "features").mkdir(exist_ok=True)
    (root / "features" / "my_features.csv").write_text("a,b\n1,2\n")
    (root / "banks").mkdir(exist_ok=True)
    (root / "banks" / "account.txt").write_text("IBAN ...\n")
    (root / "nn" / ("b" * 32) / "notes.txt").write_text("mine\n")


# --------------------------------------------------------------------------------------------- not a cache
@pytest.mark.parametrize("action", [["clear"], ["prune", "--max-size", "0"], ["info"]])
def test_a_git_checkout_is_not_a_cache(capsys, monkeypatch, tmp_path, action) -> None:  # noqa: ANN001
    repo = _git_checkout(tmp_path / "repo")
    before = file_tree(repo)
    monkeypatch.chdir(repo)  # as in the issue: `cd <a git checkout> && python -m bench cache clear --cache-dir .`
    code, _, err = cli(capsys, "cache", *action, "--cache-dir", ".")
    assert code == 2
    assert f"{repo} is not a cache of this harness" in err and CACHE_TAG in err and "Nothing was changed" in err
    assert "--cache-dir" in err and "'.git'" in err
    assert file_tree(repo) == before


@pytest.mark.parametrize("action", [["clear"], ["prune", "--max-size", "0"]])
def test_a_dataset_root_is_not_a_cache(capsys, tiny_root, action) -> None:  # noqa: ANN001
    before = file_tree(tiny_root)
    code, _, err = cli(capsys, "cache", *action, "--cache-dir", str(tiny_root))
    assert code == 2 and "is not a cache of this harness" in err
    assert file_tree(tiny_root) == before


def test_prune_refuses_a_project_with_folders_named_like_kinds(capsys, tmp_path) -> None:  # noqa: ANN001
    project = tmp_path / "project"
    project.mkdir()
    (project / "nn" / ("b" * 32)).mkdir(parents=True)
    _user_files(project)  # nothing but kind folders at the top: the files inside give it away
    before = file_tree(project)
    code, _, err = cli(capsys, "cache", "prune", "--max-size", "0", "--cache-dir", str(project))
    assert code == 2 and "is not a cache of this harness" in err
    assert file_tree(project) == before


# --------------------------------------------------------------------------------------------- inside a cache
@pytest.mark.parametrize("action", [["prune", "--max-size", "0"], ["clear"]])
def test_only_the_caches_own_entries_are_deleted(capsys, caplog, tmp_path, tiny_root, action) -> None:  # noqa: ANN001
    cache = tmp_path / "cache"
    entries = _real_cache(cache, next(tiny_root.rglob("*.png")))
    _user_files(cache)
    (cache / "README.md").write_text("my notes about this cache\n")
    kept = {"features/my_features.csv", "banks/account.txt", f"nn/{'b' * 32}/notes.txt", "README.md"}
    if action[0] == "prune":  # prune leaves the kinds that are not recomputed (the hash memo here)
        kept |= {p.relative_to(cache).as_posix() for p in (cache / "hashes").iterdir()}
    before = {k: v for k, v in file_tree(cache).items() if k in kept}
    assert len(before) == len(kept)
    with caplog.at_level("WARNING"):
        code, out, err = cli(capsys, "cache", *action, "--cache-dir", str(cache))
    assert code == 0, err
    assert not any(p.exists() for p in entries if p.relative_to(cache).as_posix() not in kept)
    after = {k: v for k, v in file_tree(cache).items() if v != "dir" and k != CACHE_TAG}
    assert after == before  # the user's files, byte for byte, and nothing else
    assert (cache / CACHE_TAG).is_file()  # written when the harness created the folder
    assert "features/my_features.csv" in caplog.text and "not the cache's own" in caplog.text


def test_a_cache_written_before_tags_is_recognised_once_then_tagged(capsys, tmp_path, tiny_root) -> None:  # noqa: ANN001
    cache = tmp_path / "cache"
    entries = _real_cache(cache, next(tiny_root.rglob("*.png")))
    generated = shutil.copytree(tiny_root, cache / "synthetic" / "tiny-v2-seed0")  # as the generator leaves it
    n_generated = sum(p.is_file() for p in generated.rglob("*"))
    (cache / CACHE_TAG).unlink(missing_ok=True)  # as a cache written before this change
    code, out, _ = cli(capsys, "cache", "info", "--cache-dir", str(cache))
    assert code == 0 and "features" in out and (cache / CACHE_TAG).is_file()
    assert bench.cache.info(cache).set_index("kind").loc["synthetic", "files"] == n_generated
    code, _, err = cli(capsys, "cache", "clear", "--cache-dir", str(cache))
    assert code == 0, err
    assert not any(p.exists() for p in entries) and not (cache / "synthetic").exists()


# --------------------------------------------------------------------------------------------- typos
def test_unknown_kind_missing_root_and_a_file_are_errors(capsys, tmp_path, tiny_root) -> None:  # noqa: ANN001
    cache = tmp_path / "cache"
    entries = _real_cache(cache, next(tiny_root.rglob("*.png")))
    code, _, err = cli(capsys, "cache", "clear", "--kinds", "nosuch", "--cache-dir", str(cache))
    assert code == 2 and "unknown cache kind 'nosuch'" in err and "features, banks, nn" in err
    assert all(p.exists() for p in entries)
    typo = tmp_path / "cahce"
    code, _, err = cli(capsys, "cache", "info", "--cache-dir", str(typo))
    assert code == 2 and f"there is no cache at {typo} (no such folder)" in err and "check --cache-dir" in err
    assert not typo.exists()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a cache\n")
    code, _, err = cli(capsys, "cache", "info", "--cache-dir", str(a_file))
    assert code == 2 and f"{a_file} is a file, not a cache folder" in err


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
    return cli(capsys, "run", "--dataset", "folder", "--data-root", str(data), *COMMON, *ONE_JOB, "--out", str(out),
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


def test_cache_that_cannot_be_created_or_cleared(capsys, monkeypatch, tmp_path, tiny_root) -> None:  # noqa: ANN001
    a_file = tmp_path / "a-file"
    a_file.write_text("x\n")
    code, _, err = _run(capsys, tiny_root, tmp_path / "out", a_file / "cache")  # was a traceback
    assert code == 2 and f"cannot create the cache folder {a_file / 'cache'}" in err and "--cache-dir" in err

    cache = tmp_path / "cache"
    entries = _real_cache(cache, next(tiny_root.rglob("*.png")))

    def read_only_unlink(self: Path, missing_ok: bool = False) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(pathlib.Path, "unlink", read_only_unlink)
    code, _, err = cli(capsys, "cache", "clear", "--cache-dir", str(cache))
    monkeypatch.undo()
    assert code == 2 and "is read-only" in err and "make it writable" in err and "free space" not in err
    assert all(p.exists() for p in entries)


def test_pretrained_checkpoint_on_a_full_disk_is_the_disk_full_error(monkeypatch, tmp_path) -> None:  # noqa: ANN001
    """Pretraining checkpoints are serialised in memory and written by the cache's writer (``save_checkpoint``): on a
    full disk torch.save's own writer raised a RuntimeError ("file write failed"), which failed each job instead of
    reaching the run's disk-full stop, and it swallows a Python file object's OSError too (the control below); the
    cache's writer gives the OS's ENOSPC naming the entry and leaves no partial file. With room, it loads back."""
    import torch

    from bench.cache import atomic_write
    from bench.methods._pretrain import save_checkpoint as save

    blob = {"model": {"w": torch.arange(100_000, dtype=torch.float32)}, "info": {"episodes": 3}}
    path = tmp_path / "pretrain" / "ab" / "abcdef.pt"
    save(path, blob)
    assert torch.equal(torch.load(path, weights_only=True)["model"]["w"], blob["model"]["w"])
    monkeypatch.setattr(bench.cache, "os", _OsWithAFullDisk(free=50_000))
    with pytest.raises(RuntimeError):  # control: torch writing into the file object hides the errno
        atomic_write(tmp_path / "pretrain" / "ef" / "ef0123.pt", lambda f: torch.save(blob, f))
    full = tmp_path / "pretrain" / "cd" / "cdef01.pt"
    with pytest.raises(OSError) as caught:
        save(full, blob)
    assert caught.value.errno == errno.ENOSPC and str(full) in str(caught.value)
    assert not full.exists() and [p.name for p in full.parent.iterdir()] == []
