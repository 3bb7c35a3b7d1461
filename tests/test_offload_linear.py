"""Half-precision products on a CPU without native support: many tokens go through fp32 slabs, one token stays
the plain product, and the result is the same product."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from moe_tui.offload.formats import linear as module
from moe_tui.offload.formats import make_format


@pytest.fixture
def without_native_half(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a CPU with no AVX512-BF16 or AMX, whatever this one has."""
    monkeypatch.setattr(module, "slow_half_matmul", lambda dtype: dtype in (torch.bfloat16, torch.float16))


def reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (x.float() @ weight.float().t()).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_many_tokens_are_multiplied_in_fp32_slabs_and_give_the_product(without_native_half, dtype, monkeypatch) -> None:
    torch.manual_seed(0)
    weight = torch.randn(300, 2000).to(dtype)  # 300 rows: several slabs and a short last one
    x = torch.randn(2, 5, 2000).to(dtype)  # 10 tokens in a batch of 2
    monkeypatch.setattr(module, "SLAB_BYTES", 4 * 2000 * 128)  # slabs of 128 rows
    got = module.linear(x, weight)
    expected = reference(x, weight)
    assert got.shape == (2, 5, 300) and got.dtype == dtype
    close = torch.isclose(got.float(), expected.float(), rtol=0, atol=0).float().mean().item()
    assert close > 0.99  # an fp32 product rounded once: at most a last-bit difference here and there
    assert torch.allclose(got.float(), expected.float(), rtol=1e-2, atol=1e-2)
    plain = F.linear(x, weight)  # the plain half product rounds too, differently: both near the fp32 one
    assert torch.allclose(plain.float(), expected.float(), rtol=2e-2, atol=5e-2)


def test_few_tokens_fp32_and_native_half_keep_the_plain_product(without_native_half, monkeypatch) -> None:
    torch.manual_seed(1)
    weight = torch.randn(64, 32).bfloat16()
    few = torch.randn(module.CONVERT_FROM_TOKENS - 1, 32).bfloat16()
    assert torch.equal(module.linear(few, weight), F.linear(few, weight))
    single = torch.randn(32).float()
    assert torch.equal(module.linear(single, weight.float()), F.linear(single, weight.float()))
    monkeypatch.setattr(module, "slow_half_matmul", lambda dtype: False)  # a CPU with native bf16
    many = torch.randn(64, 32).bfloat16()
    assert torch.equal(module.linear(many, weight), F.linear(many, weight))


def test_a_dense_expert_prefilled_through_fp32_matches_the_fp32_computation(without_native_half) -> None:
    torch.manual_seed(2)
    fmt = make_format([(96, 64), (96, 64), (64, 96)], torch.bfloat16)
    buffer = torch.empty(fmt.nbytes, dtype=torch.uint8)
    fmt.pack(*(torch.randn(shape).bfloat16() for shape in fmt.shapes), buffer)
    views = fmt.views(buffer)
    x = torch.randn(32, 64).bfloat16()

    def glu(gate, up):
        return F.silu(gate) * up

    got = fmt.forward(views, x, glu).float()
    gate_up, down = (view.float() for view in views)
    gate, up = (x.float() @ gate_up.t()).to(torch.bfloat16).float().chunk(2, dim=-1)
    expected = glu(gate, up).to(torch.bfloat16).float() @ down.t()
    assert (got - expected).abs().max() <= 0.01 * expected.abs().max()  # bf16 roundings of the same sums


def test_the_check_names_this_cpus_native_support_and_leaves_fp32_alone() -> None:
    assert module.slow_half_matmul(torch.float32) is False
    assert module.slow_half_matmul(torch.bfloat16) == (not torch.ops.mkldnn._is_mkldnn_bf16_supported())
