"""The native CPU kernels against torch's float32 matmul, on every row count, tail and padding they handle."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model import cpu_kernels
from model.config import GPTConfig
from model.gpt import Batch
from model.kv_cache import KVCache
from tests.conftest import random_gpt

CAN_BUILD = "avx512f" in cpu_kernels._cpu_flags() and shutil.which("cc") is not None


def test_kernels_load_wherever_they_can_be_built() -> None:
    """A build that silently fell back to torch's kernels would lose the speed without failing anything else."""
    kernels = cpu_kernels.load()
    assert (kernels is not None) == CAN_BUILD
    if kernels is not None:
        assert kernels.bf16 == ("avx512_bf16" in cpu_kernels._cpu_flags())


needs_kernels = pytest.mark.skipif(not CAN_BUILD, reason="no AVX-512 or no C compiler here")


@needs_kernels
def test_build_writes_a_loadable_library_named_by_its_source(tmp_path: Path) -> None:
    path = cpu_kernels.build(tmp_path)
    assert path.name == cpu_kernels.library_name() and path.is_file()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no partial files left behind
    assert cpu_kernels.build(tmp_path) == path
    assert path.stat().st_mode & 0o444 == 0o444  # loadable by the image's non-root user


@needs_kernels
@pytest.mark.parametrize("rows", [1, 2, 3, 7, 8, 9, 16, 17, 40])
@pytest.mark.parametrize("k, n", [(32, 96), (7, 33), (64, 1), (6, 50), (77, 40)])  # 77: runs and a tail
@pytest.mark.parametrize("bias", [True, False])
def test_float32_matches_torch(rows: int, k: int, n: int, bias: bool) -> None:
    kernels = cpu_kernels.load()
    torch.manual_seed(rows * 1000 + k * 10 + n)
    x, w, b = torch.randn(rows, k), torch.randn(k, n), torch.randn(n) if bias else None
    got = cpu_kernels.matmul(kernels, x, cpu_kernels.pack(w), n, b)
    expected = x @ w + (b if bias else 0)
    assert got.shape == (rows, n) and got.dtype == torch.float32
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)


@needs_kernels
@pytest.mark.skipif("avx512_bf16" not in cpu_kernels._cpu_flags(), reason="no AVX512-BF16 here")
@pytest.mark.parametrize("rows", [1, 2, 3, 8, 9])
@pytest.mark.parametrize("k, n", [(32, 96), (7, 33), (65, 100)])
@pytest.mark.parametrize("bias", [True, False])
def test_bfloat16_matches_float32_of_the_same_values(rows: int, k: int, n: int, bias: bool) -> None:
    """bfloat16 inputs, float32 accumulation, one rounding at the end: within one bfloat16 step of exact."""
    kernels = cpu_kernels.load()
    torch.manual_seed(rows * 1000 + k * 10 + n)
    x, w = torch.randn(rows, k).bfloat16(), torch.randn(k, n).bfloat16()
    b = torch.randn(n).bfloat16() if bias else None
    got = cpu_kernels.matmul(kernels, x, cpu_kernels.pack(w), n, b)
    exact = x.float() @ w.float() + (b.float() if bias else 0)
    assert got.dtype == torch.bfloat16 and got.shape == (rows, n)
    assert torch.allclose(got.float(), exact, atol=1e-2, rtol=1e-2)


def test_without_a_compiler_the_model_runs_on_torch_kernels_and_says_why(tmp_path: Path) -> None:
    """No cached build and a compiler that fails: one warning, no crash, the same logits as plain torch."""
    script = """
import logging, sys, torch
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
from model import cpu_kernels
from model.config import GPTConfig
from model.gpt import Batch
from model.kv_cache import KVCache
from tests.conftest import random_gpt
from model.matmul import FrozenWeight
w, x = torch.randn(16, 40), torch.randn(5, 16)
frozen = FrozenWeight.make(w, None)
assert cpu_kernels.load() is None and frozen.panels is None
assert torch.equal(frozen(x), x @ w)
print("ok")
"""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "TMPDIR": str(tmp_path / "tmp"), "CC": "false"}
    (tmp_path / "tmp").mkdir()
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "ok"
    assert sum("native CPU kernels off" in line for line in lines) == 1
    assert "Traceback" not in result.stdout + result.stderr


