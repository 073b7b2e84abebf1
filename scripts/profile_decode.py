"""Time one decode step and a 128-token prefill, gptserve beside transformers, model calls only (no engine, no HTTP).

GPT-2 124M with random weights; B sequences prefilled with 128 tokens, then decode steps at positions
128-163, gptserve and transformers alternating so that machine noise hits both. For docs/BENCHMARKS.md.
Usage: python scripts/profile_decode.py BATCH THREADS DTYPE[,DTYPE...]
"""

import statistics
import sys
import tempfile
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from model.gpt import Batch
from model.kv_cache import KVCache
from model.loader import load_model

STEPS = 36


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    batch, threads, dtypes = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        GPT2LMHeadModel(GPT2Config()).save_pretrained(folder)
        for dtype in dtypes:
            ours = load_model(folder, "cpu", dtype, progress=False).model
            hf = GPT2LMHeadModel.from_pretrained(folder, dtype=getattr(torch, dtype)).eval()
            cache = KVCache(ours.config, batch, "cpu", next(ours.parameters()).dtype)
            prompts = torch.randint(0, 50257, (batch, 128))
            ids = torch.randint(0, 50257, (batch, 1))
            with torch.inference_mode():
                prefill, hf_prefill = [], []
                for _ in range(3):  # the first of each is a warm-up
                    prefill.append(sum(timed(lambda: ours(Batch.make(prompts[s:s + 1], [0], [s]), cache))
                                       for s in range(batch)))
                    hf_prefill.append(timed(lambda: hf(prompts, use_cache=True)))
                prefill, hf_prefill = min(prefill[1:]), min(hf_prefill[1:])
                past = hf(prompts, use_cache=True).past_key_values
                steps, hf_steps = [], []
                for pos in range(128, 128 + STEPS):
                    steps.append(timed(lambda: ours(Batch.make(ids, [pos] * batch, list(range(batch))), cache)))
                    hf_steps.append(timed(lambda: hf(ids, past_key_values=past, use_cache=True)))
            ms, hf_ms = statistics.median(steps[4:]) * 1000, statistics.median(hf_steps[4:]) * 1000
            print(f"{dtype} batch {batch}, {threads} threads: decode step {ms:.1f} ms = {batch * 1000 / ms:.1f} tok/s "
                  f"(transformers {hf_ms:.1f} ms, {hf_ms / ms:.2f}x); prefill of 128-token prompts "
                  f"{batch * 128 / prefill:.0f} tok/s (transformers, all at once: {batch * 128 / hf_prefill:.0f}; best of 2)")


if __name__ == "__main__":
    main()
