"""Expert formats: each fused kernel computes what its own dequantized weights give, and HQQ's weights at 4 bits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from engine_checks import hqq_dequantized
from offload_models import build, mixtral_config, prompt

from moe_tui.offload import OffloadConfig, offload_model
from moe_tui.offload.formats import (
    DenseFormat,
    HqqFormat,
    Int2Format,
    Int3Format,
    Int4Format,
    Int8Format,
    make_format,
)
from moe_tui.offload.formats.int2 import chunk_rows
from moe_tui.offload.formats.int4 import cpu_block_rows

CUDA = pytest.param(
    "cuda",
    marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")],
)
SHAPES = [(128, 256), (128, 256), (256, 128)]  # (I, H): every kernel's tiling divides them


def packed(fmt, device: str, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Random weights and their buffer in ``fmt`` on ``device``."""
    torch.manual_seed(seed)
    weights = [torch.randn(s) * 0.1 for s in fmt.shapes]
    buffer = torch.zeros(fmt.nbytes, dtype=torch.uint8)
    fmt.pack(*weights, buffer)
    return weights, buffer.to(device)


def reference_forward(fmt, buffer: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Dequantize, then two ordinary matmuls in the compute dtype."""
    gate_up, down = fmt.dequantize(buffer)
    gate, up = F.linear(x, gate_up).chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, down)


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.float() - expected.float()).abs().max() / expected.float().abs().max()).item()


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize(("bits", "dtype", "name"), [(4, torch.bfloat16, "int4"), (8, torch.bfloat16, "int8")])
def test_fused_kernel_equals_dequantize_then_matmul(device: str, bits: int, dtype: torch.dtype, name: str) -> None:
    fmt = make_format(SHAPES, dtype, bits, 64, device)
    if device == "cuda" and not fmt.fused:
        pytest.skip(f"no fused {bits}-bit kernel for {dtype} on this GPU")
    assert (fmt.name, fmt.fused, fmt.layout in ("any", device)) == (name, True, True)
    _, buffer = packed(fmt, device)
    for tokens in (1, 5):
        x = torch.randn(tokens, 256, dtype=dtype, device=device)
        got = fmt.forward(fmt.views(buffer), x, lambda gate, up: F.silu(gate) * up)
        expected = reference_forward(fmt, buffer, x)
        assert got.dtype == dtype and got.shape == (tokens, 256)
        tolerance = 2e-2  # bf16 rounding, over two matmuls
        assert relative_error(got, expected) < tolerance


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_int4_weights_are_hqqs_four_bit_weights(device: str) -> None:
    fmt = make_format(SHAPES, torch.bfloat16, 4, 64, device)
    assert isinstance(fmt, Int4Format)
    weights, buffer = packed(fmt, device)
    unfused = HqqFormat(SHAPES, torch.bfloat16, 4, 64)
    gate_up, down = fmt.dequantize(buffer)
    expected_gate_up = hqq_dequantized(torch.cat(weights[:2]), 4, 64, unfused)
    expected_down = hqq_dequantized(weights[2], 4, 64, unfused)
    # (q - 8) s + (8 - z) s equals (q - z) s up to one rounding of the offset to bf16
    assert relative_error(gate_up.cpu(), expected_gate_up) < 1e-2
    assert relative_error(down.cpu(), expected_down) < 1e-2
    assert (down.cpu().float() - weights[2]).abs().mean() < 0.012  # 4-bit error on weights of std 0.1


@pytest.mark.parametrize(("bits", "cls", "error"), [(2, Int2Format, 0.05), (3, Int3Format, 0.025)])
@pytest.mark.parametrize(("budget", "chunks"), [(8192, 4), (16384, 2), (1 << 21, 1)])
def test_int2_and_int3_weights_are_hqqs_and_the_int4_kernel_computes_them(
    monkeypatch, bits, cls, error, budget, chunks
):
    """2- and 3-bit values in the int4 kernel's layout, squeezed (two bytes stored in one; three in four): the
    same weights as HQQ's own layout at that width (up to the offset's rounding to bf16), in the same bytes at
    2 bits and 3/3.2 of them at 3, and the chunked kernel computes them."""
    monkeypatch.setattr("moe_tui.offload.formats.int2.CHUNK_BYTES", budget)  # gate-up in chunks of 64, 128, 256 rows
    shapes = SHAPES
    fmt = make_format(shapes, torch.bfloat16, bits, 64, "cpu")
    assert fmt.views(torch.zeros(fmt.nbytes, dtype=torch.uint8))[0].shape[0] == chunks
    assert isinstance(fmt, cls) and fmt.label() == f"int{bits} (unfused)" and fmt.precision == f"hqq{bits}"
    unfused = HqqFormat(shapes, torch.bfloat16, bits, 64)
    two_bits = HqqFormat(shapes, torch.bfloat16, 2, 64).nbytes  # HQQ's 2-bit layout with 2-byte metadata
    assert fmt.nbytes == two_bits + (bits - 2) * (256 * 256 + 256 * 128) // 8, "its bits per weight, HQQ's metadata"
    assert fmt.nbytes <= unfused.nbytes  # HQQ's 3-bit layout packs ten values in 32 bits
    weights, buffer = packed(fmt, "cpu")
    gate_up, down = fmt.dequantize(buffer)
    expected_gate_up = hqq_dequantized(torch.cat(weights[:2]), bits, 64, unfused)
    expected_down = hqq_dequantized(weights[2], bits, 64, unfused)
    # (q - 8) s + (8 - z) s equals (q - z) s up to one rounding of the offset (about 6.5 s here) to bf16
    assert relative_error(gate_up, expected_gate_up) < 2e-2 and relative_error(down, expected_down) < 2e-2
    for tokens in (1, 5):
        x = torch.randn(tokens, 256, dtype=torch.bfloat16)
        got = fmt.forward(fmt.views(buffer), x, lambda gate, up: F.silu(gate) * up)
        assert relative_error(got, reference_forward(fmt, buffer, x)) < 2e-2
    assert (down.float() - weights[2]).abs().mean() < error  # the width's error on weights of std 0.1


def test_int2_chunks_are_whole_kernel_blocks_that_fit_the_workspace() -> None:
    assert chunk_rows(28672, 4096, 32) == 1024 and chunk_rows(4096, 14336, 64) == 256  # Mixtral: 2 MiB expanded
    assert chunk_rows(256, 256, 64) == 256 and chunk_rows(64, 1 << 20, 64) == 64  # at least one block
    assert chunk_rows(23 * 64, 4096, 64) == 64, "the largest whole-block chunk that divides N and fits"
    fmt = Int2Format([(14336, 4096), (14336, 4096), (4096, 14336)], torch.bfloat16, 64)
    assert fmt.workspace_bytes == 2 << 20
    three = Int3Format([(14336, 4096), (14336, 4096), (4096, 14336)], torch.bfloat16, 64)
    assert three.workspace_bytes == (2 << 20) + (2 << 20) // 4, "and a quarter for the last quarter's parts"
    assert not Int2Format.supports(SHAPES, torch.bfloat16, 64, torch.device("cuda")), "CPU layout only"
    odd = [(96, 256), (96, 256), (256, 96)]  # the int4 kernel takes it; 96 rows are not whole 64-row blocks
    assert Int4Format.supports(odd, torch.bfloat16, 32, torch.device("cpu"))
    assert make_format(odd, torch.bfloat16, 2, 32, "cpu").label() == "hqq2 (unfused)"


@pytest.mark.parametrize(("cls", "used"), [(Int2Format, 0x33), (Int3Format, 0x77)])
def test_squeezed_chunks_expand_to_the_very_same_kernel_bytes(cls, used) -> None:
    """Any kernel bytes whose nibbles fit the width come back bit for bit, in the stored share of the bytes."""
    torch.manual_seed(0)
    chunks = torch.randint(0, 256, (3, 1024), dtype=torch.uint8) & used
    stored = cls._squeeze(chunks)
    numerator, denominator = cls.STORED
    assert stored.shape == (3, 1024 * numerator // denominator)
    for chunk, squeezed in zip(chunks, stored, strict=True):
        workspace = torch.full((1024 + 256,), 0xFF, dtype=torch.uint8)  # stale bytes must not leak through
        cls._expand(squeezed.contiguous(), workspace)
        assert torch.equal(workspace[:1024], chunk)


def test_a_store_saved_in_the_first_int3_packing_is_not_reused() -> None:
    three = Int3Format(SHAPES, torch.bfloat16, 64)
    assert three.describe()["packing"] == "spread-free-bits"  # part of the quantized-store cache key


def test_cpu_kernel_stores_record_the_kernels_row_blocks() -> None:
    """The CPU int4 kernel packs rows in blocks of four float vectors (32 with AVX2, 64 with AVX-512): a store
    saved on one machine must not be read on another whose blocks differ, so the block size is in its key."""
    rows = cpu_block_rows()
    assert rows in (16, 32, 64)  # four float vectors: NEON, AVX2, AVX-512
    values = torch.arange(64 * 64, dtype=torch.int32).reshape(64, 64) % 16
    whole = torch.ops.aten._convert_weight_to_int4pack_for_cpu(values, 2)
    alone = torch.ops.aten._convert_weight_to_int4pack_for_cpu(values[:rows].contiguous(), 2)
    assert torch.equal(whole[:rows], alone)
    for bits in (2, 4):
        assert make_format(SHAPES, torch.bfloat16, bits, 64, "cpu").describe()["block_rows"] == rows
    assert "block_rows" not in Int4Format(SHAPES, torch.bfloat16, 64, torch.device("cuda")).describe()


def test_int8_is_symmetric_per_channel_and_close() -> None:
    fmt = make_format(SHAPES, torch.bfloat16, 8, 64, "cpu")
    weights, buffer = packed(fmt, "cpu")
    _, down = fmt.dequantize(buffer)
    assert relative_error(down, weights[2]) < 0.01
    values = fmt.views(buffer)[1]
    assert values.dtype == torch.int8 and values.abs().amax(dim=1).eq(127).all()


def test_int8_on_cuda_converts_its_values_in_a_workspace_and_computes_what_the_kernel_does() -> None:
    """On CUDA the int8 kernel took 12x bf16's time: the values are converted to the compute dtype instead."""
    intermediate, hidden = SHAPES[0]
    on_cuda = Int8Format(SHAPES, torch.bfloat16, torch.device("cuda"))  # built without a GPU: its sizes only
    assert on_cuda.workspace_bytes == 2 * intermediate * hidden * 2  # gate-up in bf16; down reuses it
    fmt = make_format(SHAPES, torch.bfloat16, 8, 64, "cpu")
    assert fmt.workspace_bytes == 0  # the CPU's kernel reads the int8 values directly
    _, buffer = packed(fmt, "cpu")
    before = buffer.clone()
    views = fmt.views(buffer)
    glu = lambda gate, up: F.silu(gate) * up  # noqa: E731
    for tokens in (1, 5):
        x = torch.randn(tokens, hidden, dtype=torch.bfloat16)
        converted = fmt.forward_converted(views, x, glu)
        assert converted.shape == (tokens, hidden) and converted.dtype == torch.bfloat16
        assert relative_error(converted, fmt.forward(views, x, glu)) < 2e-2
        assert relative_error(converted, reference_forward(fmt, buffer, x)) < 2e-2
    assert torch.equal(buffer, before)  # the packed expert is read, never converted in place


