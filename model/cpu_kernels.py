"""The native CPU kernels (model/kernels/*.c): build once, load with ctypes, call.

torch's own kernels leave speed on the table in a decode step: MKL re-packs the weights on every call for
2-16 rows, oneDNN's bfloat16 GEMV reads at about half the memory bandwidth, and a batch-1 float32 step spends
a fifth of its time between torch operations (docs/BENCHMARKS.md, "Native matmul kernels" and "One native
call per decode step"). The C files are small and built by the system C compiler the first time they are
needed, into a cache folder, or ahead of time (`python -m model.cpu_kernels DIR`, as the Dockerfile does).
Where there is no compiler, no AVX-512 or no Linux, `load()` says why once and returns None, and the model
runs on torch's kernels.
"""

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)

KERNELS = Path(__file__).with_name("kernels")
SOURCES = sorted(KERNELS.glob("*.c"))
# Fixed AVX-512 flags rather than -march=native, so that one build serves every AVX-512 machine (an image
# built on one host runs on another); what the CPU supports is checked at load time.
FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mfma", "-fopenmp", "-shared", "-fPIC"]
PANEL = 32  # output columns per weight panel; must match the C file


@dataclass(frozen=True)
class Kernels:
    lib: ctypes.CDLL
    bf16: bool  # whether the CPU has AVX512-BF16 (the float32 kernel needs only AVX-512F)


def library_name() -> str:
    text = b"".join(p.read_bytes() for p in [*SOURCES, KERNELS / "kernels.h"])
    digest = hashlib.sha256(text + " ".join(FLAGS).encode()).hexdigest()[:16]
    return f"gptserve_kernels-{digest}.so"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gptserve"


def compiler() -> str:
    return os.environ.get("CC", "cc")


def build(folder: Path) -> Path:
    """Compile the library into `folder` (atomically: concurrent builders never see half a file)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / library_name()
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".so", delete=False) as tmp:
        partial = Path(tmp.name)
    try:
        subprocess.run([compiler(), *FLAGS, "-o", str(partial), *map(str, SOURCES), "-lm"],
                       check=True, capture_output=True, text=True, timeout=120)
        partial.chmod(0o755)  # readable by every user: an image builds it as root and serves as another
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _find_or_build() -> Path:
    folders = [KERNELS, cache_dir(), Path(tempfile.gettempdir()) / "gptserve"]
    for folder in folders:
        if (folder / library_name()).is_file():
            return folder / library_name()
    if shutil.which(compiler()) is None:
        raise OSError(f"no C compiler ({compiler()}) on PATH")
    unwritable = []
    for folder in folders[1:]:
        try:
            return build(folder)
        except subprocess.CalledProcessError as exc:  # the compiler ran and failed: another folder won't help
            last = (exc.stderr or "").strip().splitlines()
            raise OSError(f"{exc.cmd[0]} failed: {last[-1] if last else f'exit status {exc.returncode}'}") from exc
        except subprocess.TimeoutExpired as exc:
            raise OSError(f"{exc.cmd[0]} took over {exc.timeout:.0f} s") from exc
        except OSError as exc:  # a folder we cannot write
            unwritable.append(f"{folder}: {exc.strerror or exc}")
    raise OSError("; ".join(unwritable))


@cache
def load() -> Kernels | None:
    """The loaded kernels, or None (with one log line saying why) where they cannot run."""
    flags = _cpu_flags()
    if sys.platform != "linux" or "avx512f" not in flags:
        log.info("native CPU kernels off: they need Linux and AVX-512; using torch's kernels")
        return None
    try:
        path = _find_or_build()
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        log.warning("native CPU kernels off (could not build or load them: %s); using torch's kernels", exc)
        return None
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    for fn in (lib.gs_matmul_f32, lib.gs_matmul_bf16):
        fn.argtypes = [pointer, size, size, pointer, size, pointer, pointer, ctypes.c_int]
        fn.restype = None
    for fn in (lib.gs_decode_attention_f32, lib.gs_decode_attention_bf16):
        fn.argtypes = [pointer] * 5 + [size] * 4 + [ctypes.c_float, pointer, ctypes.c_int]
        fn.restype = None
    for fn in (lib.gs_decode_blocks_f32, lib.gs_decode_blocks_bf16):
        fn.argtypes = ([pointer] + [size] * 5 + [ctypes.POINTER(_Block), pointer, pointer, size, size, pointer, pointer,
                                                 ctypes.c_float, ctypes.c_int, ctypes.c_int])
        fn.restype = ctypes.c_int
    log.info("native CPU kernels loaded from %s", path)
    return Kernels(lib, bf16="avx512_bf16" in flags)


def pack(weight_in_out: torch.Tensor) -> torch.Tensor:
    """The panel layout the kernels read: [P, K, 32] for float32, [P, K/2, 32, 2] for bfloat16 (K padded to even)."""
    K, N = weight_in_out.shape
    panels = -(-N // PANEL)
    if weight_in_out.dtype == torch.float32:
        padded = weight_in_out.new_zeros(K, panels * PANEL)
        padded[:, :N] = weight_in_out
        return padded.view(K, panels, PANEL).permute(1, 0, 2).contiguous()
    padded = weight_in_out.new_zeros(K + K % 2, panels * PANEL)
    padded[:K, :N] = weight_in_out
    return padded.view(-1, 2, panels, PANEL).permute(2, 0, 3, 1).contiguous()


def matmul(kernels: Kernels, x: torch.Tensor, packed: torch.Tensor, n_out: int,
           bias: torch.Tensor | None) -> torch.Tensor:
    """x [M, K] @ W + bias -> [M, n_out], with W as `pack` laid it out; x float32 or bfloat16 like W."""
    if x.dtype == torch.bfloat16 and x.shape[1] % 2:
        x = torch.nn.functional.pad(x, (0, 1))
    x = x.contiguous()
    y = torch.empty(x.shape[0], n_out, dtype=x.dtype)
    fn = kernels.lib.gs_matmul_f32 if x.dtype == torch.float32 else kernels.lib.gs_matmul_bf16
    fn(x.data_ptr(), x.shape[0], x.shape[1], packed.data_ptr(), n_out,
       bias.data_ptr() if bias is not None else None, y.data_ptr(), torch.get_num_threads())
    return y


def supports(kernels: Kernels | None, dtype: torch.dtype) -> bool:
    """Whether the kernels take tensors of this dtype on this CPU."""
    return kernels is not None and (dtype == torch.float32 or (dtype == torch.bfloat16 and kernels.bf16))


def decode_attention(kernels: Kernels, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor,
                     lengths: torch.Tensor) -> torch.Tensor:
    """One new token per sequence: q [B, H, D] attends to the first lengths[b] positions of slot slots[b] of one
    layer's cache k, v ([S, H, block, D], contiguous, D a multiple of 16) -> [B, H, D]."""
    B, H, D = q.shape
    q = q.contiguous()
    out = torch.empty_like(q)
    fn = kernels.lib.gs_decode_attention_f32 if q.dtype == torch.float32 else kernels.lib.gs_decode_attention_bf16
    fn(q.data_ptr(), k.data_ptr(), v.data_ptr(), slots.data_ptr(), lengths.data_ptr(), B, H, k.shape[2], D,
       D ** -0.5, out.data_ptr(), torch.get_num_threads())
    return out


