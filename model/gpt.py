"""The GPT-2 / nanoGPT transformer, reading and writing an external KV cache.

Parameter names follow nanoGPT (`transformer.wte`, `transformer.h.N.attn.c_attn`, ...). Projection
matrices are stored as [in, out], GPT-2's Conv1D layout: on the CPU a batch of a few rows times an
[in, out] matrix runs up to twice as fast as F.linear's [out, in] (docs/BENCHMARKS.md). So Hugging
Face weights load as they are, and the loader transposes nanoGPT's nn.Linear matrices.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model import cpu_kernels
from model.config import GPTConfig
from model.kv_cache import KVCache
from model.matmul import FrozenWeight, native_rows, plain_matmul


@dataclass
class Batch:
    """One forward's worth of tokens: B sequences, each with T new tokens starting at its own position.

    Sequences are in different slots of the cache and at different positions; the tokens before
    `start_pos` must already be in the cache.
    """

    input_ids: torch.Tensor  # [B, T] token ids
    start_pos: torch.Tensor  # [B] position of input_ids[:, 0] in each sequence
    slots: torch.Tensor  # [B] cache slot of each sequence
    start_list: list[int]  # start_pos as Python ints, so shapes are known without a device sync
    slot_span: tuple[int, int] | None  # (first, end) when `slots` is a run first..end-1: read without a gather

    @classmethod
    def make(cls, input_ids: torch.Tensor, start_pos: list[int], slots: list[int]) -> "Batch":
        device = input_ids.device
        run = slots == list(range(slots[0], slots[0] + len(slots)))
        return cls(
            input_ids=input_ids,
            start_pos=torch.tensor(start_pos, dtype=torch.long, device=device),
            slots=torch.tensor(slots, dtype=torch.long, device=device),
            start_list=list(start_pos),
            slot_span=(slots[0], slots[0] + len(slots)) if run else None,
        )

    @property
    def block(self) -> tuple[int, int, int] | None:
        """(first slot, end slot, start position) when the cache write is one rectangular block."""
        if self.slot_span is None or any(s != self.start_list[0] for s in self.start_list):
            return None
        return self.slot_span[0], self.slot_span[1], self.start_list[0]

    @property
    def kv_len(self) -> int:
        """How many cache positions attention must read: the furthest any sequence reaches."""
        return max(self.start_list) + self.input_ids.shape[1]


class Linear(nn.Module):
    """y = x @ weight + bias with weight stored [in, out] (see the module docstring for why)."""

    def __init__(self, n_in: int, n_out: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out).normal_(0.0, 0.02))
        self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None
        self.frozen: FrozenWeight | None = None  # set by GPT.freeze: the fastest kernel per call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        y = self.frozen(flat) if self.frozen is not None else plain_matmul(flat, self.weight, self.bias)
        return y.view(*x.shape[:-1], -1)


def _panels_and_bias(linear: Linear) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    assert linear.frozen is not None
    return linear.frozen.panels, linear.frozen.bias


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd, config.bias)
        self.c_proj = Linear(config.n_embd, config.n_embd, config.bias)

    def forward(self, x: torch.Tensor, layer: int, batch: Batch | None, positions: torch.Tensor,
                mask: torch.Tensor | None, cache: KVCache | None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k, v = k.view(B, T, self.n_head, -1), v.view(B, T, self.n_head, -1)
        if cache is None or batch is None:  # whole sequences from position 0: training and reference
            keys, values = k.transpose(1, 2), v.transpose(1, 2)
        else:
            cache.write(layer, batch.slots, positions, k, v, batch.block)
            if T == 1 and cache.attends_natively:  # a decode step on the CPU: see KVCache.attend
                y = cache.attend(layer, q[:, :, 0], batch.slots, batch.start_pos + 1)
                return self.c_proj(y.view(B, 1, C))
            keys, values = cache.read(layer, batch.slots, batch.slot_span, batch.kv_len)
        causal = mask is None and T > 1
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=causal)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = Linear(config.n_embd, config.mlp_width, config.bias)
        self.c_proj = Linear(config.mlp_width, config.n_embd, config.bias)
        self.approximate = "tanh" if config.activation == "gelu_tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, layer: int, batch: Batch | None, positions: torch.Tensor,
                mask: torch.Tensor | None, cache: KVCache | None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), layer, batch, positions, mask, cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight
        # Logits are computed for the first `n_logits` ids only: the ids a tokenizer can decode.
        # nanoGPT pads GPT-2's 50257 to 50304; the padding ids must never be sampled.
        self.n_logits = config.vocab_size
        # An [n_embd, n_logits] copy of the output matrix for inference (see `freeze`); None while training.
        self._head: FrozenWeight | None = None
        # Every block of a CPU decode step in one native call, where the kernels run (see `freeze`).
        self._step: cpu_kernels.DecodeStep | None = None

    def freeze(self, n_logits: int) -> "GPT":
        """Fix the weights for inference: score `n_logits` ids through a pre-transposed output matrix.

        The tied embedding is [vocab, n_embd]; scoring with it through F.linear is the slowest step of a CPU
        decode, and an [n_embd, vocab] copy is much faster (docs/BENCHMARKS.md). On the CPU every
        projection also gets the layouts of the faster kernels (model/matmul.py), and a decode step runs all
        blocks in one native call (`_native_step`; the blocks below stay the reference and every other path).
        Costs memory: one output matrix on a GPU; on the CPU one more copy of the weights (two in bfloat16).
        """
        self.n_logits = n_logits
        self._head = FrozenWeight.make(self.lm_head.weight[:n_logits].t().contiguous(), None)
        for module in self.modules():
            if isinstance(module, Linear):
                module.frozen = FrozenWeight.make(module.weight, module.bias)
        self._step = self._native_step()
        return self.eval().requires_grad_(False)

    def _native_step(self) -> cpu_kernels.DecodeStep | None:
        """The blocks of a decode step as one native call, where every projection has the panel layout."""
        blocks = self.transformer.h
        linears = [m.frozen for m in blocks.modules() if isinstance(m, Linear)]
        if not all(f is not None and f.panels is not None for f in linears):
            return None
        if linears[0].plain.dtype == torch.bfloat16 and (self.config.n_embd % 2 or self.config.mlp_width % 2):
            return None  # the bfloat16 products take pairs along K
        layers = [[b.ln_1.weight, b.ln_1.bias, *_panels_and_bias(b.attn.c_attn), *_panels_and_bias(b.attn.c_proj),
                   b.ln_2.weight, b.ln_2.bias, *_panels_and_bias(b.mlp.c_fc), *_panels_and_bias(b.mlp.c_proj)]
                  for b in blocks]
        c, dtype = self.config, linears[0].plain.dtype
        return cpu_kernels.DecodeStep.make(linears[0].kernels, layers, c.n_head, c.mlp_width, c.layer_norm_eps,
                                           c.activation == "gelu_tanh", max(native_rows(dtype)))

    def num_params(self) -> int:
        """Parameter count without double-counting the tied embedding / output matrix."""
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    def hidden_states(self, batch: Batch, cache: KVCache) -> torch.Tensor:
        """Run the transformer over the batch's new tokens, filling the cache; returns [B, T, C] after ln_f."""
        idx = batch.input_ids
        T = idx.shape[1]
        offsets = torch.arange(T, device=idx.device)
        positions = batch.start_pos[:, None] + offsets  # [B, T]
        if max(batch.start_list) + T > self.config.block_size:
            raise ValueError(f"sequence longer than the context ({self.config.block_size} tokens)")
        # The native decode attention reads each sequence's own positions and needs no mask.
        mask = None if T == 1 and cache.attends_natively else self._mask(batch, positions)
        x = self.transformer.wte(idx) + self.transformer.wpe(positions)
        B = idx.shape[0]
        if T == 1 and self._step is not None and cache.attends_natively and B <= self._step.max_rows:
            self._step(x.view(B, -1), cache.k, cache.v, batch.slots, batch.start_pos)
            return self.transformer.ln_f(x)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, layer, batch, positions, mask, cache)
        return self.transformer.ln_f(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self._head is not None:
            return self._head(hidden.reshape(-1, hidden.shape[-1])).view(*hidden.shape[:-1], -1)
        return F.linear(hidden, self.lm_head.weight[: self.n_logits])

    def forward(self, batch: Batch, cache: KVCache, all_logits: bool = False) -> torch.Tensor:
        """Logits for the last new token of each sequence ([B, V]), or for every new token ([B, T, V])."""
        hidden = self.hidden_states(batch, cache)
        return self.logits(hidden if all_logits else hidden[:, -1])

    def forward_full(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] for whole sequences starting at position 0, without a cache (training, reference)."""
        T = idx.shape[1]
        if T > self.config.block_size:
            raise ValueError(f"sequence longer than the context ({self.config.block_size} tokens)")
        positions = torch.arange(T, device=idx.device)[None, :]
        x = self.transformer.wte(idx) + self.transformer.wpe(positions)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, layer, None, positions, None, None)
        return self.logits(self.transformer.ln_f(x))

    @staticmethod
    def _mask(batch: Batch, positions: torch.Tensor) -> torch.Tensor | None:
        """Boolean [B, 1, T, L] mask letting each token see its own sequence's keys up to itself.

        None when plain causal attention is exact: every sequence starts at 0 (SDPA's is_causal), or a
        single new token per sequence with all sequences at the same position (nothing to hide).
        """
        T = batch.input_ids.shape[1]
        starts = batch.start_list
        if all(s == 0 for s in starts) or (T == 1 and all(s == starts[0] for s in starts)):
            return None
        keys = torch.arange(batch.kv_len, device=positions.device)
        return (keys[None, None, None, :] <= positions[:, None, :, None])
