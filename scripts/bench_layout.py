"""Why gptserve stores projection matrices [in, out]: time x @ W for both layouts, per dtype and batch.

GPT-2 124M's shapes; the median of several timed runs each. Usage: python scripts/bench_layout.py [threads]
"""

import statistics
import sys
import time

import torch

SHAPES = {"c_attn": (768, 2304), "c_fc": (768, 3072), "mlp c_proj": (3072, 768), "lm_head": (768, 50257)}


def median_ms(fn, reps: int = 7, inner: int = 10) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - start) / inner * 1000)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    print(f"{'matrix':<11}{'dtype':<10}{'rows':>5}{'F.linear [out,in] ms':>22}{'x @ [in,out] ms':>17}{'speed-up':>10}")
    with torch.inference_mode():
        for name, (n_in, n_out) in SHAPES.items():
            for dtype in (torch.float32, torch.bfloat16):
                w_out_in = torch.randn(n_out, n_in, dtype=dtype)
                w_in_out = w_out_in.t().contiguous()
                for rows in (1, 8):
                    x = torch.randn(rows, n_in, dtype=dtype)
                    a = median_ms(lambda: torch.nn.functional.linear(x, w_out_in))
                    b = median_ms(lambda: x @ w_in_out)
                    print(f"{name:<11}{str(dtype)[6:]:<10}{rows:>5}{a:>22.3f}{b:>17.3f}{a / b:>9.2f}x")


if __name__ == "__main__":
    main()
