"""`gptserve bench --url`: a streaming load generator against a running server.

Closed loop: for each prompt length and output length given, at each concurrency level C, C workers each send a request, read its stream to the end,
and send the next, until the level's requests are done. Metrics follow vLLM's and TGI's benchmark
tools: TTFT (request sent → first token), ITL (gaps between consecutive tokens), TPOT ((end-to-end −
TTFT) / (tokens − 1)), end-to-end latency, requests/s and output tokens/s over the level's wall time.
Two protocols: TGI's `/generate_stream` (gptserve, TGI) and OpenAI's streaming `/v1/completions` (gptserve,
vLLM, llama.cpp's llama-server), so that other servers can be loaded by the same client for a side-by-side figure.
"""

import argparse
import asyncio
import json
import random
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
    prompt_len: int
    new_tokens: int
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


# Words that are one GPT-2 token each, capitalized at the start and lower-case after a space.
WORDS = ("The A One This That It He She We They In On At But And So If When What There Then Now Here How Why "
         "Where Who All Some Each Every No Yes Our My Your His Her Its Their After Before Once While Since "
         "Though Still Yet Also Just Only Even Much Many More Most Few Both Either Neither Such Any Other "
         "Another First Last Next New Old Good").split()
UNIQUE = 4  # leading tokens that spell a request's number: len(WORDS) ** 4, about 24 million prompts


def make_prompt(n_tokens: int, number: int = 0) -> str:
    """A prompt of exactly `n_tokens` GPT-2 tokens: `number` spelled in base len(WORDS) by the first tokens, then
    " the" repeated. Consecutive numbers differ in the first token and any two in the first four, so a server that
    reuses cached prompt prefixes (llama-server, vLLM's prefix caching) prefills nearly all of each prompt, as
    gptserve always does."""
    words = []
    for _ in range(min(UNIQUE, n_tokens)):
        number, digit = divmod(number, len(WORDS))
        words.append(WORDS[digit] if not words else " " + WORDS[digit].lower())
    return "".join(words) + " the" * (n_tokens - len(words))


def request_body(api: str, prompt: str, new_tokens: int) -> tuple[str, dict]:
    """The route and JSON body of one request: `new_tokens` tokens, greedy, EOS ignored, streamed. Greedy on both
    routes (TGI's default; temperature 0 for OpenAI's, whose default is 1), so that servers are compared on the same
    work rather than on their default samplers, as vLLM's benchmark does."""
    if api == "openai":
        return "/v1/completions", {"prompt": prompt, "max_tokens": new_tokens, "temperature": 0, "stream": True,
                                   "ignore_eos": True, "stream_options": {"include_usage": True}}
    return "/generate_stream", {"inputs": prompt, "stream": True,
                                "parameters": {"max_new_tokens": new_tokens, "ignore_eos": True, "details": True}}


def tokens_in(api: str, event: dict) -> int:
    """How many new tokens one server-sent event carries: each TGI event one; an OpenAI chunk one per choice,
    except a choice that only closes its stream ("" with a finish_reason, as llama-server sends; a usage chunk has
    no choices at all)."""
    if api != "openai":
        return 1
    return sum(1 for c in event.get("choices") or [] if c.get("text") or c.get("finish_reason") is None)


async def one_request(client: httpx.AsyncClient, url: str, api: str, prompt: str, new_tokens: int,
                      headers: dict) -> RequestResult:
    route, body = request_body(api, prompt, new_tokens)
    start = time.perf_counter()
    last = start
    result = RequestResult(ok=False)
    counted = None  # an OpenAI server's own count (usage), which beats counting chunks
    try:
        async with client.stream("POST", url.rstrip("/") + route, json=body, headers=headers) as resp:
            if resp.status_code != 200:
                await resp.aread()
                result.error = f"HTTP {resp.status_code}: {resp.text[:200]}"
                return result
            async for line in resp.aiter_lines():
                if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                    continue
                event = json.loads(line[5:])
                if "error" in event:
                    result.error = str(event["error"])
                    return result
                counted = (event.get("usage") or {}).get("completion_tokens", counted)
                if not tokens_in(api, event):
                    continue
                now = time.perf_counter()
                if result.tokens == 0:
                    result.ttft = now - start
                else:
                    result.itl.append(now - last)
                last = now
                result.tokens += 1
        result.e2e = time.perf_counter() - start
        result.tokens = counted or result.tokens
        result.ok = result.tokens > 0
    except httpx.HTTPError as e:
        result.error = f"{type(e).__name__}: {e}"
    return result


