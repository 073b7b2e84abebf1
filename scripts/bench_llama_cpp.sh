#!/usr/bin/env bash
# gptserve beside llama.cpp, the peer issue 8 measures against, on this machine: the same random GPT-2 124M in
# float32 and bfloat16, 2 threads. Model calls alone (llama-bench: pp128 and tg64 at depth 128; gptserve:
# scripts/profile_decode.py, decode at positions 128-163), then end to end over HTTP (gptserve serve and
# llama-server, 8 slots each, both loaded by `gptserve bench --api openai`: prompt 128 + 64 new tokens, 1 and 8
# streams), alternating rounds so that machine noise hits both; both HTTP figures are also given against
# transformers.generate() (`gptserve bench --engine`), the baseline of the issue's ratios. llama.cpp is built from
# the source that llama-cpp-python's sdist vendors (PyPI is reachable here; GitHub is not) into $LLAMA_WORK, once
# (~15 minutes on 2 cores); each later run takes ~10 minutes.  Usage: scripts/bench_llama_cpp.sh   (ROUNDS=n, default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/.venv/bin
WORK=${LLAMA_WORK:-/tmp/gptserve-llama.cpp}
VERSION=0.3.36
SRC=$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp
LLAMA=$SRC/build/bin
MODEL=$WORK/gpt2
OURS=${PORT:-18781}
THEIRS=$((OURS + 1))
mkdir -p "$WORK"
lscpu | sed -n 's/^Model name: *//p' | head -1
date -u +%Y-%m-%d

if [ ! -x "$LLAMA/llama-server" ] || [ ! -x "$LLAMA/llama-bench" ]; then
  echo "== building llama.cpp (llama-cpp-python $VERSION's vendored source)"
  "$BIN/pip" download --quiet --no-deps --no-binary :all: -d "$WORK" "llama-cpp-python==$VERSION"
  tar xzf "$WORK/llama_cpp_python-$VERSION.tar.gz" -C "$WORK"
  cmake -S "$SRC" -B "$SRC/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >"$WORK/cmake.log"
  cmake --build "$SRC/build" -j"$(nproc)" --target llama-bench llama-server >"$WORK/build.log"
fi
[ -f "$MODEL/merges.txt" ] || "$BIN/python" scripts/gpt2_for_llama_cpp.py "$MODEL"
for t in f32 bf16; do
  [ -f "$WORK/gpt2-$t.gguf" ] || PYTHONPATH="$SRC/gguf-py" "$BIN/python" "$SRC/convert_hf_to_gguf.py" "$MODEL" \
    --outtype "$t" --outfile "$WORK/gpt2-$t.gguf" >"$WORK/convert.log" 2>&1
done

echo "== model calls, batch 1 (llama-bench t/s; gptserve's step and prefill)"
for round in $(seq "${ROUNDS:-3}"); do
  for t in f32 bf16; do
    "$LLAMA/llama-bench" -m "$WORK/gpt2-$t.gguf" -t 2 -p 128 -n 0 -r 3 2>/dev/null | grep 'pp128'
    "$LLAMA/llama-bench" -m "$WORK/gpt2-$t.gguf" -t 2 -p 0 -n 64 -d 128 -r 3 2>/dev/null | grep 'tg64'
  done
  "$BIN/python" scripts/profile_decode.py 1 2 float32,bfloat16 2>/dev/null
done

echo "== transformers.generate(), the baseline of issue 8's ratios (gptserve bench --engine, float32)"
"$BIN/gptserve" bench --engine --preset gpt2 --batches 1,8 --repeats 3 --json "$WORK/engine.json" 2>/dev/null | tail -3

echo "== HTTP, float32: gptserve serve vs llama-server, the same client"
"$BIN/gptserve" serve --model "$MODEL" --dtype float32 --port "$OURS" --max-batch-size 8 --log-level warning &
GPTSERVE=$!
"$LLAMA/llama-server" -m "$WORK/gpt2-f32.gguf" -t 2 -np 8 -c 2048 --host 127.0.0.1 --port "$THEIRS" \
  >"$WORK/llama-server.log" 2>&1 &
LLAMA_SERVER=$!
trap 'kill $GPTSERVE $LLAMA_SERVER 2>/dev/null; wait 2>/dev/null' EXIT
for port in "$OURS" "$THEIRS"; do
  for _ in $(seq 240); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.5; done
done
for round in $(seq "${ROUNDS:-3}"); do
  for port in "$OURS" "$THEIRS"; do
    "$BIN/gptserve" bench --url "http://127.0.0.1:$port" --api openai --concurrency 1,8 --requests 8 \
      --prompt-len 128 --new-tokens 64 --json "$WORK/http-$port-$round.json" 2>/dev/null >/dev/null
  done
done
"$BIN/python" - "$WORK" "$OURS" "$THEIRS" "${ROUNDS:-3}" <<'PY'
import json, statistics, sys
work, ours, theirs, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
runs = {port: [json.load(open(f"{work}/http-{port}-{r}.json")) for r in range(1, rounds + 1)]
        for port in (ours, theirs)}
engine = json.load(open(f"{work}/engine.json"))
for i, level in enumerate(runs[ours][0]):
    def median(port, key):
        return statistics.median(run[i][key] for run in runs[port])
    def side(name, port):
        each = " / ".join(f"{run[i]['output_tokens_per_s']:.1f}" for run in runs[port])
        return (f"{name} {median(port, 'output_tokens_per_s'):.1f} tok/s ({each}), TTFT p50 "
                f"{median(port, 'ttft_p50') * 1e3:.0f} ms, ITL p50 {median(port, 'itl_p50') * 1e3:.1f} ms")
    ratio = median(ours, "output_tokens_per_s") / median(theirs, "output_tokens_per_s")
    print(f"{level['concurrency']} stream(s): {side('gptserve', ours)} | {side('llama-server', theirs)} | {ratio:.2f}x")
    baseline = next(r["tokens_per_s"] for r in engine
                    if r["system"] == "transformers" and r["batch"] == level["concurrency"])
    print(f"    against transformers.generate() at batch {level['concurrency']} ({baseline:.1f} tok/s): gptserve "
          f"{median(ours, 'output_tokens_per_s') / baseline:.2f}x, llama-server "
          f"{median(theirs, 'output_tokens_per_s') / baseline:.2f}x")
PY
