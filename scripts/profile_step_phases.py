"""Where the one-call decode step spends its time, per phase and per thread: a copy of model/kernels/ with an
`rdtsc` mark after every LayerNorm, product and barrier of decode_step.c, built and run in the real frozen GPT-2 124M
(random weights, 2 threads, 36 steps at positions 132-167). Shows how long each product takes on each thread and
how long the faster thread waits at the barrier after it. For docs/BENCHMARKS.md.
Usage: python scripts/profile_step_phases.py BATCH DTYPE        (the TSC's rate is read from /proc/cpuinfo)
"""

import ctypes
import dataclasses
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from ab_kernel_sources import kernels_from  # scripts/, on the path when run as a script
from model import cpu_kernels
from model.gpt import Batch
from model.kv_cache import KVCache
from model.loader import load_model

# decode_step.c's layer body, in order: what ends at each mark.
PHASES = ["ln_1", "wait", "qkv", "wait", "attention+wait", "proj", "wait", "ln_2", "wait", "fc", "wait", "out", "wait"]
MARK = "MARK({});"


def instrumented_copy(folder: Path) -> Path:
    """model/kernels/ copied into `folder`, with a mark after each step of a layer."""
    shutil.copytree(cpu_kernels.KERNELS, folder, dirs_exist_ok=True)
    path = folder / "decode_step.c"
    source = path.read_text().replace('#include "kernels.h"', """#include "kernels.h"
#include <x86intrin.h>
uint64_t gs_phase_cycles[2][16];
#define MARK(i) do { uint64_t t = __rdtsc(); if (me < 2) gs_phase_cycles[me][i] += t - since; since = t; } while (0)""")
    source = source.replace("int phase = 0;", "int phase = 0, me = omp_get_thread_num(); uint64_t since = __rdtsc();")
    lines, marks = [], 0
    for line in source.splitlines():
        lines.append(line)
        if re.match(r"\s*(team_sync|layer_norm|matmul_ws)\(", line):
            lines.append(f"                {MARK.format(marks)} \\")
            marks += 1
    assert marks == len(PHASES), f"decode_step.c's layer has {marks} steps, this script knows {len(PHASES)}"
    path.write_text("\n".join(lines) + "\n")
    return folder


def tsc_ghz() -> float:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            return float(line.split(":")[1]) / 1000
    raise SystemExit("no 'cpu MHz' in /proc/cpuinfo")


def main() -> None:
    batch, dtype = int(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(2)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        GPT2LMHeadModel(GPT2Config()).save_pretrained(folder)
        model = load_model(folder, "cpu", dtype, progress=False).model
        kernels = kernels_from(str(instrumented_copy(Path(folder) / "kernels")))
    assert model._step is not None and batch <= model._step.max_rows, "this batch does not take the one-call step"
    model._step = dataclasses.replace(model._step, kernels=kernels)
    cycles = (ctypes.c_uint64 * 32).in_dll(kernels.lib, "gs_phase_cycles")
    cache = KVCache(model.config, batch, "cpu", next(model.parameters()).dtype)
    prompt, ids = torch.randint(0, 50257, (1, 128)), torch.randint(0, 50257, (batch, 1))
    steps, hidden = [], []
    with torch.inference_mode():
        for slot in range(batch):
            model(Batch.make(prompt, [0], [slot]), cache)
        for pos in range(128, 168):
            if pos == 132:  # after four warm-up steps
                ctypes.memset(cycles, 0, ctypes.sizeof(cycles))
            start = time.perf_counter()
            h = model.hidden_states(Batch.make(ids, [pos] * batch, list(range(batch))), cache)
            middle = time.perf_counter()
            model.logits(h[:, -1])
            if pos >= 132:
                steps.append(time.perf_counter() - start)
                hidden.append(middle - start)
    ms_per = 1 / (tsc_ghz() * 1e6) / len(steps)  # cycles summed over the steps -> ms per step
    step, blocks = statistics.median(steps) * 1e3, statistics.median(hidden) * 1e3
    print(f"{dtype} batch {batch}: step {step:.2f} ms (median), of which embeddings + blocks {blocks:.2f} ms and "
          f"ln_f + head {step - blocks:.2f} ms; per phase, ms per step (mean):")
    print("thread " + "".join(f"{name:>15}" for name in PHASES))
    for thread in range(2):
        print(f"{thread:>6} " + "".join(f"{cycles[thread * 16 + i] * ms_per:>15.2f}" for i in range(len(PHASES))))


if __name__ == "__main__":
    main()
