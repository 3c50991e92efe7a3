#!/usr/bin/env bash
# gpu-check.sh: every stepedit GPU fast path run and measured in one go, in about 8 minutes on
# one H100/H200, with full-size dummy weights (dummy:v1.1: the real shapes, random values, no
# download). The steps, each under its own timeout; a failed step does not stop the next:
#   0. set up: use python3's CUDA PyTorch if it has one (adding missing packages from PyPI, or
#      offline from wheels in $REPO/.whl), else a fresh venv with the CUDA build from PyPI
#   1. pytest -m gpu tests/acceleration (every fast path on tiny models: kernels, compile, FP8,
#      pinned streaming, the exact and 24gb placements)
#   2. the attention kernels at the DiT's shape (cuDNN, PyTorch's flash, FA3/FA4 when present)
#   3. stepedit bench: plain then exact at SIZE px, square and 16:9 (exact's max |diff| against
#      plain; warm-up compile, then a new aspect ratio must compile nothing)
#   4. stepedit bench: fast;  5. stepedit bench: 24gb (loads on the host, FP8 DiT, MLLM streamed)
#   6. one table: s/edit, peak and reserved GB, cold start, compiles, max |diff|, PSNR, kernels
#
# Usage, from anywhere:
#     bash benchmarks/gpu-check.sh [--dry-run | --fetch-wheels] [STEPEDIT_REPO]
# --dry-run (or GPU_CHECK_DRY_RUN=1): the same steps on the CPU with the tiny model, 256 px,
# 2 steps, nothing installed; tests/test_bench.py runs it.
# --fetch-wheels: run HERE, on a machine with PyPI, before sending the checkout to a GPU machine
# that has a CUDA PyTorch but no registry: downloads the wheels it lacks (torchao) for Python
# GPU_CHECK_WHEEL_PY (3.12) into $REPO/.whl (git-ignored locally), which step 0 installs there.
# Env: OUT (default /tmp/gpu-check-out): gpu-check.log, summary.txt, bench.jsonl,
# attention.json, RESULTS.md; GPU_CHECK_BUDGET (whole run, seconds, default 470);
# GPU_CHECK_SIZE (1024), GPU_CHECK_STEPS (28), GPU_CHECK_MODEL (dummy:v1.1),
# GPU_CHECK_PYTHON (python3), GPU_CHECK_VENV (/tmp/stepedit-gpu-venv).
set -u

DRY=${GPU_CHECK_DRY_RUN:-0}
FETCH=0
REPO_ARG=""
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        --fetch-wheels) FETCH=1 ;;
        -h | --help) sed -n '2,25p' "$0"; exit 0 ;;
        *) REPO_ARG=$arg ;;
    esac
done
START=$(date +%s)
REPO=$(cd "${REPO_ARG:-${STEPEDIT_REPO:-$(dirname "$0")/..}}" && pwd)
if [ "$FETCH" = 1 ]; then
    mkdir -p "$REPO/.whl"
    exclude="$REPO/.git/info/exclude"
    [ -f "$exclude" ] && ! grep -qx '/.whl/' "$exclude" && echo '/.whl/' >>"$exclude"
    platforms=()
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
        manylinux_2_17_x86_64 manylinux2014_x86_64; do platforms+=(--platform "$p"); done
    # torchao's wheel is abi3 (any CPython >= 3.10); the bounds are pyproject.toml's.
    exec "${GPU_CHECK_PYTHON:-python3}" -m pip download --no-deps --only-binary=:all: \
        --python-version "${GPU_CHECK_WHEEL_PY:-3.12}" --implementation cp "${platforms[@]}" \
        -d "$REPO/.whl" "torchao>=0.18,<0.19"
fi
OUT=${OUT:-/tmp/gpu-check-out}
BUDGET=${GPU_CHECK_BUDGET:-470}
SYS_PY=${GPU_CHECK_PYTHON:-python3}
if [ "$DRY" = 1 ]; then
    SIZE=${GPU_CHECK_SIZE:-256} STEPS=${GPU_CHECK_STEPS:-2} MODEL=${GPU_CHECK_MODEL:-dummy:tiny-v1.1}
    DEVICE=cpu
    REPEATS=2
    # The CPU has no FP8: fast and 24gb are reported "not run". Compile is left to the tests.
    MODES_MAIN=${GPU_CHECK_MODES_MAIN:-"plain exact-compile"}
