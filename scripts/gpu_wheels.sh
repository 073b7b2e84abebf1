#!/usr/bin/env bash
# Wheels for what the GPU machine lacks (it has torch, triton, tiktoken), carried there as .gpu-wheels
# because it cannot reach a package index. Python 3 wheels for manylinux x86_64; torch is excluded.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/pip download --quiet --dest .gpu-wheels --only-binary=:all: --platform manylinux2014_x86_64 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --python-version 3.11 \
  transformers safetensors tqdm pytest huggingface_hub 2>&1 | grep -v "WARNING: Location" || true
rm -f .gpu-wheels/torch-* .gpu-wheels/nvidia_* .gpu-wheels/triton-*
du -sh .gpu-wheels
