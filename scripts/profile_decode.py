"""Time gptserve's prefill and decode step directly (no engine, no HTTP), for docs/BENCHMARKS.md.

GPT-2 124M with random weights, loaded through gptserve's loader; B sequences prefilled with 128 tokens,
then 30 timed decode steps. Usage: python scripts/profile_decode.py BATCH THREADS DTYPE[,DTYPE...]
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


def main() -> None:
    batch, threads, dtypes = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        GPT2LMHeadModel(GPT2Config()).save_pretrained(folder)
        for dtype in dtypes:
            model = load_model(folder, "cpu", dtype, progress=False).model
            cache = KVCache(model.config, batch, "cpu", next(model.parameters()).dtype)
            with torch.inference_mode():
                start = time.perf_counter()
                for slot in range(batch):
                    model(Batch.make(torch.randint(0, 50257, (1, 128)), [0], [slot]), cache)
                prefill = time.perf_counter() - start
                ids = torch.randint(0, 50257, (batch, 1))
                steps = []
                for pos in range(128, 163):
                    start = time.perf_counter()
                    model(Batch.make(ids, [pos] * batch, list(range(batch))), cache)
                    steps.append(time.perf_counter() - start)
            print(f"{dtype} batch {batch}, {threads} threads: prefill {batch * 128 / prefill:.0f} tok/s, "
                  f"decode step median {statistics.median(steps[5:]) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