def fused_bits(shapes: list[tuple[int, int]], dtype: torch.dtype, device: str, group_size: int) -> set[int]:
    """The expert bit widths that get a fused kernel for these shapes, dtype and device."""
    return {bits for bits in (2, 3, 4, 8) if make_format(shapes, dtype, bits, group_size, device).fused}


def test_formats_without_a_kernel_fall_back_to_unfused_hqq_and_say_so() -> None:
    assert fused_bits(SHAPES, torch.bfloat16, "cpu", 64) == {4, 8}
    # on a CPU the kernels are fast in bf16 only (fp16 and fp32 would be slower than dequantizing)
    assert fused_bits(SHAPES, torch.float32, "cpu", 64) == fused_bits(SHAPES, torch.float16, "cpu", 64) == set()
    assert 4 not in fused_bits(SHAPES, torch.bfloat16, "cpu", 16)  # nor a group size below 32
    odd = [(40, 48), (40, 48), (48, 40)]
    assert 4 not in fused_bits(odd, torch.bfloat16, "cpu", 16)
    three = make_format(SHAPES, torch.bfloat16, 3, 64, "cpu", fused=False)
    assert (three.name, three.fused, three.label()) == ("hqq3", False, "hqq3 (unfused)")
    assert three.workspace_bytes > 0 and make_format(SHAPES, torch.bfloat16, 4, 64, "cpu").workspace_bytes == 0
    assert make_format(SHAPES, torch.bfloat16, 3, 64, "cpu").label() == "int3 (unfused)"
    assert make_format(SHAPES, torch.bfloat16, 3, 64, "cuda").label() == "hqq3 (unfused)", "int3 is CPU only"
    assert make_format(SHAPES, torch.bfloat16, 2, 64, "cpu", fused=False).label() == "hqq2 (unfused)"
    assert make_format(SHAPES, torch.float32, 2, 64, "cpu").label() == "hqq2 (unfused)"  # no bf16 kernel
    assert isinstance(make_format(SHAPES, torch.bfloat16, None), DenseFormat)


