"""Every product of one GPT-2 124M decode step, each with its own weights (so nothing stays in cache, as in a
real step), for M rows: MKL and the native kernel in float32, the native kernel and oneDNN in bfloat16.
Where the kernels cross over sets model/matmul.py's row ranges. Usage: python scripts/bench_matmul_stream.py M
"""

import statistics
import sys
import time

import torch

from model import cpu_kernels
from model.matmul import _onednn_copy

SHAPES = [(768, 2304), (768, 768), (768, 3072), (3072, 768)] * 12 + [(768, 50257)]


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    torch.set_num_threads(2)
    kernels = cpu_kernels.load()
    assert kernels is not None, "the native kernels did not load (see the log)"
    plain = [torch.randn(k, n) * 0.02 for k, n in SHAPES]
    panels = [cpu_kernels.pack(w) for w in plain]
    panels16 = [cpu_kernels.pack(w.bfloat16()) for w in plain]
    onednn16 = [_onednn_copy(w.bfloat16()) for w in plain]
    x = {k: torch.randn(rows, k) for k in (768, 3072)}
    x16 = {k: v.bfloat16() for k, v in x.items()}
    systems = {
        "float32 MKL": lambda: [x[k] @ w for (k, _), w in zip(SHAPES, plain)],
        "float32 native": lambda: [cpu_kernels.matmul(kernels, x[k], p, n, None) for (k, n), p in zip(SHAPES, panels)],
        "bfloat16 native": lambda: [cpu_kernels.matmul(kernels, x16[k], p, n, None)
                                    for (k, n), p in zip(SHAPES, panels16)],
        "bfloat16 oneDNN": lambda: [torch.ops.mkldnn._linear_pointwise(x16[k], p, None, "none", [], "")
                                    for (k, _), p in zip(SHAPES, onednn16)],
    }
    times: dict[str, list[float]] = {name: [] for name in systems}
    for _ in range(7):  # interleaved, the first round a warm-up
        for name, run in systems.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    n_weights = sum(k * n for k, n in SHAPES)
    for name, runs in times.items():
        seconds = statistics.median(runs[1:])
        size = 4 if name.startswith("float32") else 2
        print(f"{rows} rows, {name}: {seconds * 1000:.1f} ms, {n_weights * size / seconds / 1e9:.1f} GB/s of weights")


if __name__ == "__main__":
    main()
