"""The environment record stored with every result row (lm-evaluation-harness's ``add_env_info`` idea)."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess

import torch

from bench.compat import numpy_hugepage_advice, tune_malloc

_PACKAGES = ("torch", "torchvision", "timm", "faiss-cpu", "scikit-learn", "numpy", "pandas", "scipy", "opencv-python-headless", "pillow")


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, object]:
    """Harness version, git commit and whether the working tree had uncommitted changes."""
    import bench
    from bench.paths import CHECKOUT as root

    out: dict[str, object] = {"harness": bench.__version__, "git_commit": None, "git_dirty": None}
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if sha.returncode == 0:
            out["git_commit"] = sha.stdout.strip()
            st = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=5
            )
            out["git_dirty"] = bool(st.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def environment(device: str = "cpu") -> dict[str, object]:
    """Code version, library versions, device and threads."""
    env: dict[str, object] = dict(code_version())
    env["python"] = platform.python_version()
    env["platform"] = platform.platform()
    env["packages"] = {p: _version(p) for p in _PACKAGES}
    env["device"] = device
    if device.startswith("cuda") and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    env["torch_threads"] = torch.get_num_threads()
    env["cpu_count"] = os.cpu_count()
    env["deterministic_algorithms"] = torch.are_deterministic_algorithms_enabled()
    env["malloc"] = tune_malloc()  # "heap" (large blocks reused, bench.compat) or "system"; speed only
    env["numpy_hugepages"] = numpy_hugepage_advice()  # False unless NUMPY_MADVISE_HUGEPAGE=1 (bench.compat); speed only
    return env
