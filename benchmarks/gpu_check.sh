#!/usr/bin/env bash
# Issue 10's GPU check, as ONE command on the lent GPU machine (NVIDIA H200, Python 3.12, torch
# with CUDA, no network).
#
# First, here (a machine with PyPI), from the repo root: `bash benchmarks/gpu_wheels.sh` (fills
# the git-ignored .whl/ with the service's packages the GPU machine lacks, about 14 MiB; the
# session's checkout must hold .whl and this script). Then the `run` tool call:
#     command: bash benchmarks/gpu_check.sh        (or: bash benchmarks/gpu_check.sh --cpu)
#     carry:   [".whl"]
#     timeout_s: 600
# It installs the wheels into /tmp/site (PYTHONPATH=/tmp/site:<repo>: `infoscore up`'s API and
# worker are `sys.executable -m launcher.cli ...` children with the same environment, so they
# find them too), then, each step bounded by `timeout` and the next one run whatever happened:
#   1. nvidia-smi -L, Python and torch versions, torch.cuda.is_available(), the service's imports,
#      and benchmarks/gpu_wheels_check.py --installed (versions the carried wheels need);
#   2. pytest -m gpu tests/test_gpu.py tests/test_gpu_si.py                    (at most 240 s);
#   3. benchmarks/devices.py --device cuda, all eight job kinds of issue 10     (at most 240 s);
#   4. with --cpu, and if at least 60 s are left of the 560 s budget: devices.py --device cpu on
#      the cheap kinds, a same-machine CPU comparison                           (at most 240 s).
# It always exits 0. What comes back under $OUT (files_at in the tool's reply; at most 7 files):
#   summary.txt          versions, each step's outcome and seconds, pytest's result line, the tables
#   gpu_tests.log        pytest's output
#   devices_cuda.log     devices.py's output (per-job lines and the table); devices_cuda.json its rows
#   devices_cpu.log      with --cpu (and devices_cpu.json)
#   service_logs.tgz     the embedded service's api/worker/broker logs from the devices.py runs
#
# Dry run without a GPU (here): OUT=/tmp/gpuout GPU_CHECK_SKIP_INSTALL=1 \
#     PYTHON=/work/main/.venv/bin/python bash benchmarks/gpu_check.sh
# (skips installing the cp312 wheels and uses that interpreter; the GPU tests then skip and the
# cuda jobs fail with the worker's error). GPU_CHECK_BUDGET (seconds, default 560) sets the budget.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu-check-out}
BUDGET=${GPU_CHECK_BUDGET:-560}
CPU=0
[ "${1:-}" = "--cpu" ] && CPU=1
mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
export PYTHONUNBUFFERED=1
# The embedded worker consumes the CUDA queue when it sees a GPU ("auto"); say so outright.
export INFOSCORE_WORKER_DEVICE=${INFOSCORE_WORKER_DEVICE:-cuda}
# The devices.py runs keep their data dirs (and the service's logs) in here.
TMPDIR=$(mktemp -d /tmp/gpu-check.XXXXXX)
export TMPDIR

note() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME SECONDS LOG COMMAND...: runs COMMAND under `timeout`, its output into LOG, and
# notes the outcome in the summary.
step() {
    local name=$1 limit=$2 log=$3 t0=$SECONDS rc state
    shift 3
    echo "== $name (at most $limit s): $*"
    timeout -s INT -k 20 "$limit" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    case $rc in
        0) state=ok ;;
        124 | 137) state="TIMED OUT (limit $limit s)" ;;
        *) state="FAILED (exit $rc)" ;;
    esac
    note "$name: $state after $((SECONDS - t0)) s"
}

note "# infoscore GPU check, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
if [ "${GPU_CHECK_SKIP_INSTALL:-0}" = 1 ]; then
    note "wheels: not installed (GPU_CHECK_SKIP_INSTALL=1)"
    export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
elif ! ls .whl/*.whl >/dev/null 2>&1; then
    note "wheels: NONE in .whl/ (run bash benchmarks/gpu_wheels.sh here, and carry [\".whl\"])"
    export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
else
    log=$("$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl 2>&1)
    rc=$?
    note "wheels: pip install of $(ls .whl/*.whl | wc -l) wheels into /tmp/site: exit $rc"
    [ -n "$log" ] && note "$(echo "$log" | tail -5)"
    export PYTHONPATH=/tmp/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}
fi

note "$(nvidia-smi -L 2>&1 | head -4)"
note "$("$PY" - 2>&1 <<'PYEOF'
import sys
import torch
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuda available:", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
try:
    import contracts, infoscore, launcher.cli, service.app, store, workers.celery_app  # noqa: F401
    print("imports: contracts infoscore launcher.cli service.app store workers.celery_app ok")
except Exception as exc:
    print("imports: FAILED", type(exc).__name__, exc)
PYEOF
)"
note "$("$PY" benchmarks/gpu_wheels_check.py --installed 2>&1 | grep -v '^  note' | tail -15)"

step "pytest -m gpu" 240 "$OUT/gpu_tests.log" \
    "$PY" -m pytest -m gpu tests/test_gpu.py tests/test_gpu_si.py -q -p no:cacheprovider
note "  pytest: $(grep -E '(passed|failed|skipped|error|no tests ran)' "$OUT/gpu_tests.log" | tail -1)"

ALL="training-dynamics sample-information sample-information-projected fcmi-bound limit supervision-complexity distillation label-issues"
# shellcheck disable=SC2086
step "devices.py --device cuda" 240 "$OUT/devices_cuda.log" \
    "$PY" benchmarks/devices.py --device cuda --kinds $ALL --json "$OUT/devices_cuda.json"
note "  devices cuda: $(grep -c ': succeeded in ' "$OUT/devices_cuda.log") of 8 jobs succeeded"
grep -E '^\|' "$OUT/devices_cuda.log" >>"$SUMMARY"

if [ "$CPU" = 1 ]; then
    left=$((BUDGET - SECONDS))
    limit=$((left < 240 ? left : 240))
    if [ "$limit" -ge 60 ]; then
        step "devices.py --device cpu" "$limit" "$OUT/devices_cpu.log" \
            "$PY" benchmarks/devices.py --device cpu --json "$OUT/devices_cpu.json"
        note "  devices cpu: $(grep -c ': succeeded in ' "$OUT/devices_cpu.log") of 6 jobs succeeded"
        grep -E '^\|' "$OUT/devices_cpu.log" >>"$SUMMARY"
    else
        note "devices.py --device cpu: skipped, only $left s of the $BUDGET s budget left"
    fi
fi

logs=$(cd "$TMPDIR" && find . -path '*infoscore-devices-*' -name '*.log' 2>/dev/null)
# shellcheck disable=SC2086
[ -n "$logs" ] && tar -czf "$OUT/service_logs.tgz" -C "$TMPDIR" $logs
rm -rf "$TMPDIR"
note "done in $SECONDS s; files: $(cd "$OUT" && echo *)"
exit 0
