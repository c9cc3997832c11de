"""Test set-up: offline hub, a private cache per test session, the torchvision CPU shim, shared-data fixtures."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests never read or write the user's cache: a fresh one per session, removed at exit.
_CACHE = tempfile.mkdtemp(prefix="bench-test-cache-")
os.environ["BENCH_CACHE"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

import pytest  # noqa: E402

from bench.compat import patch_torchvision  # noqa: E402

patch_torchvision()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real image subsets in ../shared/data (or $BENCH_SHARED_DATA); skips when absent."""
    from bench.paths import shared_data_dir

    d = shared_data_dir()
    if d is None:
        pytest.skip("real image subsets not found: set BENCH_SHARED_DATA or place them at ../shared/data")
    return d


@pytest.fixture(scope="session")
def shared_screw(shared_data: Path) -> Path:
    root = shared_data / "mvtec_ad"
    if not (root / "screw").is_dir():
        pytest.skip(f"{root}/screw not found: the real MVTec AD screw subset is needed for this test")
    return root


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """synthetic-tiny in the MVTec AD layout, generated once per test module (a module that breaks it copies it
    first; the CLI tests pass it with ``--dataset folder --data-root``)."""
    from bench.datasets.synthetic import generate

    return generate(tmp_path_factory.mktemp("tiny-data"), "tiny")


@pytest.fixture(scope="module")
def one_torch_thread():  # noqa: ANN201
    """One torch thread for a module of small end-to-end runs, restored after it: their tensors are too small to
    gain from a second thread, and on a busy runner two threads wait on each other (the discovery tests took 87 s
    instead of 34 s with the default of 2 on a loaded 2-core machine)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After a green run, remove pytest's base temp folder too (module-scoped data sets and caches)."""
    if exitstatus == 0:
        base = session.config._tmp_path_factory.getbasetemp() if hasattr(session.config, "_tmp_path_factory") else None
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)
