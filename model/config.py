"""The shape of a GPT model, independent of the checkpoint format it came from."""

from dataclasses import dataclass


@dataclass(frozen=True)
class GPTConfig:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    vocab_size: int = 50257
    bias: bool = True
    # "gelu" is the exact erf GELU (nanoGPT); "gelu_tanh" is GPT-2's tanh approximation (HF `gelu_new`).
    activation: str = "gelu"
    layer_norm_eps: float = 1e-5
    # Width of the MLP's hidden layer; None means the usual 4 * n_embd.
    n_inner: int | None = None

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) is not divisible by n_head ({self.n_head})")
        if self.activation not in ("gelu", "gelu_tanh"):
            raise ValueError(f"unsupported activation {self.activation!r}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_width(self) -> int:
        return self.n_inner or 4 * self.n_embd