async def run_level(url: str, api: str, concurrency: int, n_requests: int, prompt_len: int, new_tokens: int,
                    headers: dict, bar: tqdm) -> LevelReport:
    results: list[RequestResult] = []
    first = random.randrange(len(WORDS) ** UNIQUE - n_requests)  # new prompts for every level and every run
    remaining = list(range(first, first + n_requests))
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0), limits=limits) as client:

        async def worker() -> None:
            while remaining:
                prompt = make_prompt(prompt_len, remaining.pop())
                results.append(await one_request(client, url, api, prompt, new_tokens, headers))
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
        prompt_len=prompt_len, new_tokens=new_tokens, concurrency=concurrency, requests=len(results), errors=len(results) - len(good), duration_s=duration,
        requests_per_s=len(good) / duration, output_tokens_per_s=sum(r.tokens for r in good) / duration,
        ttft_p50=percentile(ttft, 50), ttft_p90=percentile(ttft, 90), ttft_p99=percentile(ttft, 99),
        itl_p50=percentile(itl, 50), itl_p90=percentile(itl, 90), itl_p99=percentile(itl, 99),
        tpot_p50=percentile(tpot, 50) if tpot else float("nan"),
        e2e_p50=percentile(e2e, 50), e2e_p90=percentile(e2e, 90), e2e_p99=percentile(e2e, 99))


async def sweep(url: str, api: str, levels: list[int], requests_per_level: int | None, prompt_lens: list[int],
                new_tokens: list[int], api_key: str | None, progress: bool = True) -> list[LevelReport]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    points = [(p, n, c) for p in prompt_lens for n in new_tokens for c in levels]
    counts = [requests_per_level or max(2 * c, 8) for _, _, c in points]
    reports = []
    with tqdm(total=sum(counts), unit="req", desc="bench", disable=not progress) as bar:
        for (prompt_len, n_new, level), n in zip(points, counts):
            bar.set_postfix(prompt=prompt_len, new=n_new, concurrency=level)
            reports.append(await run_level(url, api, level, n, prompt_len, n_new, headers, bar))
    return reports


def format_table(reports: list[LevelReport]) -> str:
    def trio(a: float, b: float, c: float) -> str:
        return f"{a * 1000:.1f}/{b * 1000:.1f}/{c * 1000:.1f}"

    header = f"{'prompt':>6} {'new':>4} {'conc':>5} {'reqs':>5} {'err':>4} {'req/s':>7} {'tok/s':>8} {'TTFT ms p50/p90/p99':>22} " \
             f"{'ITL ms p50/p90/p99':>20} {'e2e s p50':>9}"
    lines = [header]
    for r in reports:
        lines.append(f"{r.prompt_len:>6} {r.new_tokens:>4} {r.concurrency:>5} {r.requests:>5} {r.errors:>4} {r.requests_per_s:>7.2f} "
                     f"{r.output_tokens_per_s:>8.1f} {trio(r.ttft_p50, r.ttft_p90, r.ttft_p99):>22} "
                     f"{trio(r.itl_p50, r.itl_p90, r.itl_p99):>20} {r.e2e_p50:>9.2f}")
    return "\n".join(lines)


def plot(reports: list[LevelReport], path: Path) -> None:
    """Throughput and latency against concurrency, one line per (prompt length, output length)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for shape in dict.fromkeys((r.prompt_len, r.new_tokens) for r in reports):
        rows = [r for r in reports if (r.prompt_len, r.new_tokens) == shape]
        conc = [r.concurrency for r in rows]
        label = f"{shape[0]}+{shape[1]}"
        left.plot(conc, [r.output_tokens_per_s for r in rows], marker="o", label=label)
        right.plot(conc, [r.ttft_p50 * 1000 for r in rows], marker="o", label=f"TTFT p50 {label}")
        right.plot(conc, [r.itl_p50 * 1000 for r in rows], marker="s", linestyle="--", label=f"ITL p50 {label}")
    left.set(xlabel="concurrent streams", ylabel="output tokens/s", xscale="log")
    right.set(xlabel="concurrent streams", ylabel="ms", xscale="log", yscale="log")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("gptserve bench (prompt+new tokens)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main_http(args: argparse.Namespace) -> None:
    def numbers(text: str) -> list[int]:
        return [int(x) for x in text.split(",")]

    reports = asyncio.run(sweep(args.url, args.api, numbers(args.concurrency), args.requests, numbers(args.prompt_len),
                                numbers(args.new_tokens), args.api_key))
    print(f"HTTP benchmark: {args.url}, {args.api} API (ITL: gaps between tokens; TTFT: request sent to first token)")
    print(format_table(reports))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in reports], indent=2))
    if args.plot:
        plot(reports, args.plot)
    failed = sum(r.errors for r in reports)
    if failed:
        print(f"warning: {failed} requests failed")
