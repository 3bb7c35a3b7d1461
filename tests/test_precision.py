"""The byte formulas against real HQQ quantization and plain dtypes."""

import pytest
import torch
from hqq.core.quantize import Quantizer

from moe_tui.precision import (
    format_bytes,
    format_count,
    hqq_meta_bytes,
    hqq_packed_bytes,
    matrix_bytes,
    precision_for_bits,
    tensors_bytes,
)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize(("shape", "group_size"), [((96, 64), 64), ((40, 128), 32), ((384, 192), 64)])
def test_hqq_packed_size_matches_real_quantization(bits, shape, group_size):
    weight = torch.randn(shape)
    packed, meta = Quantizer.quantize(
        weight, nbits=bits, group_size=group_size, axis=1, compute_dtype=torch.float16, device="cpu"
    )
    assert packed.numel() * packed.element_size() == hqq_packed_bytes(weight.numel(), bits, group_size)
    # scale and zero are stored as 2-byte floats, one of each per group
    assert 2 * meta["scale"].numel() * 2 == hqq_meta_bytes(weight.numel(), group_size)


def test_float_and_int8_sizes():
    assert matrix_bytes((10, 20), "fp32") == 800
    assert matrix_bytes((10, 20), "bf16") == 400
    assert matrix_bytes((10, 20), "int8") == 200 + 10 * 2
    assert matrix_bytes((64, 64), "hqq4") == 64 * 64 // 2 + 4 * 64
    assert tensors_bytes([(10, 20), (20, 10)], "fp16") == 800


def test_bad_precisions_and_bits_are_named():
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        matrix_bytes((2, 2), "fp8")
    with pytest.raises(ValueError, match="unsupported bit width 5"):
        precision_for_bits(5)
    assert precision_for_bits(None, "fp32") == "fp32"
    assert precision_for_bits(3) == "hqq3"


def test_human_readable_formats():
    assert format_bytes(12) == "12 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(94 * 1024**3) == "94.0 GiB"
    assert format_count(46_702_792_704) == "46.70 B"
    assert format_count(512) == "512"
