"""How long model/sampling.py's `sample` takes for GPT-2's 50257 ids, 1 and 8 rows, greedy and with the usual
sampling parameters (2 threads; logits ~N(0, 3), so top_p 0.95 needs more than the 4096 most likely ids).
For docs/BENCHMARKS.md.  Usage: python scripts/bench_sampling.py
"""

import statistics
import time

import torch

from model.sampling import SamplerState, SamplingParams, sample

CASES = {
    "greedy": SamplingParams(),
    "temperature 1": SamplingParams(do_sample=True),
    "temperature 0.8, top_p 0.95": SamplingParams(do_sample=True, temperature=0.8, top_p=0.95),
    "top_k 50": SamplingParams(do_sample=True, top_k=50),
}


def main() -> None:
    torch.set_num_threads(2)
    logits = torch.randn(8, 50257, generator=torch.Generator().manual_seed(0)) * 3
    for name, params in CASES.items():
        states = [SamplerState.create(params, [1, 2], 50257, torch.device("cpu")) for _ in range(8)]
        for rows in (1, 8):
            times = []
            for _ in range(40):
                start = time.perf_counter()
                sample(logits[:rows], states[:rows])
                times.append(time.perf_counter() - start)
            print(f"{name}, {rows} row(s): {statistics.median(times[5:]) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
