"""A/B of the native CPU kernels inside the real model: the same frozen GPT-2 124M, steps alternating between
the kernels gptserve picks and others, so that machine noise hits both. For docs/BENCHMARKS.md.
Usage: python scripts/bench_kernels.py DTYPE [BATCH,...] [matmul|attention|step|all]
  all: everything native (the one-call step, model/matmul.py's picks, KVCache.attend) vs torch's kernels alone;
  matmul / attention: that kernel vs torch's, both sides stepping block by block in torch;
  step: the one-call step vs the same kernels called operation by operation.
"""

import statistics
import sys
import tempfile
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from model.gpt import Batch, Linear
from model.kv_cache import KVCache
from model.loader import load_model

REPEATS, STEPS = 6, 8


def main() -> None:
    dtype = sys.argv[1]
    batches = [int(b) for b in (sys.argv[2] if len(sys.argv) > 2 else "1,8").split(",")]
    which = sys.argv[3] if len(sys.argv) > 3 else "all"
    torch.set_num_threads(2)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        GPT2LMHeadModel(GPT2Config()).save_pretrained(folder)
        model = load_model(folder, "cpu", dtype, progress=False).model
    frozen = [m.frozen for m in model.modules() if isinstance(m, Linear)] + [model._head]
    panels = [f.panels for f in frozen]
    one_call = model._step

    for batch in batches:
        cache = KVCache(model.config, batch, "cpu", next(model.parameters()).dtype)
        attention = cache._kernels

        def use_native(on: bool) -> None:
            for f, p in zip(frozen, panels):
                f.panels = p if on or which in ("attention", "step") else None
            cache._kernels = attention if on or which in ("matmul", "step") else None
            model._step = one_call if on and which in ("step", "all") else None

        steps: dict[bool, list[float]] = {True: [], False: []}
        prefill: dict[bool, list[float]] = {True: [], False: []}
        ids = torch.randint(0, 50257, (batch, 1))
        with torch.inference_mode():
            for rep in range(REPEATS):
                for native in (True, False):
                    use_native(native)
                    for slot in range(batch):
                        start = time.perf_counter()
                        model(Batch.make(torch.randint(0, 50257, (1, 128)), [0], [slot]), cache)
                        prefill[native].append(time.perf_counter() - start)
                    for pos in range(128, 128 + STEPS):
                        start = time.perf_counter()
                        model(Batch.make(ids, [pos] * batch, list(range(batch))), cache)
                        if rep:  # the first round warms up
                            steps[native].append(time.perf_counter() - start)
        step = {k: statistics.median(v) * 1000 for k, v in steps.items()}
        pre = {k: 128 / statistics.median(v[batch:]) for k, v in prefill.items()}
        print(f"{dtype} batch {batch}, switching {which}: decode step {step[True]:.1f} ms native, "
              f"{step[False]:.1f} ms without ({step[False] / step[True]:.2f}x); "
              f"128-token prefill {pre[True]:.0f} vs {pre[False]:.0f} tok/s")


if __name__ == "__main__":
    main()