@needs_kernels
def test_the_kernels_use_torchs_thread_count_from_any_thread() -> None:
    """OpenMP's thread count is per thread, and the engine runs in its own: `--threads 1` must still hold there.

    Counted as OS threads: a team of two would leave libgomp's helper thread alive beside the caller.
    """
    script = """
import os, threading, torch
from model import cpu_kernels
from model.config import GPTConfig
from model.gpt import Batch
from model.kv_cache import KVCache
from tests.conftest import random_gpt
torch.set_num_threads(1)
kernels = cpu_kernels.load()
w = torch.randn(64, 4096)
packed, x = cpu_kernels.pack(w), torch.randn(4, 64)
def work():
    before = len(os.listdir("/proc/self/task"))
    y = cpu_kernels.matmul(kernels, x, packed, 4096, None)
    assert torch.allclose(y, x @ w, atol=1e-4)
    print(len(os.listdir("/proc/self/task")) - before)
t = threading.Thread(target=work)
t.start()
t.join()
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).parent.parent, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"


@needs_kernels
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("head_dim", [16, 64, 128])
def test_decode_attention_matches_sdpa_over_each_sequences_own_positions(dtype: torch.dtype, tol: float,
                                                                         head_dim: int) -> None:
    """Slots out of order, lengths from 1 to the whole block (tails of the 4-key and 16-score loops)."""
    if not cpu_kernels.supports(cpu_kernels.load(), dtype):
        pytest.skip("no AVX512-BF16 here")
    torch.manual_seed(head_dim)
    slots_total, heads, block = 7, 3, 40
    k = torch.randn(slots_total, heads, block, head_dim).to(dtype)
    v = torch.randn(slots_total, heads, block, head_dim).to(dtype)
    slots, lengths = torch.tensor([5, 0, 3, 6, 1, 2]), torch.tensor([1, 3, 4, 17, 39, 40])
    q = (torch.randn(len(slots), heads, head_dim) * 2).to(dtype)
    got = cpu_kernels.decode_attention(cpu_kernels.load(), q, k, v, slots, lengths)
    assert got.dtype == dtype and got.shape == q.shape
    for b, (slot, n) in enumerate(zip(slots.tolist(), lengths.tolist())):
        expected = F.scaled_dot_product_attention(q[b, :, None].float(), k[slot, :, :n].float(), v[slot, :, :n].float())
        assert torch.allclose(got[b].float(), expected[:, 0], atol=tol, rtol=tol), (b, n)


@needs_kernels
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch", [1, 5, None])  # None: as many sequences as the native step takes
def test_native_decode_step_matches_the_torch_blocks(dtype: torch.dtype, tol: float, activation: str, bias: bool,
                                                     batch: int | None) -> None:
    """The one-call step (DecodeStep) against the same frozen model stepping block by block in torch: logits and
    every cache row it writes, for slots out of order and sequences at different positions up to the context end.
    bfloat16 rounds in other places than torch does (once per fused epilogue), hence its looser tolerance."""
    if not cpu_kernels.supports(cpu_kernels.load(), dtype):
        pytest.skip("no AVX512-BF16 here")
    compare_native_step(dtype, tol, activation, bias, batch)


@needs_kernels
def test_native_decode_step_with_more_threads_than_cpus() -> None:
    """Then the step synchronizes with libgomp's barrier instead of spinning (kernels.h, team_sync)."""
    threads = torch.get_num_threads()
    torch.set_num_threads((os.cpu_count() or 1) + 1)
    try:
        compare_native_step(torch.float32, 1e-4, "gelu_tanh", True, 5)
    finally:
        torch.set_num_threads(threads)


def compare_native_step(dtype: torch.dtype, tol: float, activation: str, bias: bool, batch: int | None) -> None:
    # 48 wide: a panel tail in every product; heads of 16, the narrowest the native attention takes.
    config = GPTConfig(n_layer=3, n_head=3, n_embd=48, block_size=40, vocab_size=300, bias=bias, activation=activation)
    native, stepwise = (random_gpt(config, seed=batch or 0).to(dtype).freeze(config.vocab_size) for _ in range(2))
    assert native._step is not None
    stepwise._step = None
    batch = batch or native._step.max_rows
    torch.manual_seed(batch)
    slots = torch.randperm(batch + 2)[:batch].tolist()
    lengths = torch.randint(1, config.block_size - 1, (batch,)).tolist()
    lengths[0] = config.block_size - 1  # its new token takes the context's last position
    caches = [KVCache(config, batch + 2, "cpu", dtype) for _ in range(2)]
    prompts, ids = torch.randint(0, 300, (1, config.block_size)), torch.randint(0, 300, (batch, 1))
    with torch.inference_mode():
        for model, cache in zip((native, stepwise), caches):
            for slot, n in zip(slots, lengths):
                model(Batch.make(prompts[:, :n], [0], [slot]), cache)
        got, expected = (model(Batch.make(ids, lengths, slots), cache)
                         for model, cache in zip((native, stepwise), caches))
    scale = expected.abs().max().item()
    assert (got.float() - expected.float()).abs().max().item() <= tol * scale
    for ours, theirs in ((caches[0].k, caches[1].k), (caches[0].v, caches[1].v)):
        assert (ours.float() - theirs.float()).abs().max().item() <= tol * theirs.abs().max().item()