else
    SIZE=${GPU_CHECK_SIZE:-1024} STEPS=${GPU_CHECK_STEPS:-28} MODEL=${GPU_CHECK_MODEL:-dummy:v1.1}
    DEVICE=cuda
    REPEATS=10
    # plain first: the reference every later mode (exact, fast, 24gb) is compared with.
    MODES_MAIN=${GPU_CHECK_MODES_MAIN:-"plain exact"}
fi
mkdir -p "$OUT"
LOG="$OUT/gpu-check.log"
: >"$LOG"
rm -f "$OUT/bench.jsonl" "$OUT/attention.json" "$OUT/summary.txt"
REFERENCE=$(mktemp -u /tmp/gpu-check-reference.XXXXXX.pt)
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
STEPS_DONE=()

say() { echo "[gpu-check $(($(date +%s) - START))s] $*" | tee -a "$LOG"; }
left() { echo $((BUDGET - ($(date +%s) - START))); }

# step NAME CAP_SECONDS COMMAND...: run under min(CAP, time left - 15 s for the summary);
# output appended to the log; the outcome recorded for the summary.
step() {
    local name=$1 cap=$2
    shift 2
    local limit
    limit=$(($(left) - 15))
    [ "$limit" -gt "$cap" ] && limit=$cap
    if [ "$limit" -lt 20 ]; then
        say "$name: skipped (${limit}s left in the budget)"
        STEPS_DONE+=("$name: skipped, out of time")
        return 0
    fi
    say "$name (timeout ${limit}s)"
    echo "----- $name: $*" >>"$LOG"
    local tic rc
    tic=$(date +%s)
    timeout --signal=INT --kill-after=15 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    local took=$(($(date +%s) - tic))
    case $rc in
        0) STEPS_DONE+=("$name: ok (${took}s)") ;;
        124 | 130 | 137) STEPS_DONE+=("$name: TIMED OUT after ${took}s") ;;
        *) STEPS_DONE+=("$name: FAILED, exit $rc (${took}s)") ;;
    esac
    say "$name: exit $rc after ${took}s"
}

if [ ! -f "$REPO/pyproject.toml" ] || ! grep -q 'name = "stepedit"' "$REPO/pyproject.toml"; then
    echo "not a stepedit checkout: $REPO (pass its path as the argument)" >&2
    exit 2
fi
cd "$REPO" || exit 2

# ------------------------------------------------------------------------------- 0. set up
say "repo $REPO; out $OUT; dry run $DRY; size $SIZE, $STEPS steps, $MODEL on $DEVICE"
if [ "$DRY" = 1 ]; then
    PY=$SYS_PY
    export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
