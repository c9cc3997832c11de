"""Environment fixes that must run before torchvision or timm is imported, and the process's malloc settings.

torchvision 0.28.0 from the registry is a CUDA build: on the CPU-only torch 2.13.0 wheel its compiled
extension fails to load, and ``import torchvision`` (hence ``import timm``) dies with
``operator torchvision::nms does not exist``. :func:`patch_torchvision` registers the two operator
schemas torchvision's Python code expects and a pure-torch CPU ``nms`` so the import works. On a machine
where torchvision's extension loads normally it does nothing. ``import bench`` installs it as an import hook
(:func:`install_torchvision_hook`): it runs just before torchvision's first import, so commands that never load
torch start without it. See ``docs/environment.md``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.abc
import importlib.util
import os
import sys
from pathlib import Path

_PATCHED = False


def _nms_cpu(boxes, scores, iou_threshold: float):  # noqa: ANN001, ANN202 - registered as a torch op
    import torch

    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    order = scores.argsort(descending=True)
    keep = []
    suppressed = torch.zeros(boxes.shape[0], dtype=torch.bool)
    for idx in order.tolist():
        if suppressed[idx]:
            continue
        keep.append(idx)
        xx1 = torch.maximum(x1[idx], x1)
        yy1 = torch.maximum(y1[idx], y1)
        xx2 = torch.minimum(x2[idx], x2)
        yy2 = torch.minimum(y2[idx], y2)
        inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
        iou = inter / (areas[idx] + areas - inter).clamp(min=1e-12)
        suppressed |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


def patch_torchvision() -> bool:
    """Make ``import torchvision`` work on CPU-only torch. Returns True if a patch was applied."""
    global _PATCHED
    if _PATCHED:
        return True
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return False
    try:
        if hasattr(torch.ops, "torchvision") and hasattr(torch.ops.torchvision, "nms"):
            return False
    except (RuntimeError, AttributeError):
        pass
    so_files = sorted(Path(spec.origin).parent.glob("_C*.so"))
    for so in so_files:
        try:
            torch.ops.load_library(str(so))
            return False  # the real extension works: nothing to patch
        except (OSError, RuntimeError):
            continue
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define(
        "qnms(Tensor qdets, Tensor qscores, float iou_threshold) -> Tensor"
    )
    lib.impl("nms", _nms_cpu, "CPU")
    lib.impl("qnms", _nms_cpu, "CPU")
    globals()["_LIB"] = lib  # keep the library object alive
    _PATCHED = True
    return True


class _PatchBeforeTorchvision(importlib.abc.MetaPathFinder):
    """An import hook that applies :func:`patch_torchvision` just before the first ``import torchvision``.

    The patch imports torch (about 1.5 s of a 2-core machine): done at ``import bench``, it made every command pay
    it, ``--help`` and a one-line option error included (issue #24). Through this hook only a process that
    imports torchvision (timm does) pays, and it still gets the patch first, whichever module imports it.
    """

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname == "torchvision":
            uninstall_torchvision_hook()  # before patching: patch_torchvision looks torchvision up itself
            patch_torchvision()
        return None  # the ordinary finders import the module


def install_torchvision_hook() -> None:
    """Patch torchvision (:func:`patch_torchvision`) when it is first imported, not now; at once if it already is.

    Called by ``import bench``, so every process of the harness (workers included) gets the patch before timm
    loads, without importing torch where a command does not need it.
    """
    if "torchvision" in sys.modules:
        patch_torchvision()
    elif not any(isinstance(f, _PatchBeforeTorchvision) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchBeforeTorchvision())


def uninstall_torchvision_hook() -> None:
    """Remove :func:`install_torchvision_hook`'s import hook (it is needed once)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _PatchBeforeTorchvision)]


def offline_defaults() -> None:
    """Fail fast instead of retrying for ~50 s when a hub download cannot succeed (set BENCH_ONLINE=1 to skip)."""
    if os.environ.get("BENCH_ONLINE") != "1":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")


# glibc mallopt(3) parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 << 20
TRIM_THRESHOLD = 512 << 20
_MALLOC: dict[str, object] = {"mode": None, "libc": None}


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    # glibc only (musl's mallopt is a no-op): all three symbols must be there
    return libc if all(hasattr(libc, f) for f in ("gnu_get_libc_version", "mallopt", "malloc_trim")) else None


def tune_malloc() -> str:
    """Serve allocations up to 256 MiB from the heap instead of fresh ``mmap`` regions (glibc on Linux only).

    glibc gives every allocation above its mmap threshold (dynamic, at most 32 MiB by default) a new ``mmap``
    region and unmaps it on free, so each reuse pays one page fault per 4 KiB page. The paper's heads allocate a
    51 MB gradient for their 12.8 M-weight Linear at every optimiser step: that first-touch cost was about 40 % of
    a contrastive fine-tuning step on the 2-core build machine (``python -m bench perf steps`` prints the step
    time with and without). With the mmap threshold at 256 MiB and the trim threshold at 512 MiB such blocks are
    reused from the heap. Larger blocks (RelationNet's 810-pair pretraining activations, 1.3 GB each) get their
    own mappings and go back to the system when freed, unless a free heap chunk already fits them (glibc looks
    in its free lists before it applies the threshold): turning mmap off altogether was tried and raised
    that episode's peak memory from 6.0 to 9.6 GiB (a fragmented heap). The runner calls
    :func:`release_free_memory` after each job. The arithmetic is unchanged (same kernels on the same values;
    ``tests/test_cache_and_memory.py`` compares whole runs). ``BENCH_MALLOC=system`` keeps glibc's defaults.

    Returns:
        The mode in effect, ``"heap"`` or ``"system"`` (recorded in every result row's ``env``).
    """
    if _MALLOC["mode"] is not None:
        return str(_MALLOC["mode"])
    mode = "system"
    libc = _glibc() if os.environ.get("BENCH_MALLOC", "heap").lower() not in ("system", "default", "off") else None
    if libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1:
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        mode = "heap"
        _MALLOC["libc"] = libc
    _MALLOC["mode"] = mode
    return mode


def release_free_memory() -> None:
    """Return the heap's free pages to the system (``malloc_trim``); a no-op unless :func:`tune_malloc` took effect."""
    libc = _MALLOC.get("libc")
    if libc is not None:
        libc.malloc_trim(0)  # type: ignore[attr-defined]


def _numpy_multiarray():  # noqa: ANN202 - numpy's C module (numpy 2: numpy._core, 1.x: numpy.core)
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    return multiarray


def tune_numpy_hugepages() -> None:
    """Keep NumPy from advising huge pages (``madvise(MADV_HUGEPAGE)``) for its arrays, unless the user chose.

    NumPy advises huge pages for every large array on Linux. Where the kernel's THP ``defrag`` setting compacts
    memory on the fault of an advised region (``madvise``, the common default, ``always``, ``defer+madvise``), each
    first touch can stall on compaction, and when no huge page can be had (this build machine: ``AnonHugePages`` 0)
    nothing is gained. Measured on the 2-core build machine (defrag ``madvise``): filling a fresh 300 MB array (the
    patch features of 96 images at 28 × 28 × 1024) took 0.49–0.83 s with the advice and 0.13–0.15 s without; the
    feature extraction end to end went from 0.79 to 0.89–0.91 of a bare resnet50 forward (``python -m bench perf
    features --backbone resnet50 --weights random --threads 1``; a figure of issue #23). Results are unchanged: this
    is advice on memory, not arithmetic. A ``NUMPY_MADVISE_HUGEPAGE`` already set (0 or 1) is the user's choice and
    is kept.

    Called by ``import bench``: before NumPy is imported it sets the variable NumPy reads at import (worker processes
    inherit it); after, it sets NumPy's switch as well.
    """
    if "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        return
    os.environ["NUMPY_MADVISE_HUGEPAGE"] = "0"
    if "numpy" in sys.modules:
        _numpy_multiarray()._set_madvise_hugepage(False)


def numpy_hugepage_advice() -> bool:
    """Whether NumPy advises huge pages for its arrays in this process (recorded in every row's ``env``)."""
    multiarray = _numpy_multiarray()
    previous = multiarray._set_madvise_hugepage(False)
    multiarray._set_madvise_hugepage(previous)
    return bool(previous)
