#!/usr/bin/env bash
# Every GPU figure that benchmarks/RESULTS.md asks for, the CUDA tests and the demo on CUDA, in one run sized for a
# 10-minute call on one H100/H200 (each step has a time limit; together at most 590 s).
#
#   bash benchmarks/gpu_checks.sh [OUT_DIR]          # default OUT_DIR: runs/gpu_checks
#
# Runs from the repository root with the machine's python3 (PYTHON=... to choose another), the toolkit taken from
# this checkout (PYTHONPATH). Where .whl/ holds wheels (made here by scripts/gpu_wheels.sh for an image without the
# audio packages), they are installed first into a private folder. DEVICE=cpu runs the same steps (but the demo) on
# the CPU with small shapes, to check the script itself on a machine without a GPU.
#
# Writes to OUT_DIR: cuda_tests.log, augment_throughput_waveform.json, augment_throughput_spectrogram.json,
# pretrain_step.json, fewshot_throughput.json, vision_augment_throughput.json, vision_pretrain_step.json, demo.log (and each step's stderr as *.err). A failing step is reported
# and the others still run; the exit status is that of the first failure.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/gpu_checks}"
device="${DEVICE:-cuda}"
python="${PYTHON:-python3}"
mkdir -p "$out"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$python" - "$device" <<'PY' || exit 1
import sys, torch
if sys.argv[1] == "cuda" and not torch.cuda.is_available():
    sys.exit("gpu_checks: DEVICE=cuda but torch sees no CUDA device (set DEVICE=cpu to check the script on a CPU)")
print("torch", torch.__version__, "on", torch.cuda.get_device_name() if sys.argv[1] == "cuda" else "cpu")
PY
if compgen -G ".whl/*.whl" > /dev/null; then
    site="${TMPDIR:-/tmp}/aiaudio-gpu-site"
    "$python" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        .whl/*.whl || { echo "gpu_checks: could not install .whl/ (scripts/gpu_wheels.sh makes CPython 3.12 wheels)" >&2; exit 1; }
    export PYTHONPATH="$site:$PYTHONPATH"
fi

status=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, stdout to OUT_DIR/NAME, stderr to OUT_DIR/NAME.err
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" > "$out/$name" 2> "$out/$name.err"
    local code=$?
    echo "$name: exit $code after $((SECONDS - start)) s"
    if [ "$code" -ne 0 ] && [ "$status" -eq 0 ]; then status=$code; fi
}

# Most wanted first: if the whole call is cut short, the figures of the steps before are already written.
step augment_throughput_waveform.json 75 "$python" benchmarks/augment_throughput.py --device "$device" \
    --seconds 10 --rounds 2
small_on_cpu=()  # on the CPU, the pretraining step at the smaller shapes of RESULTS.md's CPU row
if [ "$device" = cpu ]; then small_on_cpu=(--batch-size 16 --seconds 2 --width 0.5); fi
step pretrain_step.json 100 "$python" benchmarks/pretrain_step.py --device "$device" "${small_on_cpu[@]}"
step fewshot_throughput.json 110 "$python" benchmarks/fewshot_throughput.py --device "$device"
step vision_augment_throughput.json 30 "$python" benchmarks/vision_augment_throughput.py --device "$device" --seconds 5
small_vision=()  # on the CPU, one small pair
if [ "$device" = cpu ]; then small_vision=(--only vit --size 32 --batch-size 4 --steps 1); fi
step vision_pretrain_step.json 60 "$python" benchmarks/vision_pretrain_step.py --device "$device" "${small_vision[@]}"
step augment_throughput_spectrogram.json 45 "$python" benchmarks/augment_throughput.py --device "$device" \
    --seconds 10 --rounds 2 --pitch-domain spectrogram
step cuda_tests.log 60 "$python" -m pytest -q -m cuda -p no:cacheprovider tests
if [ "$device" = cuda ]; then
    step demo.log 110 "$python" -m aiaudio demo --out "$out/demo"
else
    echo "demo.log: skipped on the CPU (the demo takes minutes there; it is the README's main job)"
fi
exit "$status"
