"""Preallocated key/value memory for incremental decoding, split into per-sequence slots.

Each running sequence owns one slot: `block_size` positions in every layer. Fixed shapes keep the
decode step simple (and capturable as a CUDA graph); paged blocks could replace this behind the
same allocate/free interface.
"""

import torch

from model import cpu_kernels
from model.config import GPTConfig


class CacheFullError(RuntimeError):
    """Raised when a slot is requested but every slot is taken."""


class KVCache:
    def __init__(self, config: GPTConfig, n_slots: int, device: torch.device | str, dtype: torch.dtype):
        if n_slots < 1:
            raise ValueError("a KV cache needs at least one slot")
        shape = (config.n_layer, n_slots, config.n_head, config.block_size, config.head_dim)
        # Zeros, not empty: masked positions still enter attention as 0 * value, and garbage could be NaN.
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.n_slots = n_slots
        self.block_size = config.block_size
        self._free = list(range(n_slots - 1, -1, -1))
        # The native decode-attention kernel, where it runs: a CPU, float32 or bfloat16, head_dim a multiple of 16.
        kernels = cpu_kernels.load() if self.k.device.type == "cpu" and config.head_dim % 16 == 0 else None
        self._kernels = kernels if cpu_kernels.supports(kernels, dtype) else None

    def allocate(self) -> int:
        if not self._free:
            raise CacheFullError("all KV-cache slots are in use")
        return self._free.pop()

    def free(self, slot: int) -> None:
        if not 0 <= slot < self.n_slots or slot in self._free:
            raise ValueError(f"slot {slot} is not allocated")
        self._free.append(slot)

    @property
    def free_slots(self) -> int:
        return len(self._free)

    @property
    def used_slots(self) -> int:
        return self.n_slots - len(self._free)

    def usage_ratio(self) -> float:
        return self.used_slots / self.n_slots

    def write(self, layer: int, slots: torch.Tensor, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              block: tuple[int, int, int] | None = None) -> None:
        """Store k, v ([B, T, H, D]) at `positions` ([B, T]) of each sequence's slot (`slots`, [B]).

        `block` = (first slot, end slot, start position) when the slots are a consecutive run and every
        sequence starts at the same position: then the write is one strided copy, not a scatter (a decode
        step of one sequence, a prefill chunk, a batch in lockstep).
        """
        if block is not None:
            first, end, start = block
            T = k.shape[1]
            self.k[layer, first:end, :, start:start + T] = k.transpose(1, 2)
            self.v[layer, first:end, :, start:start + T] = v.transpose(1, 2)
            return
        rows = slots[:, None].expand_as(positions)
        self.k[layer][rows, :, positions] = k
        self.v[layer][rows, :, positions] = v

    @property
    def attends_natively(self) -> bool:
        """Whether `attend` can run (see __init__); otherwise read the keys and values and use SDPA."""
        return self._kernels is not None

    def attend(self, layer: int, q: torch.Tensor, slots: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """One new token per sequence: q [B, H, D] over the first lengths[b] positions of slot slots[b] -> [B, H, D].

        Reads each sequence's own positions in place: no mask for sequences at different positions, no gather
        for slots out of order (1.6x SDPA in float32 and 2.4x in bfloat16 at 8 sequences, docs/BENCHMARKS.md).
        """
        assert self._kernels is not None
        return cpu_kernels.decode_attention(self._kernels, q, self.k[layer], self.v[layer], slots, lengths)

    def read(self, layer: int, slots: torch.Tensor, span: tuple[int, int] | None,
             length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the first `length` positions of each slot, as [B, H, length, D].

        When the slots are a consecutive run (`span`), this is a view; otherwise a gather (a copy).
        """
        if span is not None:
            return self.k[layer, span[0]: span[1], :, :length], self.v[layer, span[0]: span[1], :, :length]
        return (
            self.k[layer, :, :, :length].index_select(0, slots),
            self.v[layer, :, :, :length].index_select(0, slots),
        )
