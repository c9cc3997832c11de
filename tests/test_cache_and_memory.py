"""``bench cache prune`` (least recently used entries first, results unchanged) and the heap allocation mode
(:func:`bench.compat.tune_malloc`: faster optimiser steps, identical results)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import cache
from bench.cli import main
from bench.compat import tune_malloc
from bench.errors import ConfigError
from bench.results import read_rows

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "synthetic-tiny", "--backbone", "resnet18", "--weights", "random", "--no-progress",
        "--categories", "tile", "--shots", "2", "--seeds", "1"]  # fmt: skip


def _entry(root: Path, kind: str, name: str, size: int, age_s: int) -> Path:
    """A cache entry of ``size`` bytes named as the cache names them (prune leaves anything else alone)."""
    p = root / kind / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x" * size)
    t = 1_700_000_000 - age_s
    os.utime(p, (t, t))
    return p


def test_parse_size() -> None:
    assert cache.parse_size("20G") == 20 << 30 and cache.parse_size("500 MiB") == 500 << 20
    assert cache.parse_size("1.5k") == 1536 and cache.parse_size("4096") == 4096 and cache.parse_size("2gb") == 2 << 30
    for bad in ("lots", "-1", "5 XB", ""):
        with pytest.raises(ConfigError, match="as a size"):
            cache.parse_size(bad)


def test_prune_removes_least_recently_used_entries_of_recomputable_kinds(tmp_path: Path) -> None:
    old = _entry(tmp_path, "features", f"{'a' * 24}/{'0' * 64}.npy", 400, age_s=300)
    mid = _entry(tmp_path, "pretrained", f"{'1' * 16}.pt", 300, age_s=200)
    new = _entry(tmp_path, "nn", f"{'b' * 32}/{'2' * 64}.npy", 200, age_s=100)
    data = _entry(tmp_path, "synthetic", "tiny-v3-seed0/tile/train/good/000.png", 5000, age_s=1000)  # never pruned
    dry = cache.prune(600, tmp_path, dry_run=True)
    assert old.exists() and mid.exists() and int(dry[dry.kind == "total"].bytes.iloc[0]) == 400
    removed = cache.prune(600, tmp_path)
    assert not old.exists() and mid.exists() and new.exists() and data.exists()
    assert removed.attrs["kept_bytes"] == 500 and removed.set_index("kind").loc["features", "files"] == 1
    cache.prune(0, tmp_path, kinds=["nn"])
    assert not new.exists() and mid.exists()
    with pytest.raises(ConfigError, match="cannot prune synthetic"):
        cache.prune(0, tmp_path, kinds=["synthetic"])


def test_prune_never_changes_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A pruned entry is a miss later and is recomputed with identical content: the same predictions."""
    base = ["run", *TINY, "--method", "protonet-residual", "contrastive-residual", "--set", "finetune_passes=[0,1]",
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert main(["cache", "prune", "--max-size", "0", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "now take 0 B" in capsys.readouterr().out
    assert not any(p.is_file() for k in cache.PRUNABLE for p in (tmp_path / "cache" / k).rglob("*"))
    assert main([*base, "--out", str(tmp_path / "b")]) == 0
    a, b = ({r["key"]: (r["y_pred"], r["accuracy"]) for r in read_rows([tmp_path / d / "results.jsonl"]).rows}
            for d in ("a", "b"))  # fmt: skip
    assert a == b and len(a) == 2
    assert main(["cache", "prune", "--cache-dir", str(tmp_path / "cache")]) == 2  # no --max-size: a clear error
    assert "--max-size" in capsys.readouterr().err


# Run in a fresh process: in the test process, earlier tests can leave a large free chunk in the heap, and glibc
# serves a request from a free chunk that fits before it considers the mmap threshold (then the 400 MB block
# below stays resident and the check measures the suite's history, not the mode).
_HEAP_PROBE = """
import json, os
from pathlib import Path
import bench, torch
from bench.compat import release_free_memory, tune_malloc

def rss():
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

release_free_memory()
base = rss()
x = torch.ones(25_000_000)  # 100 MB, touched
del x
kept = rss() - base
release_free_memory()
released = rss() - base
y = torch.ones(100_000_000)  # 400 MB: above the mmap threshold
del y
big = rss() - base
print(json.dumps({"mode": tune_malloc(), "kept": kept, "released": released, "big": big}))
"""


def test_heap_mode_is_on_by_default_and_bounded(tmp_path: Path) -> None:
    """Blocks up to 256 MiB are kept on the heap when freed (reused without page faults) until
    ``release_free_memory``; larger ones get their own mapping and go back to the system at once."""
    if not sys.platform.startswith("linux") or os.environ.get("BENCH_MALLOC", "heap") != "heap":
        pytest.skip("the heap allocation mode applies to glibc on Linux with BENCH_MALLOC unset")
    assert tune_malloc() == "heap"
    probe = subprocess.run([sys.executable, "-c", _HEAP_PROBE], cwd=REPO, capture_output=True, text=True, check=True)
    m = json.loads(probe.stdout.strip().splitlines()[-1])
    assert m["mode"] == "heap"
    kept, released, big = m["kept"], m["released"], m["big"]
    assert kept > 80e6 and released < 20e6 and big < 20e6, (kept, released, big)
    proc = subprocess.run([sys.executable, "-c", "import bench.compat as c, bench; print(c.tune_malloc())"],
                          env={**os.environ, "BENCH_MALLOC": "system"}, capture_output=True, text=True, check=True)  # fmt: skip
    assert proc.stdout.strip() == "system"


_HUGEPAGE_PROBE = """
import sys
if sys.argv[1] == "numpy-first":
    import numpy
import bench, numpy
from bench.compat import _numpy_multiarray, numpy_hugepage_advice
print(numpy_hugepage_advice(), _numpy_multiarray()._set_madvise_hugepage(True))
"""


@pytest.mark.parametrize("order", ["bench-first", "numpy-first"])
def test_import_bench_turns_numpys_huge_page_advice_off_unless_the_user_chose(order: str) -> None:
    """``import bench`` stops NumPy advising huge pages (first touches of large arrays stalled on compaction:
    bench.compat.tune_numpy_hugepages), whether NumPy was imported before it or after; ``NUMPY_MADVISE_HUGEPAGE``
    set by the user wins. The second printed value is NumPy's own switch, read back independently."""
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}  # this process imported bench
    for user, expected in ((None, "False False"), ("1", "True True"), ("0", "False False")):
        run_env = env if user is None else {**env, "NUMPY_MADVISE_HUGEPAGE": user}
        proc = subprocess.run([sys.executable, "-c", _HUGEPAGE_PROBE, order], cwd=REPO, env=run_env,
                              capture_output=True, text=True, check=True)  # fmt: skip
        assert proc.stdout.strip() == expected, (user, proc.stdout, proc.stderr[-2000:])


@pytest.mark.slow
def test_allocation_mode_does_not_change_results(tmp_path: Path) -> None:
    """The same trained run with the harness's allocation settings (default: ``BENCH_MALLOC=heap``, no NumPy huge-page
    advice) and with the system's (``BENCH_MALLOC=system``, ``NUMPY_MADVISE_HUGEPAGE=1``): identical predictions and
    losses."""
    rows = {}
    for mode in ("heap", "system"):
        out = tmp_path / mode
        env = {**os.environ, "BENCH_MALLOC": mode, "HF_HUB_OFFLINE": "1", "BENCH_CACHE": str(tmp_path / f"cache-{mode}")}
        env["NUMPY_MADVISE_HUGEPAGE"] = "1" if mode == "system" else "0"  # NumPy's own default with the system's malloc
        args = [sys.executable, "-m", "bench", "run", *TINY, "--method", "contrastive", "--set", "max_episodes=2",
                "--set", "episode_groups=2", "--set", "finetune_passes=[0,2]", "--out", str(out)]  # fmt: skip
        proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        (row,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        assert row["env"]["malloc"] == (mode if sys.platform.startswith("linux") else "system")
        assert row["env"]["numpy_hugepages"] is (mode == "system")
        rows[mode] = row
    h, s = rows["heap"], rows["system"]
    assert h["y_pred"] == s["y_pred"] and h["accuracy"] == s["accuracy"]
    assert h["train_log"]["pretrain"]["loss"] == s["train_log"]["pretrain"]["loss"]
    assert h["train_log"]["finetune"]["loss_per_pass"] == s["train_log"]["finetune"]["loss_per_pass"]