def test_packed_layout_is_recorded_per_device() -> None:
    cpu = make_format(SHAPES, torch.bfloat16, 4, 64, "cpu")
    cuda = Int4Format(SHAPES, torch.bfloat16, 64, torch.device("cuda"))  # built without a GPU: layout only
    assert cpu.describe()["layout"] == "cpu" and cuda.describe()["layout"] == "cuda"
    assert cpu.nbytes == cuda.nbytes
    assert Int8Format(SHAPES, torch.bfloat16, torch.device("cpu")).describe()["layout"] == "any"


def dequantized_reference(config, om, seed: int):
    """transformers' own model with every expert replaced by the weights the offloaded format computes with."""
    reference = build(config, seed=seed).to(torch.bfloat16)
    with torch.no_grad():
        for moe_layer in om.moe.layers:
            experts = reference.model.layers[moe_layer.decoder_index].mlp.experts
            for expert in range(om.moe.num_experts):
                gate_up, down = om.format.dequantize(om.store.row(moe_layer.index, expert))
                experts.gate_up_proj[expert].copy_(gate_up)
                experts.down_proj[expert].copy_(down)
    return reference


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize(("bits", "name"), [(None, "bf16"), (4, "int4"), (8, "int8"), (2, "int2"), (3, "int3")])
def test_every_format_matches_transformers_with_the_formats_weights(device: str, bits, name: str) -> None:
    config = mixtral_config(experts=4, hidden=128, intermediate=128, layers=3)  # CUDA's int4 kernel: 128-multiples
    settings = OffloadConfig(cache_size=2, prefetch=1, expert_bits=bits, group_size=32, dtype="bf16", device=device)
    om = offload_model(build(config, seed=31), settings)
    if device == "cuda" and bits == 8 and not om.format.fused:
        name = "hqq8"
    if device == "cuda" and bits in (2, 3):
        name = f"hqq{bits}"  # the int2 and int3 expansions are laid out for the CPU kernel
    assert om.format.name == name
    reference = dequantized_reference(config, om, seed=31).to(device)
    ids = prompt(batch=3, length=7, seed=2).to(device)
    with torch.no_grad():
        expected = reference(ids).logits.float()
        got = om.model(ids).logits.float()
    # bf16 activations through three layers; a near-tie in a router can flip one position's experts
    per_position = (got - expected).abs().amax(-1) / expected.abs().amax()
    assert (per_position < 2e-2).float().mean() >= 0.9
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.9


def test_a_float32_model_quantized_without_its_kernel_says_which_dtype_would_use_it() -> None:
    """The demo is float32: at 4 bits it got HQQ's unfused layout, slower than the int4 kernel, silently."""
    config = mixtral_config(experts=4, hidden=128, intermediate=128, layers=2)
    om = offload_model(build(config, seed=3), OffloadConfig(cache_size=2, expert_bits=4, device="cpu"))
    assert om.format.name == "hqq4"
    notes = om.load_info["notes"]
    assert len(notes) == 1 and "the faster int4 format needs bfloat16 compute" in notes[0]
    assert notes[0].endswith("this model computes in float32; --dtype bf16 would use it")
    bf16 = offload_model(build(config, seed=3), OffloadConfig(cache_size=2, expert_bits=4, dtype="bf16", device="cpu"))
    assert bf16.format.name == "int4" and bf16.load_info["notes"] == []
    unfused = OffloadConfig(cache_size=2, expert_bits=4, fused=False, device="cpu")  # asked for: nothing to say
    assert offload_model(build(config, seed=3), unfused).load_info["notes"] == []
