#!/usr/bin/env bash
# Every GPU test and GPU measurement of survfed in one command, for a GPU machine that may be
# offline and may be borrowed for a few minutes only.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]            (default: $OUT, else ./gpu-check)
#
# Run it from the repository root with the python3 that holds a CUDA build of torch (or set
# PYTHON). When ./.whl holds wheels (benchmarks/fetch_wheels.sh, run on a machine with internet,
# puts there the few survfed needs beside torch, NumPy, SciPy, scikit-image and pytest), they
# are installed with --no-deps into a private folder first, so nothing is downloaded.
#
# Steps, each with its own time limit and log OUT_DIR/<step>.log:
#   env         torch, CUDA device, CuPy, CPU cores
#   gpu-tests   pytest -m gpu: the CUDA preprocessing path against the CPU path (in worker
#               processes too; on the real scans too when present), N-Net output on CUDA
#               (fp32, bf16) against the CPU, bf16 detector and survival training
#   preprocess  benchmarks/preprocess.py: standard-preset scans (512x512, ~150-300 slices),
#               and the real chest CT scans of .cache/real-ct when present (make real-ct):
#               DICOM read, CPU path, GPU path, their ratio, DICOM -> cached tensor, agreement
#   detector    benchmarks/detector.py: N-Net training patches/s and whole-scan inference s
#               on CPU and CUDA (bf16) against FLOPs / the measured matrix throughput
#   real-ct     (not by default) the real scans alone: the CUDA-vs-CPU test on them and their
#               preprocess table
# The tables are gathered in OUT_DIR/summary.md and printed last.
# Limits (seconds) can be changed: GPU_CHECK_LIMITS="env=60 gpu-tests=240 ...".
# GPU_CHECK_STEPS="env real-ct" runs only the steps named (default: env gpu-tests preprocess
# detector). GPU_CHECK_SITE=DIR installs the wheels into DIR, and reuses DIR when it already
# holds them.
#
# A device call carries at most 64 MiB, and the wheels take 57 MB of it, so the real scans
# (43 MB) travel in a second call on the still-warm machine, which keeps a git-ignored DIR:
#   1. GPU_CHECK_SITE=.gpu-site bash benchmarks/gpu_check.sh "$OUT"       carrying .whl
#   2. GPU_CHECK_SITE=.gpu-site GPU_CHECK_STEPS="env real-ct" \
#      bash benchmarks/gpu_check.sh "$OUT"                                carrying .cache/real-ct
set -uo pipefail

case "${1:-}" in
-h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
-*) echo "gpu_check.sh: unknown option $1 (usage: bash benchmarks/gpu_check.sh [OUT_DIR])" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-gpu-check}}
PY=${PYTHON:-python3}
WORK=${GPU_CHECK_WORK:-$(mktemp -d /tmp/survfed-gpu-check.XXXXXX)}
PATIENTS=${GPU_CHECK_PATIENTS:-3}
mkdir -p "$OUT_DIR" "$WORK"
SUMMARY="$OUT_DIR/summary.md"
: >"$SUMMARY"
export PYTHONUNBUFFERED=1

