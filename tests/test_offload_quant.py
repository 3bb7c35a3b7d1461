"""HQQ-quantized experts and attention: packing matches HQQ, sizes match the parameter breakdown, output stays close."""

from __future__ import annotations

import pytest
import torch
from engine_checks import hqq_dequantized
from offload_models import build, mixtral_config, prompt, twin

from moe_tui import precision
from moe_tui.offload import OffloadConfig, offload_model
from moe_tui.offload import quant as offload_quant
from moe_tui.offload.formats import HqqFormat, make_format
from moe_tui.offload.quant import pack_rows

CUDA = pytest.param(
    "cuda",
    marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")],
)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_unpacking_a_slot_gives_hqqs_dequantized_weights(bits: int, dtype: torch.dtype, device: str) -> None:
    # 7 x 24 = 168 = 21 groups of 8: the group count is a multiple of neither 2, 4 nor 10, so rows are padded
    intermediate, hidden, group = 7, 24, 8
    torch.manual_seed(bits)
    fmt = HqqFormat([(intermediate, hidden), (intermediate, hidden), (hidden, intermediate)], dtype, bits, group)
    weights = [torch.randn(s) for s in fmt.shapes]
    buffer = torch.empty(fmt.nbytes, dtype=torch.uint8)
    fmt.pack(*weights, buffer)
    gate_up, down = fmt.dequantize(buffer.to(device))
    expected = [hqq_dequantized(w, bits, group, fmt) for w in weights]
    assert torch.equal(gate_up.cpu(), torch.cat(expected[:2]))
    assert torch.equal(down.cpu(), expected[2])
    error = (down.cpu().float() - weights[2]).abs().mean().item()
    assert error < {2: 0.5, 3: 0.25, 4: 0.12, 8: 0.02}[bits]


def test_packing_follows_hqqs_bit_order() -> None:
    from hqq.core.bitpack import BitPack

    values = torch.randint(0, 16, (20, 8), dtype=torch.uint8)
    assert torch.equal(pack_rows(values, 4), BitPack.pack_4bit_u8(values))
    assert torch.equal(pack_rows(values % 4, 2), BitPack.pack_2bit_u8(values % 4))
    assert torch.equal(pack_rows(values % 8, 3), BitPack.pack_3bit_32(values % 8))


@pytest.mark.parametrize("group_size", [32, 64])
def test_expert_buffer_size_equals_the_parameter_breakdown(group_size: int) -> None:
    from transformers import MixtralConfig

    from moe_tui.params import expert_weight_shapes, routed_expert_bytes

    config = MixtralConfig()  # Mixtral-8x7B's real shapes; only the layout is built, no weights
    shapes = expert_weight_shapes(config)
    assert shapes == [(14336, 4096), (14336, 4096), (4096, 14336)]  # the engine's packing order
    for precision_name in ("hqq2", "hqq3", "hqq4", "hqq8", "fp32", "bf16", "fp16"):
        bits = precision.HQQ_BITS.get(precision_name)
        dtype = {"fp32": torch.float32, "fp16": torch.float16}.get(precision_name, torch.bfloat16)
        for fused in (False, True):  # the fused int4 layout has HQQ's 4-bit size, int2's HQQ's 2-bit size
            fmt = make_format(shapes, dtype, bits, group_size, "cpu", fused=fused and bits != 8)
            assert fmt.precision == precision_name
            if fmt.name == "int3":  # exactly 3 bits a weight, where HQQ's layout packs ten in 32 bits
                weights = 3 * 14336 * 4096
                assert fmt.nbytes == routed_expert_bytes(config, "hqq2", group_size) + weights // 8
                assert fmt.nbytes < routed_expert_bytes(config, precision_name, group_size)
                continue
            assert fmt.nbytes == routed_expert_bytes(config, precision_name, group_size)
    int8 = make_format(shapes, torch.bfloat16, 8, group_size, "cpu")
    assert (int8.name, int8.fused) == ("int8", True)
    assert int8.nbytes == routed_expert_bytes(config, "int8", group_size)


