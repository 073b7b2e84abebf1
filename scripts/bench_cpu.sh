#!/usr/bin/env bash
# The CPU figures of docs/BENCHMARKS.md in one run: the engine beside transformers.generate() (GPT-2 124M,
# random weights, float32, 2 threads, prompt 128 + 64 new tokens, 1 and 8 sequences), the same load through
# HTTP (gptserve serve + gptserve bench --url), and the weight-layout micro-benchmark.
# Writes JSON and a plot to docs/bench/. Run it on a quiet machine: it takes about 6 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=docs/bench
MODEL=${MODEL_DIR:-/tmp/gptserve-gpt2-random}
PORT=${PORT:-18777}
mkdir -p "$OUT"
lscpu | sed -n 's/^Model name: *//p' | head -1
date -u +%Y-%m-%d

echo "== engine vs transformers"
$BIN/gptserve bench --engine --preset gpt2 --batches 1,8 --repeats "${REPEATS:-5}" --json "$OUT/engine_cpu.json" 2>/dev/null

echo "== HTTP"
$BIN/python - "$MODEL" <<'PY'
import sys, torch
from transformers import GPT2Config, GPT2LMHeadModel
torch.manual_seed(0)
GPT2LMHeadModel(GPT2Config()).save_pretrained(sys.argv[1])
PY
$BIN/gptserve serve --model "$MODEL" --dtype float32 --port "$PORT" --max-batch-size 8 --log-level warning &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.5; done
$BIN/gptserve bench --url "http://127.0.0.1:$PORT" --concurrency 1,8 --requests 8 --prompt-len 128 --new-tokens 64 \
  --json "$OUT/http_cpu.json" --plot "$OUT/http_cpu.png" 2>/dev/null
kill $SERVER; wait $SERVER 2>/dev/null || true
trap - EXIT

echo "== weight layout"
$BIN/python scripts/bench_layout.py 2
