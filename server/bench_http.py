"""`gptserve bench --url`: a streaming load generator against a running server.

Closed loop: at each concurrency level C, C workers each send a request, read its stream to the end,
and send the next, until the level's requests are done. Metrics follow vLLM's and TGI's benchmark
tools: TTFT (request sent → first token), ITL (gaps between consecutive tokens), TPOT ((end-to-end −
TTFT) / (tokens − 1)), end-to-end latency, requests/s and output tokens/s over the level's wall time.
"""

import argparse
import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from tqdm import tqdm


@dataclass
class RequestResult:
    ok: bool
    ttft: float = 0.0
    e2e: float = 0.0
    itl: list[float] = field(default_factory=list)
    tokens: int = 0
    error: str = ""


@dataclass
class LevelReport:
    concurrency: int
    requests: int
    errors: int
    duration_s: float
    requests_per_s: float
    output_tokens_per_s: float
    ttft_p50: float
    ttft_p90: float
    ttft_p99: float
    itl_p50: float
    itl_p90: float
    itl_p99: float
    tpot_p50: float
    e2e_p50: float
    e2e_p90: float
    e2e_p99: float


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def make_prompt(n_tokens: int) -> str:
    """A prompt of exactly `n_tokens` GPT-2 tokens ("The" then " the" repeated, one token each)."""
    return "The" + " the" * (n_tokens - 1)


async def one_request(client: httpx.AsyncClient, url: str, prompt: str, new_tokens: int, headers: dict) -> RequestResult:
    body = {"inputs": prompt, "stream": True,
            "parameters": {"max_new_tokens": new_tokens, "ignore_eos": True, "details": True}}
    start = time.perf_counter()
    last = start
    result = RequestResult(ok=False)
    try:
        async with client.stream("POST", url.rstrip("/") + "/generate_stream", json=body, headers=headers) as resp:
            if resp.status_code != 200:
                await resp.aread()
                result.error = f"HTTP {resp.status_code}: {resp.text[:200]}"
                return result
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                if "error" in event:
                    result.error = str(event["error"])
                    return result
                now = time.perf_counter()
                if result.tokens == 0:
                    result.ttft = now - start
                else:
                    result.itl.append(now - last)
                last = now
                result.tokens += 1
        result.e2e = time.perf_counter() - start
        result.ok = result.tokens > 0
    except httpx.HTTPError as e:
        result.error = f"{type(e).__name__}: {e}"
    return result


async def run_level(url: str, concurrency: int, n_requests: int, prompt: str, new_tokens: int, headers: dict,
                    bar: tqdm) -> LevelReport:
    results: list[RequestResult] = []
    remaining = list(range(n_requests))
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0), limits=limits) as client:

        async def worker() -> None:
            while remaining:
                remaining.pop()
                results.append(await one_request(client, url, prompt, new_tokens, headers))
                bar.update(1)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        duration = time.perf_counter() - start
    good = [r for r in results if r.ok]
    ttft = [r.ttft for r in good]
    itl = [gap for r in good for gap in r.itl]
    tpot = [(r.e2e - r.ttft) / (r.tokens - 1) for r in good if r.tokens > 1]
    e2e = [r.e2e for r in good]
    return LevelReport(
        concurrency=concurrency, requests=len(results), errors=len(results) - len(good), duration_s=duration,
        requests_per_s=len(good) / duration, output_tokens_per_s=sum(r.tokens for r in good) / duration,
        ttft_p50=percentile(ttft, 50), ttft_p90=percentile(ttft, 90), ttft_p99=percentile(ttft, 99),
        itl_p50=percentile(itl, 50), itl_p90=percentile(itl, 90), itl_p99=percentile(itl, 99),
        tpot_p50=percentile(tpot, 50) if tpot else float("nan"),
        e2e_p50=percentile(e2e, 50), e2e_p90=percentile(e2e, 90), e2e_p99=percentile(e2e, 99))


async def sweep(url: str, levels: list[int], requests_per_level: int | None, prompt_len: int, new_tokens: int,
                api_key: str | None, progress: bool = True) -> list[LevelReport]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    prompt = make_prompt(prompt_len)
    counts = [requests_per_level or max(2 * c, 8) for c in levels]
    reports = []
    with tqdm(total=sum(counts), unit="req", desc="bench", disable=not progress) as bar:
        for level, n in zip(levels, counts):
            bar.set_postfix(concurrency=level)
            reports.append(await run_level(url, level, n, prompt, new_tokens, headers, bar))
    return reports


def format_table(reports: list[LevelReport]) -> str:
    def trio(a: float, b: float, c: float) -> str:
        return f"{a * 1000:.1f}/{b * 1000:.1f}/{c * 1000:.1f}"

    header = f"{'conc':>5} {'reqs':>5} {'err':>4} {'req/s':>7} {'tok/s':>8} {'TTFT ms p50/p90/p99':>22} " \
             f"{'ITL ms p50/p90/p99':>20} {'e2e s p50':>9}"
    lines = [header]
    for r in reports:
        lines.append(f"{r.concurrency:>5} {r.requests:>5} {r.errors:>4} {r.requests_per_s:>7.2f} "
                     f"{r.output_tokens_per_s:>8.1f} {trio(r.ttft_p50, r.ttft_p90, r.ttft_p99):>22} "
                     f"{trio(r.itl_p50, r.itl_p90, r.itl_p99):>20} {r.e2e_p50:>9.2f}")
    return "\n".join(lines)


def plot(reports: list[LevelReport], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conc = [r.concurrency for r in reports]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(conc, [r.output_tokens_per_s for r in reports], marker="o")
    left.set_xlabel("concurrent streams")
    left.set_ylabel("output tokens/s")
    left.set_xscale("log", base=2)
    left.grid(True, alpha=0.3)
    for name, attr in [("TTFT p50", "ttft_p50"), ("TTFT p99", "ttft_p99"), ("ITL p50", "itl_p50"), ("ITL p99", "itl_p99")]:
        right.plot(conc, [getattr(r, attr) * 1000 for r in reports], marker="o", label=name)
    right.set_xlabel("concurrent streams")
    right.set_ylabel("ms")
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.legend()
    right.grid(True, alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main_http(args: argparse.Namespace) -> None:
    levels = [int(c) for c in args.concurrency.split(",")]
    reports = asyncio.run(sweep(args.url, levels, args.requests, args.prompt_len, args.new_tokens, args.api_key))
    print(f"HTTP benchmark: {args.url}, prompt {args.prompt_len} + {args.new_tokens} new tokens")
    print(format_table(reports))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in reports], indent=2))
    if args.plot:
        plot(reports, args.plot, f"gptserve bench: prompt {args.prompt_len} + {args.new_tokens} tokens")
    failed = sum(r.errors for r in reports)
    if failed:
        print(f"warning: {failed} requests failed")