else
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$LOG"
    SITE=/tmp/stepedit-gpu-site
    if timeout 120 "$SYS_PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
        >>"$LOG" 2>&1; then
        # Keep the CUDA PyTorch that is there (a venv made from it would not see it): run the
        # checkout from source and add only what is missing, without dependencies, beside it.
        say "python3 has a CUDA PyTorch: using it, stepedit from $REPO/src"
        PY=$SYS_PY
        export PYTHONPATH="$REPO/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
        missing=()
        for spec in "transformers>=4.57:transformers" "safetensors:safetensors" "einops:einops" \
            "pillow:PIL" "numpy:numpy" "tqdm:tqdm" "huggingface_hub:huggingface_hub" \
            "torchao>=0.14,<0.19:torchao" "pytest:pytest"; do
            "$PY" -c "import ${spec##*:}" 2>/dev/null || missing+=("${spec%%:*}")
        done
        if [ ${#missing[@]} -gt 0 ]; then
            say "missing: ${missing[*]}"
            if ls "$REPO"/.whl/*.whl >/dev/null 2>&1; then  # offline: wheels carried along
                timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile \
                    --target "$SITE" "$REPO"/.whl/*.whl >>"$LOG" 2>&1 || say "wheel install failed"
            else
                timeout 180 "$PY" -m pip install -q --retries 1 --timeout 15 --no-deps \
                    --target "$SITE" "${missing[@]}" >>"$LOG" 2>&1 || say "pip install failed"
            fi
        fi
    else
        say "no CUDA PyTorch on $SYS_PY: a fresh venv with PyPI's CUDA build"
        VENV=${GPU_CHECK_VENV:-/tmp/stepedit-gpu-venv}
        [ -x "$VENV/bin/python" ] || "$SYS_PY" -m venv "$VENV"
        PY="$VENV/bin/python"
        # The GPU extras bound torch and torchao to versions checked together (pyproject.toml).
        timeout 420 "$PY" -m pip install -q -e "${REPO}[gpu]" pytest pytest-timeout >>"$LOG" 2>&1 ||
            say "pip install failed (see $LOG)"
        # FlashAttention-4 (Hopper/Blackwell, PyPI): optional, measured in step 2 when present.
        [ "${GPU_CHECK_FA4:-1}" = 1 ] && timeout 120 "$PY" -m pip install -q "${REPO}[flash4]" \
            >>"$LOG" 2>&1
    fi
fi
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", gpu)
for name in ("stepedit", "transformers", "torchao", "flash_attn_interface", "flash_attn.cute"):
    try:
        module = importlib.import_module(name)
        print(f"  {name}: {getattr(module, '__version__', 'present')}")
    except Exception as exc:  # noqa: BLE001
        print(f"  {name}: missing ({type(exc).__name__})")
EOF
if ! "$PY" -c 'import stepedit.acceleration.bench' >>"$LOG" 2>&1; then
    say "stepedit does not import with $PY; see $LOG"
    exit 1
fi
if [ "$DRY" != 1 ] && ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    # Says why (an old driver, a CPU build) instead of measuring the CPU.
    "$PY" -c 'from stepedit.acceleration.device import check_device; import torch; check_device(torch.device("cuda"))' \
        2>&1 | tail -1 | tee -a "$LOG"
    exit 1
fi

# ---------------------------------------------------------------------------- 1. GPU tests
step "1. pytest -m gpu" 90 "$PY" -m pytest -m gpu tests/acceleration -q -rs -p no:cacheprovider \
    --no-header

# ---------------------------------------------------------------------- 2. attention kernels
step "2. attention kernels" 30 "$PY" -m stepedit.acceleration.gpucheck attention --size "$SIZE" \
    --device "$DEVICE" --repeats "$REPEATS" --json "$OUT/attention.json"

# ------------------------------------------------------------------------------ 3-5. bench
bench() {  # NAME CAP ASPECTS MODES...
    local name=$1 cap=$2 aspects=$3
    shift 3
    local modes=()
    for m in "$@"; do modes+=(--optimize "$m"); done
    step "$name" "$cap" "$PY" -m stepedit.cli --log-level WARNING bench --model "$MODEL" \
        --device "$DEVICE" --sizes "$SIZE" --aspects "$aspects" --steps "$STEPS" --warmup 1 \
        --warmup-steps 2 --repeats 1 "${modes[@]}" --reference "$REFERENCE" \
        --progress "$OUT/bench.jsonl" --results "$OUT/RESULTS.md"
}
# shellcheck disable=SC2086
bench "3. bench ${MODES_MAIN// /, }" 200 "1:1,16:9" $MODES_MAIN
bench "4. bench fast" 110 "1:1" fast
bench "5. bench 24gb" 140 "1:1" 24gb

# ----------------------------------------------------------------------------- 6. summary
say "6. summary"
{
    echo "gpu-check: $(hostname), $(($(date +%s) - START))s of a ${BUDGET}s budget"
    for line in "${STEPS_DONE[@]}"; do echo "  $line"; done
    timeout 60 "$PY" -m stepedit.acceleration.gpucheck summary "$OUT" 2>&1
} >"$OUT/summary.txt"
tee -a "$LOG" <"$OUT/summary.txt"
rm -f "$REFERENCE"
say "done; $OUT holds gpu-check.log, summary.txt, bench.jsonl, attention.json, RESULTS.md"
