#!/usr/bin/env bash
# One call on a lent GPU (H100/H200 class): the model/engine tests on CUDA, then the engine benchmark
# (GPT-2 124M and 1.5B configs, random weights, bfloat16, batch 1/8/32/64) beside transformers.generate()
# on the same GPU, ending in one short table. The GPU machine has torch, triton and tiktoken; the rest
# (transformers, safetensors, tqdm, pytest) comes from wheels made here by scripts/gpu_wheels.sh and
# carried as .gpu-wheels. Budget: under 6 minutes.
#
#   scripts/gpu_check.sh            # on the GPU machine
#   scripts/gpu_check.sh --dry-run  # here, on the CPU: same steps, tiny model and batches, to prove it runs
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"

if [ "${1:-}" = "--dry-run" ]; then
  DEVICE=cpu DTYPE=float32 PRESETS="tiny" BATCHES="1,4" NEW=16 REPEATS=1 TESTS="tests/test_gpu.py"
else
  DEVICE=cuda DTYPE=bfloat16 PRESETS="gpt2 gpt2-xl" BATCHES="1,8,32,64" NEW=64 REPEATS=3 \
    TESTS="tests/test_gpu.py tests/test_kv_cache.py tests/test_engine.py tests/test_sampling.py"
  if [ -d .gpu-wheels ]; then
    $PY -m pip install --quiet --no-index --find-links .gpu-wheels transformers safetensors tqdm pytest huggingface_hub
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
fi

echo "== tests on $DEVICE"
GPTSERVE_TEST_DEVICE=$DEVICE timeout 150 $PY -m pytest -q -p no:cacheprovider $TESTS 2>&1 | tail -n 15 | tee "$OUT/tests.txt"

for preset in $PRESETS; do
  echo "== engine benchmark: $preset"
  timeout 240 $PY -m server.cli bench --engine --preset "$preset" --device "$DEVICE" --dtype "$DTYPE" \
    --batches "$BATCHES" --new-tokens "$NEW" --repeats "$REPEATS" --json "$OUT/bench_$preset.json" \
    2>/dev/null | tee "$OUT/bench_$preset.txt"
done

echo "== summary"
$PY - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print(f"{'model':<10}{'batch':>6}{'gptserve tok/s':>16}{'transformers':>14}{'ratio':>8}")
for f in sorted(out.glob("bench_*.json")):
    rows = json.loads(f.read_text())
    ours = {r["batch"]: r["tokens_per_s"] for r in rows if r["system"] == "gptserve"}
    ref = {r["batch"]: r["tokens_per_s"] for r in rows if r["system"] == "transformers"}
    for b in sorted(ours):
        ratio = f"{ours[b] / ref[b]:.2f}x" if b in ref else "-"
        print(f"{f.stem[6:]:<10}{b:>6}{ours[b]:>16.1f}{ref.get(b, float('nan')):>14.1f}{ratio:>8}")
PYEOF
