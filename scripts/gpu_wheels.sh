#!/usr/bin/env bash
# Download, into .whl/, the wheels that benchmarks/gpu_checks.sh installs on a GPU machine whose image has torch,
# torchaudio, timm, numpy, scipy, scikit-learn, matplotlib, PyYAML, tqdm, safetensors and pytest but not the audio
# packages (CPython 3.12, x86-64 Linux). Versions are those of constraints.txt. Usage: bash scripts/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(audiomentations audioread cffi decorator librosa numpy-minmax numpy-rms platformdirs pooch pycparser
          python-stretch soundfile soxr)
mkdir -p .whl
for package in "${packages[@]}"; do
    pin=$(grep -i "^${package}==" constraints.txt) || { echo "gpu_wheels: ${package} is not pinned in constraints.txt" >&2; exit 1; }
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "$pin"
done
ls .whl
