"""The byte formulas against real HQQ quantization (hqq.core.quantize.Quantizer, axis=1) of small matrices."""

from __future__ import annotations

import math

import pytest
import torch
from hqq.core.quantize import Quantizer
from transformers import AutoConfig

from moe_tui import precision
from moe_tui.params import expert_weight_shapes, routed_expert_bytes


def hqq_sizes(weight: torch.Tensor, bits: int, group_size: int) -> tuple[int, int]:
    """(packed bytes, number of scale + zero values) of ``weight`` quantized by HQQ along axis 1."""
    packed, meta = Quantizer.quantize(
        weight, nbits=bits, group_size=group_size, axis=1, compute_dtype=torch.float16, device="cpu"
    )
    return packed.numel() * packed.element_size(), meta["scale"].numel() + meta["zero"].numel()


@pytest.mark.parametrize("shape", [(64, 128), (96, 200), (80, 48)], ids=str)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [32, 64])
def test_packed_and_meta_sizes_match_real_hqq(shape: tuple[int, int], bits: int, group_size: int):
    torch.manual_seed(0)
    weight = torch.randn(*shape, dtype=torch.float16)
    packed, meta_values = hqq_sizes(weight, bits, group_size)
    numel = math.prod(shape)
    assert packed == precision.hqq_packed_bytes(numel, bits, group_size)
    assert meta_values == 2 * math.ceil(numel / group_size)
    # scale and zero are stored as 2-byte floats
    assert meta_values * precision.META_BYTES == precision.hqq_meta_bytes(numel, group_size)
    assert precision.matrix_bytes(shape, f"hqq{bits}", group_size) == packed + meta_values * precision.META_BYTES


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_routed_expert_bytes_equal_quantizing_a_real_expert(bits: int):
    """Quantize the gate/up/down matrices of one expert of a small Mixtral with HQQ and add up what it stores."""
    config = AutoConfig.for_model(
        "mixtral",
        hidden_size=96,
        intermediate_size=160,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        vocab_size=50,
    )
    torch.manual_seed(1)
    stored = 0
    for shape in expert_weight_shapes(config):
        packed, meta_values = hqq_sizes(torch.randn(*shape, dtype=torch.float16), bits, 64)
        stored += packed + meta_values * precision.META_BYTES
    assert stored == routed_expert_bytes(config, f"hqq{bits}", 64)
