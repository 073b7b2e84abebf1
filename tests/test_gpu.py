"""The model and engine on the device named by GPTSERVE_TEST_DEVICE (default cpu; scripts/gpu_check.sh sets cuda).

Fast paths must stay within their dtype's tolerance of float32: bfloat16 logits against a float32
reference of the same weights, and cached decoding against full recomputation on the device.
"""

import os
from pathlib import Path

import pytest
import torch

from model import cpu_kernels
from model.engine import Engine
from model.gpt import GPT, Batch, Linear
from model.kv_cache import KVCache
from model.loader import load_model
from model.sampling import SamplingParams

DEVICE = os.environ.get("GPTSERVE_TEST_DEVICE", "cpu")
if DEVICE.startswith("cuda") and not torch.cuda.is_available():
    pytest.skip("GPTSERVE_TEST_DEVICE asks for CUDA but none is available", allow_module_level=True)


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-4), ("bfloat16", 0.1)])
def test_logits_within_dtype_tolerance_of_float32(tiny_ckpt: Path, dtype: str, tol: float) -> None:
    ref = load_model(str(tiny_ckpt), device="cpu", dtype="float32").model
    fast = load_model(str(tiny_ckpt), device=DEVICE, dtype=dtype).model
    idx = torch.randint(0, 50257, (2, 64))
    expected = ref.forward_full(idx)
    got = fast.forward_full(idx.to(DEVICE)).float().cpu()
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() <= tol * max(scale, 1.0)
    # The most likely next token agrees almost everywhere.
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean().item() > 0.9


def plain_torch(model: GPT) -> GPT:
    """The model with every product through plain torch matmuls: the reference for the fast kernels."""
    for module in model.modules():
        if isinstance(module, Linear):
            module.frozen = None
    model._head, model._step = None, None
    return model


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-4), ("bfloat16", 0.1)])
@pytest.mark.parametrize("batch", [1, 2, 3, 9, 33])
def test_decode_steps_within_dtype_tolerance_of_plain_float32(tiny_ckpt: Path, dtype: str, tol: float,
                                                              batch: int) -> None:
    """Every decode batch size takes its own kernel (model/matmul.py); each must agree with plain float32."""
    ref = plain_torch(load_model(str(tiny_ckpt), device="cpu", dtype="float32").model)
    fast = load_model(str(tiny_ckpt), device=DEVICE, dtype=dtype).model
    cache = KVCache(fast.config, batch, DEVICE, next(fast.parameters()).dtype)
    # On a CPU where the kernels run, a loaded model steps in one native call (up to its row limit).
    native = DEVICE == "cpu" and cpu_kernels.supports(cpu_kernels.load(), getattr(torch, dtype))
    assert (fast._step is not None) == native
    torch.manual_seed(batch)
    seqs = [torch.randint(0, 50257, (3 + slot,)).tolist() for slot in range(batch)]
    with torch.inference_mode():
        for slot, s in enumerate(seqs):
            fast(Batch.make(torch.tensor([s], device=DEVICE), [0], [slot]), cache)
        for _ in range(3):
            nxt = torch.randint(0, 50257, (batch,)).tolist()
            ids = torch.tensor([[t] for t in nxt], device=DEVICE)
            got = fast(Batch.make(ids, [len(s) for s in seqs], list(range(batch))), cache).float().cpu()
            for row, s in enumerate(seqs):
                s.append(nxt[row])
                expected = ref.forward_full(torch.tensor([s]))[0, -1]
                scale = max(expected.abs().max().item(), 1.0)
                assert (got[row] - expected).abs().max().item() <= tol * scale
                if dtype == "float32":
                    assert got[row].argmax().item() == expected.argmax().item()


def test_cached_decoding_equals_recomputation_on_device(tiny_ckpt: Path) -> None:
    model = load_model(str(tiny_ckpt), device=DEVICE, dtype="float32").model
    cache = KVCache(model.config, 3, DEVICE, torch.float32)
    seqs = [torch.randint(0, 50257, (n,)).tolist() for n in (3, 9, 20)]
    with torch.inference_mode():
        for slot, s in enumerate(seqs):
            model(Batch.make(torch.tensor([s], device=DEVICE), [0], [slot]), cache)
        for _ in range(10):
            nxt = torch.randint(0, 50257, (3,)).tolist()
            logits = model(Batch.make(torch.tensor([[t] for t in nxt], device=DEVICE), [len(s) for s in seqs],
                                      [0, 1, 2]), cache)
            for row, s in enumerate(seqs):
                s.append(nxt[row])
                full = model.forward_full(torch.tensor([s], device=DEVICE))[0, -1]
                assert (logits[row] - full).abs().max().item() < 1e-3


def test_engine_greedy_on_device_matches_cpu(tiny_ckpt: Path) -> None:
    outputs = []
    for device in ("cpu", DEVICE):
        loaded = load_model(str(tiny_ckpt), device=device, dtype="float32")
        engine = Engine(loaded.model, loaded.tokenizer, max_batch_size=4)
        engine.start()
        try:
            events = list(engine.generate(loaded.tokenizer.encode("To be, or not to be"),
                                          SamplingParams(max_new_tokens=16, ignore_eos=True)))
        finally:
            engine.stop()
        outputs.append([e.token.id for e in events])
    assert outputs[0] == outputs[1]
