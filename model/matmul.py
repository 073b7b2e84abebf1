"""x @ W for inference, through the kernel measured fastest for the device, dtype and number of rows.

Measured on an AVX-512 Xeon, 2 threads (docs/BENCHMARKS.md, "Native matmul kernels";
scripts/bench_matmul_stream.py times all products of a step with nothing left in cache, as in a real step):
- float32: the native panel kernel (model/cpu_kernels.py) for 2-32 rows (a decode step of a batch): 1.25-1.5x
  MKL, which re-packs the matrix on every such call. MKL for one row (its GEMV already reads at memory
  bandwidth, and measured ~10% faster inside a step) and for more than 32 (prefill chunks).
- bfloat16: the native kernel for 1-8 rows (1.2-1.7x oneDNN); oneDNN over its reordered copy from 9 rows
  on, where its AMX kernels win (from 16 rows; and 1.5x over plain bfloat16 matmul at every size).
- elsewhere (a GPU, a CPU without AVX-512): torch's matmul over the plain [in, out] matrix.
Each extra layout is one more copy of the weights, made once by `FrozenWeight.make`.
"""

from dataclasses import dataclass

import torch

from model import cpu_kernels

NATIVE_F32_ROWS = range(2, 33)
NATIVE_BF16_ROWS = range(1, 9)


def native_rows(dtype: torch.dtype) -> range:
    """How many rows the native kernel is the fastest for, in this dtype (the measurements above)."""
    return NATIVE_F32_ROWS if dtype == torch.float32 else NATIVE_BF16_ROWS


@dataclass
class FrozenWeight:
    plain: torch.Tensor  # [in, out]
    bias: torch.Tensor | None
    panels: torch.Tensor | None  # the native kernel's layout
    onednn: torch.Tensor | None  # oneDNN's reordered copy
    kernels: cpu_kernels.Kernels | None

    @classmethod
    def make(cls, plain: torch.Tensor, bias: torch.Tensor | None) -> "FrozenWeight":
        plain = plain.detach()
        kernels = cpu_kernels.load() if plain.device.type == "cpu" else None
        native = cpu_kernels.supports(kernels, plain.dtype)
        return cls(
            plain=plain,
            bias=None if bias is None else bias.detach().contiguous(),
            panels=cpu_kernels.pack(plain) if native else None,
            onednn=_onednn_copy(plain) if plain.dtype == torch.bfloat16 else None,
            kernels=kernels if native else None,
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [rows, in] -> [rows, out]."""
        rows = x.shape[0]
        if self.panels is not None and rows in native_rows(x.dtype):
            return cpu_kernels.matmul(self.kernels, x, self.panels, self.plain.shape[1], self.bias)
        if self.onednn is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.onednn, self.bias, "none", [], "")
        return plain_matmul(x, self.plain, self.bias)


def plain_matmul(x: torch.Tensor, weight_in_out: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """torch's own product: training, every device, and whatever the CPU kernels do not take."""
    return torch.addmm(bias, x, weight_in_out) if bias is not None else x @ weight_in_out


def _onednn_copy(plain: torch.Tensor) -> torch.Tensor | None:
    if plain.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None
    return torch.ops.mkldnn._reorder_linear_weight(plain.t().contiguous())
