"""FrozenWeight: whichever kernel a call takes, the product is the plain matmul's within the dtype's tolerance."""

import pytest
import torch

from model.matmul import FrozenWeight


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("bias", [True, False])
def test_every_row_count_matches_the_plain_product(dtype: torch.dtype, tol: float, bias: bool) -> None:
    torch.manual_seed(0)
    w, b = torch.randn(48, 200), torch.randn(200)
    frozen = FrozenWeight.make(w.to(dtype), b.to(dtype) if bias else None)
    for rows in (1, 2, 3, 8, 9, 32, 33, 64):  # the decode batch sizes and a prefill chunk: every dispatch branch
        x = torch.randn(rows, 48)
        expected = x.to(dtype).float() @ w.to(dtype).float() + (b.to(dtype).float() if bias else 0)
        got = frozen(x.to(dtype))
        assert got.dtype == dtype and got.shape == (rows, 200)
        assert torch.allclose(got.float(), expected, atol=tol, rtol=tol), rows


def test_a_frozen_weight_off_the_cpu_paths_uses_the_plain_matrix() -> None:
    """float16 has no fast CPU kernel here: the product is plain torch (the same path a GPU takes)."""
    w = torch.randn(8, 5).half()
    frozen = FrozenWeight.make(w, None)
    assert frozen.panels is None and frozen.onednn is None
    x = torch.randn(3, 8).half()
    assert torch.equal(frozen(x), x @ w)
