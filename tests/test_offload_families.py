"""The newer families, offloaded: exact against transformers, with their own routing for prefetch guesses,
from checkpoints in their original and fused layouts, and impossible configs refused before building."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch
from engine_checks import TOLERANCE, assert_same_generation, generate, logits, record_routing, reference_lru
from offload_models import (
    VOCAB,
    build,
    deepseek_v2_config,
    deepseek_v3_config,
    gpt_oss_config,
    granitemoe_config,
    phimoe_config,
    prompt,
    save_fused,
    save_original,
    twin,
)

from moe_tui import fit
from moe_tui.errors import UserError
from moe_tui.offload import OffloadConfig, load_offloaded, offload_model
from moe_tui.offload.arch import find_moe

FAMILIES = {
    "deepseek_v2": deepseek_v2_config,
    "deepseek_v3": deepseek_v3_config,
    "glm4_moe": partial(deepseek_v3_config, "glm4_moe"),
    "phimoe": phimoe_config,
    "granitemoe": granitemoe_config,
    "gpt_oss": gpt_oss_config,
}


def sharpen_routers(model) -> None:
    """Larger router weights and correction biases, so that routing varies from token to token."""
    moe = find_moe(model)
    with torch.no_grad():
        for layer in moe.layers:
            layer.router.weight.normal_(0.0, 0.5)
            for name in moe.family.bias_names or ():  # gpt-oss: biases large enough to matter
                getattr(layer.experts, name).normal_(0.0, 0.1)
            if hasattr(layer.router, "e_score_correction_bias"):
                layer.router.e_score_correction_bias.normal_(0.0, 0.1)


def family_twin(name: str, seed: int = 3):
    reference, model = twin(FAMILIES[name](), seed=seed)
    sharpen_routers(reference)
    model.load_state_dict(reference.state_dict())
    return reference, model


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_is_exact_at_every_cache_size_with_and_without_prefetch(name: str) -> None:
    reference, model = family_twin(name)
    ids = prompt(batch=2, length=6)
    expected = generate(reference, ids, 5)
    experts = find_moe(model).num_experts
    om = offload_model(model, OffloadConfig(cache_size=experts, prefetch=0), progress=lambda *a: None)
    for k in range(1, experts + 1):
        for prefetch in (0, 1):
            om.set_cache_size(k)
            om.set_prefetch(prefetch)
            assert_same_generation(expected, om, ids, new_tokens=5)
    config = FAMILIES[name]()
    dense = getattr(config, "first_k_dense_replace", 0)
    assert len(om.caches) == config.num_hidden_layers - dense


@pytest.mark.parametrize("name", FAMILIES)
def test_a_left_padded_batch_matches_transformers(name: str) -> None:
    reference, model = family_twin(name, seed=4)
    om = offload_model(model, OffloadConfig(cache_size=2, prefetch=1), progress=lambda *a: None)
    ids = prompt(batch=2, length=7)
    mask = torch.ones_like(ids)
    ids[0, :3], mask[0, :3] = 0, 0
    outputs = []
    for m in (reference, om.model):
        with torch.no_grad():
            outputs.append(m.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0))
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize("name", FAMILIES)
def test_the_prefetch_guess_is_the_familys_own_selection(name: str) -> None:
    _, model = family_twin(name, seed=5)
    moe = find_moe(model)
    generator = torch.Generator().manual_seed(0)
    for layer in moe.layers:
        hidden = torch.randn(16, moe.hidden_size, generator=generator)
        _, _, selected = layer.router(hidden)
        scores = moe.family.choice(layer.router, hidden)
        for token in range(hidden.shape[0]):
            guess = set(torch.topk(scores[token], moe.top_k).indices.tolist())
            assert guess == set(selected[token].tolist())


@pytest.mark.parametrize("name", FAMILIES)
def test_live_hits_and_misses_equal_the_simulator(name: str) -> None:
    _, model = family_twin(name, seed=6)
    om = offload_model(model, OffloadConfig(cache_size=2, prefetch=0), progress=lambda *a: None)
    routing = record_routing(om)
    for seed in range(2):
        generate(om.model, prompt(batch=1, length=5, seed=seed), new_tokens=6)
    hits, misses, _ = reference_lru(routing, 2)
    assert (om.stats()["hits"], om.stats()["misses"]) == (hits, misses) and misses > 0


@pytest.mark.parametrize("name", FAMILIES)
def test_checkpoints_in_the_original_and_fused_layouts_load_exactly(name: str, tmp_path: Path) -> None:
    reference, _ = family_twin(name, seed=7)
    ids = prompt(batch=2, length=6)
    expected = logits(reference, ids)
    for writer, layout in ((save_original, "original"), (save_fused, "fused")):
        directory = writer(reference, tmp_path / layout)
        om = load_offloaded(directory, OffloadConfig(cache_size=2, prefetch=1), progress=lambda *a: None)
        assert (logits(om.model, ids) - expected).abs().max().item() <= TOLERANCE
        if layout == "original" and name == "granitemoe":
            assert om.load_info["layout"] == "original-fused"  # input_linear / output_linear


@pytest.mark.parametrize(
    ("name", "changes", "message"),
    [
        ("deepseek_v3", {"num_experts_per_tok": 9}, "must be between 1 and the 8 experts"),
        ("deepseek_v3", {"n_group": 0}, "n_group must be a whole number of groups >= 1"),
        ("deepseek_v3", {"n_group": 3}, "n_group 3 does not divide the 8 experts"),
        ("deepseek_v3", {"topk_group": 5}, "topk_group 5 must be between 1 and n_group 4"),
        ("deepseek_v2", {"topk_group": 0}, "topk_group 0 must be between 1 and n_group 4"),
        ("glm4_moe", {"n_group": 8}, "fewer than 2 experts a group"),
        ("phimoe", {"num_experts_per_tok": 0}, "must be between 1 and the 4 experts"),
        ("granitemoe", {"num_experts_per_tok": 5}, "must be between 1 and the 4 experts"),
    ],
)
def test_impossible_configs_are_refused_before_anything_is_built(
    name: str, changes: dict, message: str, tmp_path: Path
) -> None:
    data = FAMILIES[name]().to_dict()
    data.update(changes)
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match=message):
        load_offloaded(tmp_path, OffloadConfig())


def test_vocab_is_shared_with_the_other_engine_tests() -> None:
    assert build(phimoe_config()).config.vocab_size == VOCAB


def test_shared_experts_are_named_in_the_trace_header_apart_from_the_routed_ones() -> None:
    from offload_models import qwen2_moe_config

    for config, shared in ((deepseek_v3_config(), 1), (qwen2_moe_config(), 1), (phimoe_config(), 0)):
        om = offload_model(build(config), OffloadConfig(cache_size=2), progress=lambda *a: None)
        assert om.snapshot().header.shared_experts == shared


def test_a_gpt_oss_checkpoint_with_mxfp4_experts_loads_dequantized(tmp_path: Path) -> None:
    # The published layout: each layer's experts as FP4 pairs (``*_blocks``) and power-of-two exponents
    # (``*_scales``); the reference model holds transformers' own dequantization of the same bytes.
    from safetensors.torch import save_file
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    reference, _ = family_twin("gpt_oss", seed=8)
    config = reference.config
    generator = torch.Generator().manual_seed(0)
    state = {key: value.detach().clone() for key, value in reference.state_dict().items()}
    e, h, i = config.num_local_experts, config.hidden_size, config.intermediate_size
    for layer in range(config.num_hidden_layers):
        base = f"model.layers.{layer}.mlp.experts"
        for name, rows, cols in (("gate_up_proj", 2 * i, h), ("down_proj", h, i)):
            blocks = torch.randint(0, 256, (e, rows, cols // 32, 16), dtype=torch.uint8, generator=generator)
            scales = torch.randint(122, 127, (e, rows, cols // 32), dtype=torch.uint8, generator=generator)
            weights = convert_moe_packed_tensors(blocks, scales, dtype=torch.bfloat16).float()
            with torch.no_grad():
                getattr(reference.model.layers[layer].mlp.experts, name).copy_(weights)
            del state[f"{base}.{name}"]
            state[f"{base}.{name}_blocks"], state[f"{base}.{name}_scales"] = blocks, scales
    directory = tmp_path / "gpt-oss-mxfp4"
    directory.mkdir()
    config_data = config.to_dict()
    config_data["quantization_config"] = {
        "quant_method": "mxfp4",
        "modules_to_not_convert": ["model.layers.*.self_attn"],
    }
    (directory / "config.json").write_text(json.dumps(config_data))
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))
    om = load_offloaded(directory, OffloadConfig(cache_size=2, prefetch=1), progress=lambda *a: None)
    ids = prompt(batch=2, length=6)
    assert (logits(om.model, ids) - logits(reference, ids)).abs().max().item() <= TOLERANCE
    assert om.load_info["layout"] == "fused"

    del state["model.layers.1.mlp.experts.down_proj_scales"]
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))
    with pytest.raises(UserError, match=r"the MXFP4 scales of model\.layers\.1\.mlp\.experts\.down_proj_blocks"):
        load_offloaded(directory, OffloadConfig(cache_size=2), progress=lambda *a: None)


def test_the_fit_check_counts_gpt_oss_eager_attention_scores() -> None:
    _, model = family_twin("gpt_oss")
    assert model.config._attn_implementation == "eager"  # its attention sinks have no fused kernel
    costs = fit.TokenCosts.of(model.config, 4, model.config.intermediate_size)
    heads = model.config.num_attention_heads
    assert costs.score_bytes_per_pair == heads * (3 * 4 + 4)  # three float32 copies and the float32 softmax
    om = offload_model(model, OffloadConfig(cache_size=2, context=64), progress=lambda *a: None)
    chunk_scores = 64 * 64 * costs.score_bytes_per_pair
    appended = fit.KV_BLOCK * costs.kv_layer_bytes_per_token  # a layer's KV (one block) while it is copied
    expected = 64 * costs.activation_bytes_per_token + chunk_scores + appended + costs.logits_bytes
    assert om.conversation.activations == expected


def test_gpt_oss_runs_in_every_expert_format_and_more_bits_come_closer() -> None:
    reference, _ = family_twin("gpt_oss", seed=9)
    ids = prompt(batch=2, length=6)
    expected = logits(reference, ids)
    errors = {}
    for bits in (8, 4, 2):
        _, model = family_twin("gpt_oss", seed=9)
        om = offload_model(
            model, OffloadConfig(cache_size=2, expert_bits=bits, group_size=16), progress=lambda *a: None
        )
        errors[bits] = (logits(om.model, ids) - expected).abs().max().item()
        om.set_miss("host")  # computed on the host from the store: the same numbers
        assert (logits(om.model, ids) - expected).abs().max().item() == pytest.approx(errors[bits], abs=1e-6)
    assert errors[8] < errors[4] < errors[2]
