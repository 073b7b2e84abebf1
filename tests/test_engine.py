"""The scheduler: batching, stop conditions, seeds under load, cancellation and fairness."""

import random
import threading
import time
from collections.abc import Iterator

import pytest
import torch

from model.config import GPTConfig
from model.engine import Completion, Engine, QueueFullError, TokenEvent
from model.gpt import GPT
from model.loader import GPT2_RANKS
from model.sampling import SamplingParams
from model.tokenizer import BPETokenizer
from tests.conftest import random_gpt

CONFIG = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=128, vocab_size=50304)
PROMPT = "First Citizen: Before we proceed any further, hear me speak."


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    return BPETokenizer.from_ranks_file(GPT2_RANKS)


@pytest.fixture(scope="module")
def model(tokenizer: BPETokenizer) -> GPT:
    return random_gpt(CONFIG, seed=42, std=0.08).freeze(tokenizer.n_vocab)


@pytest.fixture
def engine(model: GPT, tokenizer: BPETokenizer) -> Iterator[Engine]:
    engine = Engine(model, tokenizer, max_batch_size=16, max_queue=32, prefill_chunk=64)
    engine.start()
    yield engine
    engine.stop()


def run(engine: Engine, prompt: str, **params: object) -> tuple[list[TokenEvent], Completion]:
    events = list(engine.generate(engine.tokenizer.encode(prompt), SamplingParams(**params)))
    assert events[-1].completion is not None
    return events, events[-1].completion


def ids(completion: Completion) -> list[int]:
    return [t.id for t in completion.tokens]


def test_events_stream_whole_text_and_count_tokens(engine: Engine) -> None:
    events, done = run(engine, PROMPT, max_new_tokens=30, do_sample=True, seed=1)
    assert [e.index for e in events] == list(range(1, 31))
    assert done.finish_reason == "length" and done.generated_tokens == 30
    assert "".join(e.token.text for e in events) == done.generated_text
    assert done.prompt_tokens == len(engine.tokenizer.encode(PROMPT)) and done.seed == 1


def test_logprobs_and_prompt_logprobs_match_the_model(engine: Engine, model: GPT) -> None:
    prompt = engine.tokenizer.encode(PROMPT)
    _, done = run(engine, PROMPT, max_new_tokens=5, prompt_logprobs=True, top_n_tokens=3)
    full = torch.log_softmax(model.forward_full(torch.tensor([prompt + ids(done)])), -1)[0]
    expected_prompt = [None] + [full[i, prompt[i + 1]].item() for i in range(len(prompt) - 1)]
    assert [t.id for t in done.prefill] == prompt and done.prefill[0].logprob is None
    assert [t.logprob for t in done.prefill[1:]] == pytest.approx(expected_prompt[1:], abs=1e-4)
    assert "".join(t.text for t in done.prefill) == PROMPT
    for step, token in enumerate(done.tokens):
        assert token.logprob == pytest.approx(full[len(prompt) - 1 + step, token.id].item(), abs=1e-4)
        top = done.top_tokens[step]
        assert len(top) == 3 and top[0].id == token.id  # greedy: the chosen token is the most likely
        assert [t.logprob for t in top] == sorted((t.logprob for t in top), reverse=True)


def test_top_k_1_equals_greedy(engine: Engine) -> None:
    _, greedy = run(engine, PROMPT, max_new_tokens=20)
    _, top1 = run(engine, PROMPT, max_new_tokens=20, do_sample=True, top_k=1, seed=9)
    assert ids(greedy) == ids(top1)


def test_sampling_varies_with_the_seed(engine: Engine) -> None:
    outs = {tuple(ids(run(engine, PROMPT, max_new_tokens=12, do_sample=True, seed=s)[1])) for s in range(4)}
    assert len(outs) > 1


def test_huge_repetition_penalty_never_repeats(engine: Engine) -> None:
    prompt = engine.tokenizer.encode(PROMPT)
    _, plain = run(engine, PROMPT, max_new_tokens=40)
    assert len(set(ids(plain))) < 40  # without the penalty this model does repeat
    _, done = run(engine, PROMPT, max_new_tokens=40, repetition_penalty=1e6)
    generated = ids(done)
    assert len(set(generated)) == 40 and not set(generated) & set(prompt)


def test_stop_string_split_across_tokens_is_caught_and_never_streamed(engine: Engine) -> None:
    _, free = run(engine, PROMPT, max_new_tokens=40)
    texts = [t.text for t in free.tokens]
    # a stop string that starts inside one token's text and ends inside a later one
    i = next(i for i in range(3, len(texts) - 2) if len(texts[i]) >= 2 and texts[i + 1])
    offset = sum(len(t) for t in texts[:i])
    stop = free.generated_text[offset + 1: offset + len(texts[i]) + 1]
    events, done = run(engine, PROMPT, max_new_tokens=40, stop=[stop, "\u2603 never"])
    assert done.finish_reason == "stop_sequence"
    cut = free.generated_text.index(stop)
    assert done.generated_text == free.generated_text[:cut]
    assert "".join(e.token.text for e in events) == done.generated_text
    assert done.generated_tokens == i + 2