def test_store_rows_and_slots_have_the_predicted_size() -> None:
    config = mixtral_config(experts=4, hidden=48, intermediate=40)
    om = offload_model(build(config), OffloadConfig(cache_size=2, expert_bits=3, group_size=16))
    expected = precision.tensors_bytes([(40, 48), (40, 48), (48, 40)], "hqq3", 16)
    assert om.format.nbytes == expected
    assert om.store.row(0, 0).numel() == expected
    assert all(tuple(cache.slots.shape) == (2, expected) for cache in om.caches)
    assert om.memory()["slow_tier_bytes"] == 3 * 4 * expected


def test_four_bit_experts_keep_greedy_generation_close() -> None:
    """Greedy next-token agreement with the fp32 model along its own greedy continuations.

    Measured on this random-weight model (16 prompts x 16 tokens): 0.89 at 4 bits (0.80 at 3, 0.52 at 2)
    with group size 16. Random weights are a hard case (flat logits, no structure for HQQ to keep).
    """
    config = mixtral_config(experts=4, hidden=64, intermediate=64, layers=3)
    reference, model = twin(config, seed=21)
    om = offload_model(model, OffloadConfig(cache_size=2, prefetch=1, expert_bits=4, group_size=16))
    ids = prompt(batch=16, length=6, seed=5)
    with torch.no_grad():
        sequences = reference.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=0)
        expected = reference(sequences).logits[:, 5:-1]
        got = om.model(sequences).logits[:, 5:-1]
    agreement = (expected.argmax(-1) == got.argmax(-1)).float().mean().item()
    assert agreement >= 0.85
    cosine = torch.nn.functional.cosine_similarity(expected.flatten(), got.flatten(), dim=0)
    assert cosine > 0.99


def test_quantized_attention_uses_hqq_linear_and_stays_close() -> None:
    from hqq.core.quantize import HQQLinear

    config = mixtral_config(hidden=64, intermediate=64)
    reference, model = twin(config, seed=22)
    om = offload_model(model, OffloadConfig(cache_size=4, attn_bits=8, group_size=16))
    attention = om.model.model.layers[0].self_attn
    assert all(isinstance(getattr(attention, n), HQQLinear) for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
    ids = prompt(batch=2, length=6)
    with torch.no_grad():
        difference = (reference(ids).logits - om.model(ids).logits).abs().max().item()
    assert 0 < difference < 0.05


def test_saved_quantized_store_is_reused_without_quantizing(tmp_path, monkeypatch) -> None:
    config = mixtral_config()
    settings = {"cache_size": 2, "expert_bits": 4, "group_size": 16, "quant_cache_dir": tmp_path / "q"}
    saving: list[tuple[str, int, int]] = []
    first = offload_model(build(config, seed=23), OffloadConfig(**settings), progress=lambda *a: saving.append(a))
    assert first.load_info["store"] == "built"
    # the bar of each stage that moves bytes follows it layer by layer (a real store is tens of GiB)
    assert [a for a in saving if a[0] == "saving expert store"] == [("saving expert store", d, 3) for d in range(4)]

    def refuse(*args, **kwargs):
        raise AssertionError("quantized again although the store was saved")

    monkeypatch.setattr(offload_quant, "quantize_matrix", refuse)
    loading: list[tuple[str, int, int]] = []
    second = offload_model(build(config, seed=23), OffloadConfig(**settings), progress=lambda *a: loading.append(a))
    assert second.load_info["store"] == "reused"
    stage = "loading saved expert store"
    assert [a for a in loading if a[0] == stage] == [(stage, d, 3) for d in range(4)]
    assert second.load_info["store_dir"] == first.load_info["store_dir"]
    for layer in range(3):
        for expert in range(4):
            assert torch.equal(second.store.row(layer, expert), first.store.row(layer, expert))
    ids = prompt(batch=1, length=5)
    with torch.no_grad():
        assert torch.equal(first.model(ids).logits, second.model(ids).logits)
    with pytest.raises(AssertionError, match="quantized again"):  # other weights: another store
        offload_model(build(config, seed=24), OffloadConfig(**settings))


def test_dequantizing_reuses_one_workspace() -> None:
    fmt = HqqFormat([(8, 16), (8, 16), (16, 8)], torch.float32, 4, 16)
    buffers = [torch.empty(fmt.nbytes, dtype=torch.uint8) for _ in range(2)]
    for index, buffer in enumerate(buffers):
        torch.manual_seed(index)
        fmt.pack(*(torch.randn(s) for s in fmt.shapes), buffer)
    pointers = {fmt.dequantize(buffer)[0].data_ptr() for buffer in buffers}
    assert len(pointers) == 1
    allocated = sum(t.numel() * t.element_size() for t in fmt._workspace[torch.device("cpu")].values())
    assert allocated == fmt.workspace_bytes > 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_quantized_experts_and_attention_on_cuda_stay_close() -> None:
    config = mixtral_config(experts=4, hidden=64, intermediate=64, layers=3)
    reference, model = twin(config, seed=21)
    settings = OffloadConfig(cache_size=2, prefetch=1, expert_bits=4, attn_bits=8, group_size=16, device="cuda")
    om = offload_model(model, settings)
    ids = prompt(batch=16, length=6, seed=5)
    with torch.no_grad():
        sequences = reference.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=0)
        expected = reference(sequences).logits[:, 5:-1]
        got = om.model(sequences.cuda()).logits[:, 5:-1].cpu()
    assert (expected.argmax(-1) == got.argmax(-1)).float().mean().item() >= 0.85


