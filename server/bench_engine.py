"""`gptserve bench --engine`: the engine's end-to-end throughput, in-process, beside transformers.generate().

Both sides get the same model (random GPT-2 weights by default, loaded by gptserve from the folder
transformers saved), the same prompts (random token ids), greedy decoding and a fixed number of new
tokens (EOS ignored), in one process, alternating runs so that machine noise hits both alike.
"""

import argparse
import json
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from model.engine import Engine, TokenEvent
from model.loader import load_model
from model.sampling import SamplingParams

PRESETS = {  # transformers GPT2Config overrides; "gpt2" is GPT2Config() itself, 124M
    "gpt2": {},
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, n_positions=256),
}


@dataclass
class Row:
    system: str
    batch: int
    tokens_per_s: float  # median over repeats
    seconds: float  # median wall time of one run
    runs: list[float]


def random_prompts(n: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, length), generator=g).tolist()


def run_engine(engine: Engine, prompts: list[list[int]], new_tokens: int) -> float:
    """Submit every prompt at once and wait for all to finish; returns wall seconds."""
    done = threading.Semaphore(0)

    def deliver(event: TokenEvent) -> None:
        if event.completion is not None:
            if event.completion.generated_tokens != new_tokens:
                raise RuntimeError(f"expected {new_tokens} tokens, got {event.completion.generated_tokens}")
            done.release()

    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    start = time.perf_counter()
    for prompt in prompts:
        engine.submit(prompt, params, deliver)
    for _ in prompts:
        done.acquire()
    return time.perf_counter() - start


def run_transformers(model: torch.nn.Module, prompts: list[list[int]], new_tokens: int) -> float:
    ids = torch.tensor(prompts, device=model.device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    assert out.shape[1] == ids.shape[1] + new_tokens
    return time.perf_counter() - start


def bench_engine(preset: str, batches: list[int], prompt_len: int, new_tokens: int, repeats: int, dtype: str,
                 device: str, compare: bool) -> list[Row]:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    ref = GPT2LMHeadModel(GPT2Config(**PRESETS[preset])).eval()
    with tempfile.TemporaryDirectory() as folder:
        ref.save_pretrained(folder)
        loaded = load_model(folder, device=device, dtype=dtype, progress=False)
    if compare:
        ref = ref.to(device=loaded.info.device, dtype=next(loaded.model.parameters()).dtype)
    else:
        del ref
    rows = []
    for batch in batches:
        engine = Engine(loaded.model, loaded.tokenizer, max_batch_size=batch, max_queue=0)
        engine.start()
        prompts = random_prompts(batch, prompt_len, loaded.tokenizer.n_vocab, seed=batch)
        timings: dict[str, list[float]] = {"gptserve": [], "transformers": []}
        try:
            run_engine(engine, prompts, new_tokens)  # warm-up
            if compare:
                run_transformers(ref, prompts, new_tokens)
            for _ in range(repeats):
                timings["gptserve"].append(run_engine(engine, prompts, new_tokens))
                if compare:
                    timings["transformers"].append(run_transformers(ref, prompts, new_tokens))
        finally:
            engine.stop()
        for system, runs in timings.items():
            if runs:
                med = statistics.median(runs)
                rows.append(Row(system, batch, batch * new_tokens / med, med, runs))
    return rows


def format_rows(rows: list[Row]) -> str:
    lines = [f"{'system':<14}{'batch':>6}{'tok/s':>10}{'s/run':>9}{'ratio':>8}"]
    base = {r.batch: r.tokens_per_s for r in rows if r.system == "transformers"}
    for r in rows:
        ratio = f"{r.tokens_per_s / base[r.batch]:.2f}x" if r.batch in base else "-"
        lines.append(f"{r.system:<14}{r.batch:>6}{r.tokens_per_s:>10.1f}{r.seconds:>9.3f}{ratio:>8}")
    return "\n".join(lines)


def main_engine(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    rows = bench_engine(args.preset, [int(b) for b in args.batches.split(",")], args.prompt_len, args.new_tokens,
                        args.repeats, args.dtype, args.device, args.compare == "transformers")
    print(f"engine benchmark: {args.preset}, {args.dtype} on {args.device}, {args.threads} threads, "
          f"prompt {args.prompt_len} + {args.new_tokens} new tokens, median of {args.repeats}")
    print(format_rows(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