def test_eos_ends_generation_unless_ignored(model: GPT, tokenizer: BPETokenizer) -> None:
    eos_model = random_gpt(CONFIG, seed=1)
    with torch.no_grad():  # make <|endoftext|> the most likely token after every position
        eos_model.transformer.ln_f.weight.zero_()
        eos_model.transformer.ln_f.bias.fill_(1.0)
        eos_model.transformer.wte.weight[tokenizer.eos_id] = 5.0
    eos_model.freeze(tokenizer.n_vocab)
    engine = Engine(eos_model, tokenizer, max_batch_size=2)
    engine.start()
    try:
        _, done = run(engine, "Hi", max_new_tokens=10)
        assert done.finish_reason == "eos_token" and done.generated_tokens == 1 and done.generated_text == ""
        assert done.tokens[0].special and done.tokens[0].text == ""
        _, done = run(engine, "Hi", max_new_tokens=10, ignore_eos=True)
        assert done.finish_reason == "length" and ids(done) == [tokenizer.eos_id] * 10
    finally:
        engine.stop()


def test_generation_stops_at_the_context_limit(engine: Engine) -> None:
    prompt = (engine.tokenizer.encode(PROMPT) * 20)[:120]
    done = list(engine.generate(prompt, SamplingParams(max_new_tokens=100, ignore_eos=True)))[-1].completion
    assert done.finish_reason == "length" and done.generated_tokens == 128 - 120


def test_outputs_do_not_depend_on_batch_composition(engine: Engine) -> None:
    cases = [dict(max_new_tokens=24), dict(max_new_tokens=24, do_sample=True, seed=77, top_p=0.9),
             dict(max_new_tokens=24, do_sample=True, seed=5, temperature=0.7, top_k=40)]
    alone = [ids(run(engine, PROMPT, **c)[1]) for c in cases]
    results: dict[int, list[int]] = {}

    def worker(n: int) -> None:
        params = dict(cases[n]) if n < 3 else dict(max_new_tokens=random.randint(5, 40), do_sample=True)
        prompt = PROMPT if n < 3 else "Other prompt number %d, of varying length. " % n * (n % 4 + 1)
        results[n] = ids(run(engine, prompt, **params)[1])

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in reversed(threads):  # the three under test start last, joining a running batch
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join(60)
    assert [results[n] for n in range(3)] == alone


def test_a_short_request_overtakes_a_long_one(engine: Engine) -> None:
    long_events: list[TokenEvent] = []
    started = threading.Event()

    def on_long(e: TokenEvent) -> None:
        long_events.append(e)
        started.set()

    params = SamplingParams(max_new_tokens=100, ignore_eos=True)
    engine.submit(engine.tokenizer.encode(PROMPT), params, on_long)
    assert started.wait(10)  # the long request is decoding when the short one arrives
    _, short = run(engine, PROMPT, max_new_tokens=5, ignore_eos=True)
    long_progress = len(long_events)
    assert short.generated_tokens == 5 and long_progress < 100 and long_events[-1].completion is None
    deadline = time.time() + 30
    while long_events[-1].completion is None and time.time() < deadline:
        time.sleep(0.01)
    assert long_events[-1].completion.generated_tokens == 100


def test_cancel_storm_frees_every_slot(engine: Engine) -> None:
    rng = random.Random(0)
    handles = []
    for n in range(40):
        handles.append(engine.submit(engine.tokenizer.encode(PROMPT * (n % 3 + 1)),
                                     SamplingParams(max_new_tokens=100, ignore_eos=True), lambda e: None))
        if rng.random() < 0.5:
            rng.choice(handles).cancel()
    time.sleep(0.05)
    for h in handles:
        h.cancel()
    deadline = time.time() + 10
    while time.time() < deadline and (engine.stats().running or engine.stats().waiting):
        time.sleep(0.01)
    stats = engine.stats()
    assert stats.running == stats.waiting == 0 and stats.kv_cache_usage == 0.0
    assert engine.cache.free_slots == engine.max_batch_size


def test_cancelled_request_gets_a_final_event(engine: Engine) -> None:
    events: list[TokenEvent] = []
    got_final = threading.Event()

    def deliver(e: TokenEvent) -> None:
        events.append(e)
        if e.completion is not None:
            got_final.set()

    handle = engine.submit(engine.tokenizer.encode(PROMPT), SamplingParams(max_new_tokens=120, ignore_eos=True), deliver)
    while not events:
        time.sleep(0.001)
    handle.cancel()
    assert got_final.wait(5)
    assert events[-1].completion.finish_reason == "cancelled" and events[-1].completion.generated_tokens < 120


def test_a_full_queue_refuses(model: GPT, tokenizer: BPETokenizer) -> None:
    engine = Engine(model, tokenizer, max_batch_size=1, max_queue=1)
    engine.start()
    try:
        params = SamplingParams(max_new_tokens=120, ignore_eos=True)
        handles = [engine.submit([1, 2, 3], params, lambda e: None) for _ in range(2)]
        with pytest.raises(QueueFullError):
            engine.submit([1, 2, 3], params, lambda e: None)
        for h in handles:
            h.cancel()
    finally:
        engine.stop()


@pytest.mark.parametrize("prompt, params, message", [
    ([], SamplingParams(), "no tokens"),
    ([1] * 128, SamplingParams(), "context"),
    ([1, 2], SamplingParams(max_new_tokens=0), "max_new_tokens"),
    ([50300], SamplingParams(), "outside the vocabulary"),
])
def test_bad_submissions_are_refused_before_queueing(engine: Engine, prompt: list[int], params: SamplingParams,
                                                     message: str) -> None:
    with pytest.raises(ValueError, match=message):
        engine.submit(prompt, params, lambda e: None)
    assert engine.stats().waiting == 0
