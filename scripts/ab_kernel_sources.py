"""A/B of two versions of the C kernels (two folders of model/kernels/*.c and kernels.h) in the real one-call decode
step: the same frozen GPT-2 124M, steps alternating between the two builds, so that machine noise hits both.
How the kernel changes in docs/BENCHMARKS.md were measured.
Usage: python scripts/ab_kernel_sources.py DIR_A DIR_B BATCH [DTYPE]   (THREADS=n to change the thread count)
"""

import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from model import cpu_kernels
from model.gpt import Batch
from model.kv_cache import KVCache
from model.loader import load_model


def kernels_from(folder: str) -> cpu_kernels.Kernels:
    cpu_kernels.KERNELS, cpu_kernels.SOURCES = Path(folder), sorted(Path(folder).glob("*.c"))
    cpu_kernels.load.cache_clear()
    kernels = cpu_kernels.load()
    assert kernels is not None, f"the kernels in {folder} did not build (see the log)"
    return kernels


def main() -> None:
    batch, dtype = int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "float32"
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    torch.manual_seed(0)
    builds = {"A": kernels_from(sys.argv[1]), "B": kernels_from(sys.argv[2])}
    with tempfile.TemporaryDirectory() as folder:
        GPT2LMHeadModel(GPT2Config()).save_pretrained(folder)
        model = load_model(folder, "cpu", dtype, progress=False).model
    assert model._step is not None and batch <= model._step.max_rows, "this batch does not take the one-call step"
    steps = {name: dataclasses.replace(model._step, kernels=k) for name, k in builds.items()}
    cache = KVCache(model.config, batch, "cpu", next(model.parameters()).dtype)
    prompt, ids = torch.randint(0, 50257, (1, 128)), torch.randint(0, 50257, (batch, 1))
    times: dict[str, list[float]] = {"A": [], "B": []}
    with torch.inference_mode():
        for slot in range(batch):
            model(Batch.make(prompt, [0], [slot]), cache)
        for pos in range(128, 200):
            for name in ("A", "B") if pos % 2 else ("B", "A"):
                model._step = steps[name]
                start = time.perf_counter()
                model(Batch.make(ids, [pos] * batch, list(range(batch))), cache)
                times[name].append(time.perf_counter() - start)
    a, b = (statistics.median(times[name][4:]) * 1000 for name in ("A", "B"))
    print(f"{dtype} batch {batch}, {torch.get_num_threads()} threads: A {a:.2f} ms, B {b:.2f} ms per step, "
          f"A/B {a / b:.3f}")


if __name__ == "__main__":
    main()