declare -A LIMIT=([env]=60 [gpu-tests]=240 [preprocess]=300 [detector]=240 [real-ct]=240)
for pair in ${GPU_CHECK_LIMITS:-}; do LIMIT[${pair%%=*}]=${pair#*=}; done
STEPS=" ${GPU_CHECK_STEPS:-env gpu-tests preprocess detector} "
for name in $STEPS; do
    [ -n "${LIMIT[$name]:-}" ] || { echo "gpu_check.sh: no step $name" >&2; exit 2; }
done
wanted() { [[ $STEPS == *" $1 "* ]]; }
SITE=${GPU_CHECK_SITE:-$WORK/site}
[[ $SITE == /* ]] || SITE="$PWD/$SITE"

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if "$PY" -c "import SimpleITK, pydicom, jpeg_ls, monai" 2>/dev/null; then
    echo "$PY already holds SimpleITK, pydicom, pyjpegls and MONAI: no wheels needed"
elif PYTHONPATH="$SITE:$PYTHONPATH" "$PY" -c "import SimpleITK, pydicom, jpeg_ls, monai" \
    2>/dev/null; then
    echo "the wheels are already installed in $SITE"
    export PYTHONPATH="$SITE:$PYTHONPATH"
elif compgen -G ".whl/*.whl" >/dev/null; then
    echo "installing $(ls .whl/*.whl | wc -l) wheel(s) from .whl into $SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target "$SITE" .whl/*.whl ||
        { echo "the wheels in .whl do not install for $PY (another Python version?)" >&2; exit 1; }
    export PYTHONPATH="$SITE:$PYTHONPATH"
else
    echo "$PY lacks SimpleITK, pydicom, pyjpegls or MONAI and .whl holds no wheels:" \
        "run benchmarks/fetch_wheels.sh where there is internet" >&2
    exit 1
fi

# timeout puts each step in a process group of its own, which a terminal's Ctrl-C does not
# reach: stop it (and its worker processes) from here, then stop the check
CURRENT=
interrupted() {
    [ -n "$CURRENT" ] && kill -TERM -- "-$CURRENT" 2>/dev/null
    echo "gpu check interrupted; the logs so far are in $OUT_DIR" >&2
    exit 130
}
trap interrupted INT TERM

# step NAME CMD...: run CMD with NAME's time limit, log to OUT_DIR/NAME.log, record the outcome
step() {
    local name=$1 limit=${LIMIT[$1]} start rc
    shift
    wanted "$name" || return 0
    echo "== $name (limit ${limit} s)"
    start=$(date +%s)
    # in the background (with this stdin) so that the trap above runs while it waits
    timeout --kill-after=10 "$limit" "$@" <&0 >"$OUT_DIR/$name.log" 2>&1 &
    CURRENT=$!
    wait "$CURRENT"
    rc=$?
    CURRENT=
    local took=$(($(date +%s) - start))
    local what="exit $rc"
    [ "$rc" -eq 0 ] && what="ok"
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && what="stopped at its ${limit} s limit"
    printf -- "- %s: %s, %d s\n" "$name" "$what" "$took" | tee -a "$OUT_DIR/steps.md"
    tail -n 5 "$OUT_DIR/$name.log"
    return 0
}

: >"$OUT_DIR/steps.md"
step env "$PY" - <<'EOF'
import os, platform
import torch
print(f"python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} CPU cores")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"CUDA device: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs")
else:
    print("no CUDA device: the GPU rows will say so")
from survfed.common.imaging.preprocess.backend import cupy_backend
print("CuPy for the component steps:", "yes" if cupy_backend() is not None else "no (CPU)")
import monai, pydicom, SimpleITK
print(f"monai {monai.__version__}, pydicom {pydicom.__version__}, SimpleITK {SimpleITK.Version_VersionString()}")
EOF

step gpu-tests "$PY" -m pytest -m gpu -q -p no:cacheprovider --basetemp "$WORK/pytest" \
    tests/common/imaging/preprocess/test_pipeline.py \
    tests/common/detection/test_inference.py \
    tests/common/detection/test_train.py \
    tests/common/survival/test_train.py \
    tests/commands/test_preprocess.py \
    tests/common/imaging/preprocess/test_real_ct.py

# the real chest CT scans, when carried along (make real-ct fetches them)
REAL_CT_ARGS=()
[ -f .cache/real-ct/cta_image.nii.gz ] && REAL_CT_ARGS=(--real-ct .cache/real-ct)
step preprocess "$PY" benchmarks/preprocess.py --out "$WORK/pp-cohort" \
    --patients "$PATIENTS" --workers "$PATIENTS" "${REAL_CT_ARGS[@]}"

step detector "$PY" benchmarks/detector.py

export PY WORK
step real-ct bash -c '
    [ -f .cache/real-ct/cta_image.nii.gz ] || { echo "no real CT in .cache/real-ct: carry it"; exit 1; }
    SURVFED_REAL_CT="$PWD/.cache/real-ct" SURVFED_REQUIRE_REAL_CT=1 "$PY" -m pytest -m gpu -q \
        -p no:cacheprovider --basetemp "$WORK/pytest-real" \
        tests/common/imaging/preprocess/test_real_ct.py || exit 1
    "$PY" benchmarks/preprocess.py --patients 0 --real-ct .cache/real-ct'

{
    echo "# survfed GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    head -n 20 "$OUT_DIR/env.log" 2>/dev/null
    echo
    cat "$OUT_DIR/steps.md"
    if [ -f "$OUT_DIR/gpu-tests.log" ]; then
        printf '\n## gpu-tests\n\n'
        tail -n 15 "$OUT_DIR/gpu-tests.log"
    fi
    for name in preprocess real-ct; do
        [ -f "$OUT_DIR/$name.log" ] || continue
        printf '\n## %s\n' "$name"
        [ "$name" = real-ct ] && grep -E '(passed|failed|error|skipped)' "$OUT_DIR/$name.log" | tail -n 3
        sed -n '/^CPU: /,$p' "$OUT_DIR/$name.log"
    done
    if [ -f "$OUT_DIR/detector.log" ]; then
        printf '\n## detector\n\n'
        grep -E '^(torch |\|)' "$OUT_DIR/detector.log"
    fi
} >"$SUMMARY"
echo
cat "$SUMMARY"
