"""Shared fixtures: small random checkpoints in every format the loader reads, written by the tests."""

from pathlib import Path

import pytest
import torch

from model.config import GPTConfig
from model.gpt import GPT
from model.loader import CONV1D_SUFFIXES

# A tiny GPT with GPT-2's (padded) vocabulary, so the real BPE tokenizer drives it.
TINY = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=128, vocab_size=50304, bias=True, activation="gelu")


def random_gpt(config: GPTConfig, seed: int = 0, std: float = 0.1) -> GPT:
    """A GPT with normal(0, std) weights: large enough that distributions are peaked but not one-hot."""
    torch.manual_seed(seed)
    model = GPT(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, std / 4)
            elif ".ln_" in name or name.startswith("transformer.ln_f"):
                p.normal_(1.0, std)
            else:
                p.normal_(0.0, std)
    return model.eval()


def save_nanogpt(model: GPT, path: Path, compiled: bool = False, dataset: str | None = None) -> Path:
    """Write `model` as nanoGPT's train.py does: model_args + state dict (+ `_orig_mod.` when compiled).

    nanoGPT's nn.Linear matrices are [out, in], the transpose of gptserve's layout.
    """
    c = model.config
    prefix = "_orig_mod." if compiled else ""
    state = {prefix + k: (v.t() if k.endswith(CONV1D_SUFFIXES) else v).clone() for k, v in model.state_dict().items()}
    ckpt = {
        "model": state,
        "model_args": dict(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, block_size=c.block_size,
                           bias=c.bias, vocab_size=c.vocab_size, dropout=0.0),
        "iter_num": 0,
        "best_val_loss": torch.tensor(3.0),
        "config": {"dataset": dataset or "openwebtext", "batch_size": 12},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A nanoGPT checkpoint of the TINY config (GPT-2 BPE, vocab padded to 50304)."""
    return save_nanogpt(random_gpt(TINY, seed=1234), tmp_path_factory.mktemp("tiny") / "ckpt.pt")
