"""The GPT module against references: Hugging Face transformers for GPT-2, nanoGPT's own semantics."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from model.config import GPTConfig
from model.gpt import GPT, Batch
from model.kv_cache import KVCache
from model.loader import load_model
from tests.conftest import random_gpt, save_nanogpt

HF_CONFIGS = [
    dict(n_layer=2, n_head=2, n_embd=32, n_positions=64),
    dict(n_layer=3, n_head=4, n_embd=64, n_positions=48, layer_norm_epsilon=1e-6),
    dict(n_layer=1, n_head=3, n_embd=48, n_positions=32, n_inner=80, activation_function="gelu"),
]


def hf_gpt2(tmp_path: Path, seed: int, **overrides: object) -> tuple[GPT2LMHeadModel, Path]:
    """A random GPT2LMHeadModel (weights wider than HF's init so logits are not near-uniform), saved as a folder."""
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50257, **overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" not in name:
                p.normal_(0.0, 0.1)
    model.save_pretrained(tmp_path)
    return model, tmp_path


@pytest.mark.parametrize("overrides", HF_CONFIGS)
def test_logits_match_transformers(tmp_path: Path, overrides: dict) -> None:
    ref, folder = hf_gpt2(tmp_path, seed=len(str(overrides)), **overrides)
    ours = load_model(str(folder), device="cpu", dtype="float32").model
    idx = torch.randint(0, 50257, (2, overrides["n_positions"]))
    with torch.no_grad():
        expected = ref(idx).logits
    assert (ours.forward_full(idx) - expected).abs().max().item() < 1e-4
    # The cached path (prefill into slots) must agree as well.
    cache = KVCache(ours.config, 2, "cpu", torch.float32)
    cached = ours(Batch.make(idx, [0, 0], [1, 0]), cache, all_logits=True)
    assert (cached - expected).abs().max().item() < 1e-4


def test_pytorch_model_bin_loads_like_safetensors(tmp_path: Path) -> None:
    ref, folder = hf_gpt2(tmp_path / "st", seed=7, n_layer=2, n_head=2, n_embd=32, n_positions=32)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "config.json").write_text((folder / "config.json").read_text())
    torch.save(ref.state_dict(), bin_dir / "pytorch_model.bin")
    idx = torch.randint(0, 50257, (1, 32))
    a = load_model(str(folder), device="cpu", dtype="float32").model.forward_full(idx)
    b = load_model(str(bin_dir), device="cpu", dtype="float32").model.forward_full(idx)
    assert torch.equal(a, b)


def test_greedy_generation_matches_transformers_generate(tmp_path: Path) -> None:
    from model.engine import Engine
    from model.sampling import SamplingParams

    ref, folder = hf_gpt2(tmp_path, seed=3, n_layer=2, n_head=2, n_embd=32, n_positions=96)
    loaded = load_model(str(folder), device="cpu", dtype="float32")
    prompt = loaded.tokenizer.encode("To be, or not to be, that is the question:")
    with torch.no_grad():
        out = ref.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False, pad_token_id=50256)
    expected = out[0, len(prompt):].tolist()
    engine = Engine(loaded.model, loaded.tokenizer, max_batch_size=2)
    engine.start()
    try:
        events = list(engine.generate(prompt, SamplingParams(max_new_tokens=40)))
    finally:
        engine.stop()
    got = [e.token.id for e in events if e.token is not None]
    assert got == expected[: len(got)] and len(got) == len(expected)


def nanogpt_reference(ckpt_path: Path, idx: torch.Tensor) -> torch.Tensor:
    """A forward written from nanoGPT's model.py over its own state dict: explicit causal softmax, exact GELU."""
    ckpt = torch.load(ckpt_path, weights_only=True)
    sd = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
    c = GPTConfig(**{k: v for k, v in ckpt["model_args"].items() if k != "dropout"})
    B, T = idx.shape

    def ln(x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.layer_norm(x, (c.n_embd,), sd[prefix + ".weight"], sd.get(prefix + ".bias"), 1e-5)

    def linear(x: torch.Tensor, prefix: str) -> torch.Tensor:
        return x @ sd[prefix + ".weight"].T + (sd[prefix + ".bias"] if prefix + ".bias" in sd else 0)

    x = sd["transformer.wte.weight"][idx] + sd["transformer.wpe.weight"][:T]
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i in range(c.n_layer):
        p = f"transformer.h.{i}"
        q, k, v = linear(ln(x, p + ".ln_1"), p + ".attn.c_attn").split(c.n_embd, dim=2)
        q, k, v = (t.view(B, T, c.n_head, c.head_dim).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(c.head_dim)
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, c.n_embd)
        x = x + linear(y, p + ".attn.c_proj")
        h = linear(ln(x, p + ".ln_2"), p + ".mlp.c_fc")
        h = 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))
        x = x + linear(h, p + ".mlp.c_proj")
    return ln(x, "transformer.ln_f") @ sd["transformer.wte.weight"].T  # nanoGPT ties lm_head to wte


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("compiled", [False, True])
def test_nanogpt_checkpoint_matches_nanogpt_semantics(tmp_path: Path, bias: bool, compiled: bool) -> None:
    config = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=40, vocab_size=50304, bias=bias)
    original = random_gpt(config, seed=11)
    path = save_nanogpt(original, tmp_path / "ckpt.pt", compiled=compiled)
    loaded = load_model(str(path), device="cpu", dtype="float32")
    idx = torch.randint(0, 50257, (2, 40))
    expected = nanogpt_reference(path, idx)
    got = loaded.model.forward_full(idx)
    # The padded ids (50257..50303) are never scored: the tokenizer cannot decode them.
    assert got.shape[-1] == 50257
    assert (got - expected[..., :50257]).abs().max().item() < 1e-4
