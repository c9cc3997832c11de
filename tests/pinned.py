"""``python -m bench`` in a subprocess whose floating-point kernels do not depend on the CPU: for the golden tests.

A trained head's predictions can flip on a last-bit difference: the golden grid recorded on one Xeon gave one other
prediction (of 64 rows, one 2-shot contrastive row) on a Xeon with AVX-512 FP16 and AMX, with the same code and one
thread, because PyTorch's kernels (ATen's vectorised loops, oneDNN convolutions, MKL's BLAS) are chosen by the CPU's
instruction set. The golden tests therefore run the harness with those choices pinned to AVX2, which every x86-64
CPU of the last decade has: ``ATEN_CPU_CAPABILITY`` (ATen), ``ONEDNN_MAX_CPU_ISA`` (oneDNN), ``MKL_CBWR`` (MKL's
conditional numerical reproducibility), one thread each. These variables are read when the libraries load, so the
run needs a fresh process. NumPy's BLAS is left alone (docs: OpenBLAS's core type is the machine's own business).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2", "OMP_NUM_THREADS": "1",
          "MKL_NUM_THREADS": "1"}  # fmt: skip


def run_bench(args: list[str]) -> None:
    """Run ``python -m bench *args`` with :data:`PINNED` kernels; fail with its output when it fails."""
    proc = subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, env={**os.environ, **PINNED},
                          capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert proc.returncode == 0, f"python -m bench {' '.join(args[:3])} … failed:\n{proc.stderr[-3000:]}"