class _Block(ctypes.Structure):
    """decode_step.c's Block: one transformer block's weights, in the order of `DecodeStep.make`'s lists."""
    _fields_ = [(name, ctypes.c_void_p) for name in
                ("ln1_w", "ln1_b", "qkv", "qkv_b", "proj", "proj_b", "ln2_w", "ln2_b", "fc", "fc_b", "out", "out_b")]


GELU_TANH, GELU_ERF = 2, 3  # kernels.h's epilogues


@dataclass(frozen=True)
class DecodeStep:
    """Every transformer block of a decode step in one native call (model/kernels/decode_step.c)."""

    kernels: Kernels
    blocks: ctypes.Array  # of _Block, one per layer, pointing into `tensors`
    tensors: tuple[torch.Tensor, ...]  # kept alive for as long as `blocks` points at them
    dtype: torch.dtype
    n_head: int
    hidden: int  # the MLP's width
    eps: float
    gelu: int
    max_rows: int  # beyond this many sequences the products are faster in MKL or oneDNN (model/matmul.py)

    @classmethod
    def make(cls, kernels: Kernels, layers: list[list[torch.Tensor | None]], n_head: int, hidden: int, eps: float,
             tanh_gelu: bool, max_rows: int) -> "DecodeStep":
        """`layers`: per block, [ln_1 weight, ln_1 bias, c_attn panels, bias, attention c_proj panels, bias, ln_2
        weight, bias, c_fc panels, bias, MLP c_proj panels, bias], contiguous, all float32 or all bfloat16 (then
        with even widths); biases may be None."""
        # Detached views hold the storage itself: a parameter's .data replaced later cannot free what C points at.
        layers = [[t.detach() if t is not None else None for t in layer] for layer in layers]
        tensors = tuple(t for layer in layers for t in layer if t is not None)
        dtype = tensors[0].dtype
        assert supports(kernels, dtype) and all(t.dtype == dtype and t.is_contiguous() for t in tensors)
        blocks = (_Block * len(layers))(*(_Block(*(t.data_ptr() if t is not None else None for t in layer))
                                          for layer in layers))
        return cls(kernels, blocks, tensors, dtype, n_head, hidden, eps, GELU_TANH if tanh_gelu else GELU_ERF, max_rows)

    def __call__(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor,
                 positions: torch.Tensor) -> None:
        """Run x ([B, C], one new token of each sequence) through every block in place, writing each layer's key
        and value at positions[b] of slot slots[b] of the cache k, v ([n_layer, n_slots, H, block, D])."""
        B, C = x.shape
        assert x.is_contiguous() and k.dtype == x.dtype == self.dtype and B <= self.max_rows
        lib = self.kernels.lib
        fn = lib.gs_decode_blocks_f32 if self.dtype == torch.float32 else lib.gs_decode_blocks_bf16
        status = fn(x.data_ptr(), B, C, self.n_head, self.hidden, len(self.blocks), self.blocks, k.data_ptr(),
                    v.data_ptr(), k.shape[1], k.shape[3], slots.data_ptr(), positions.data_ptr(), self.eps, self.gelu,
                    torch.get_num_threads())
        if status != 0:
            raise MemoryError("no memory for a decode step's activations")


if __name__ == "__main__":  # python -m model.cpu_kernels DIR: build ahead of time (the Dockerfile)
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else KERNELS))