def test_headless_progress_draws_a_bar_per_stage_with_time_left_on_a_terminal_only() -> None:
    import io

    from moe_tui.offload.build import TerminalProgress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    report = TerminalProgress(screen)
    report("reading checkpoint", 0, 1)
    report("reading checkpoint", 1, 1)
    for done in range(5):
        report("quantizing experts to 4 bits", done, 4)
    text = screen.getvalue()
    assert text.count("reading checkpoint") >= 1 and "quantizing experts to 4 bits" in text
    assert "4/4" in text and "left" in text
    assert text.rstrip().endswith("\x1b[?25h")  # the cursor is given back when every stage is done
    pipe = io.StringIO()
    TerminalProgress(pipe)("quantizing experts to 4 bits", 1, 4)
    assert pipe.getvalue() == ""


def test_deferred_compilation_compiles_each_function_once_on_its_first_call_with_its_options() -> None:
    compiled: list[tuple[str, dict]] = []

    def compile_now(function, **options):
        compiled.append((function.__name__, options))
        return lambda *args, **kwargs: ("compiled", function(*args, **kwargs))

    deferred = offload_quant.compile_on_first_call(compile_now)

    @deferred()
    def double(x):
        return 2 * x

    @deferred(mode="max-autotune")
    def negate(x):
        return -x

    square = deferred(lambda x: x * x)
    assert compiled == [] and double.__name__ == "double"  # decorating compiles nothing
    assert double(3) == ("compiled", 6) and double(x=4) == ("compiled", 8)
    assert negate(1) == ("compiled", -1) and square(5) == ("compiled", 25)
    assert compiled == [("double", {}), ("negate", {"mode": "max-autotune"}), ("<lambda>", {})]


HQQ_IMPORT_CHECK = """
import sys, torch
compile_before = torch.compile
from moe_tui.offload.loader import load_offloaded
from moe_tui.offload import OffloadConfig
from moe_tui.paths import DEMO_MODEL_DIR
om = load_offloaded(DEMO_MODEL_DIR, OffloadConfig(cache_size=2), progress=lambda *report: None)
print(sorted(name for name in ("hqq.core.quantize", "transformers.cache_utils", "torch._inductor.compile_fx")
             if name in sys.modules), torch.compile is compile_before)
"""


def test_loading_a_model_imports_hqq_without_importing_torchinductor() -> None:
    """hqq's import-time torch.compile decorators imported TorchInductor: 1.8 of the demo's 8.3 s to load."""
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", HQQ_IMPORT_CHECK], capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "['hqq.core.quantize', 'transformers.cache_utils'] True"
