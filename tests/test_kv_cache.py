"""KV-cache decoding against full recomputation, and slot bookkeeping."""

import pytest
import torch

from model import cpu_kernels
from model.config import GPTConfig
from model.gpt import Batch
from model.kv_cache import CacheFullError, KVCache
from tests.conftest import random_gpt


@pytest.mark.parametrize("n_embd", [64, 48])  # head_dim 16: the native decode attention (where it loads); 12: SDPA
@pytest.mark.parametrize("frozen", [True, False])  # as served (decode steps in one native call where it loads), or not
def test_incremental_decoding_equals_full_recomputation_to_the_context_limit(n_embd: int, frozen: bool) -> None:
    config = GPTConfig(n_layer=2, n_head=4, n_embd=n_embd, block_size=24, vocab_size=97)
    model = random_gpt(config, seed=5)
    if frozen:
        model.freeze(config.vocab_size)
    cache = KVCache(config, n_slots=4, device="cpu", dtype=torch.float32)
    assert cache.attends_natively == (config.head_dim % 16 == 0 and cpu_kernels.load() is not None)
    torch.manual_seed(0)
    seqs = {slot: torch.randint(0, 97, (n,)).tolist() for slot, n in [(3, 1), (0, 6), (2, 13)]}
    with torch.inference_mode():
        for slot, tokens in seqs.items():  # prefill each prompt, checking every position
            logits = model(Batch.make(torch.tensor([tokens]), [0], [slot]), cache, all_logits=True)
            full = model.forward_full(torch.tensor([tokens]))
            assert (logits - full).abs().max().item() < 1e-4
        steps = 0
        while seqs:
            slots = sorted(seqs)
            nxt = {s: int(torch.randint(0, 97, ())) for s in slots}
            ids = torch.tensor([[nxt[s]] for s in slots])
            logits = model(Batch.make(ids, [len(seqs[s]) for s in slots], slots), cache)
            for row, s in enumerate(slots):
                seqs[s].append(nxt[s])
                full = model.forward_full(torch.tensor([seqs[s]]))[0, -1]
                assert (logits[row] - full).abs().max().item() < 1e-4, (s, len(seqs[s]))
            seqs = {s: t for s, t in seqs.items() if len(t) < config.block_size}
            steps += 1
    assert steps == config.block_size - 1  # the shortest prompt ran all the way to the limit


def test_chunked_prefill_equals_one_prefill() -> None:
    config = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=50)
    model = random_gpt(config, seed=2)
    cache = KVCache(config, n_slots=1, device="cpu", dtype=torch.float32)
    tokens = torch.randint(0, 50, (1, 30))
    with torch.inference_mode():
        parts = [model(Batch.make(tokens[:, a:b], [a], [0]), cache, all_logits=True) for a, b in [(0, 7), (7, 19), (19, 30)]]
        assert (torch.cat(parts, dim=1) - model.forward_full(tokens)).abs().max().item() < 1e-4


def test_past_the_context_is_refused() -> None:
    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=20)
    model = random_gpt(config)
    cache = KVCache(config, n_slots=1, device="cpu", dtype=torch.float32)
    with pytest.raises(ValueError, match="context"):
        model(Batch.make(torch.zeros(1, 2, dtype=torch.long), [7], [0]), cache)


def test_slots_allocate_and_free() -> None:
    cache = KVCache(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=4, vocab_size=10), 2, "cpu", torch.float32)
    a, b = cache.allocate(), cache.allocate()
    assert {a, b} == {0, 1} and cache.usage_ratio() == 1.0
    with pytest.raises(CacheFullError):
        cache.allocate()
    cache.free(a)
    with pytest.raises(ValueError):
        cache.free(a)
    assert cache.usage_ratio() == 0.5 and cache.allocate() == a
