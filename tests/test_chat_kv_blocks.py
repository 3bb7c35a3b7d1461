"""The chat's KV cache layers that grow by blocks: the same keys, values and answers as transformers' own cache."""

from __future__ import annotations

import pytest
import torch
from offload_models import (
    build,
    deepseek_v2_config,
    deepseek_v3_config,
    gpt_oss_config,
    granitemoe_config,
    mixtral_config,
    olmoe_config,
    phimoe_config,
    qwen2_moe_config,
    qwen3_moe_config,
)
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from moe_tui import fit
from moe_tui.chat.kv import cache_bytes
from moe_tui.chat.kv_blocks import BlockKVLayer, new_cache


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 4 tokens, so that a short test crosses several of them."""
    monkeypatch.setattr(fit, "KV_BLOCK", 4)


def states(tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values for ``tokens`` positions: batch 1, 2 heads, head size 3."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, 2, tokens, 3, generator=generator), torch.randn(1, 2, tokens, 3, generator=generator)


def test_a_layer_writes_in_place_until_its_block_fills_and_holds_what_concatenation_would() -> None:
    layer, reference = BlockKVLayer(), DynamicLayer()
    buffers = []
    for step, tokens in enumerate([3, 1, 1, 6, 1]):
        keys, values = states(tokens, step)
        got = layer.update(keys, values)
        expected = reference.update(keys, values)
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
        buffers.append((layer._key_buffer.data_ptr(), layer._key_buffer.shape[-2]))
    # 3 tokens: a block of 4; the 4th fits in place; the 5th needs a second block; 11 need three; 12 still fit
    assert [capacity for _, capacity in buffers] == [4, 4, 8, 12, 12]
    assert buffers[0][0] == buffers[1][0] and buffers[3][0] == buffers[4][0]
    assert layer.get_seq_length() == reference.get_seq_length() == 12


def test_cache_bytes_counts_whole_block_buffers_and_each_storage_once() -> None:
    cache = DynamicCache()
    cache.layers = [BlockKVLayer(), DynamicLayer()]
    assert cache_bytes(None) == cache_bytes(cache) == 0  # nothing allocated yet
    for layer in cache.layers:
        layer.update(*states(5, 0))
    per_token = 2 * 2 * 3 * 4  # keys and values, 2 heads of 3 float32 each
    # the block layer's 5 tokens sit in two blocks of 4; the plain layer holds exactly 5
    assert cache_bytes(cache) == per_token * 8 + per_token * 5
    cache.layers[1].crop(-2)  # a view of the same storage: still counted once, at its full size
    assert cache_bytes(cache) == per_token * 8 + per_token * 5


def test_cropping_then_appending_overwrites_what_was_dropped() -> None:
    layer, reference = BlockKVLayer(), DynamicLayer()
    for step, tokens in enumerate([6, 1]):
        keys, values = states(tokens, step)
        layer.update(keys, values)
        reference.update(keys, values)
    layer.crop(-4)
    reference.crop(-4)
    keys, values = states(2, 9)
    got, expected = layer.update(keys, values), reference.update(keys, values)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    assert got[0].shape[-2] == 5


def test_keys_replaced_from_outside_start_new_buffers_from_them() -> None:
    layer, reference = BlockKVLayer(), DynamicLayer()
    keys, values = states(2, 0)
    layer.update(torch.cat([keys, keys + 1]), torch.cat([values, values + 1]))  # a batch of 2
    reference.update(torch.cat([keys, keys + 1]), torch.cat([values, values + 1]))
    order = torch.tensor([1, 0])
    layer.reorder_cache(order)  # beam search: new tensors, no longer views of the buffers
    reference.reorder_cache(order)
    keys, values = states(1, 1)
    got = layer.update(torch.cat([keys, keys]), torch.cat([values, values]))
    expected = reference.update(torch.cat([keys, keys]), torch.cat([values, values]))
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


FAMILIES = {
    "mixtral": mixtral_config,
    "gpt-oss": gpt_oss_config,  # eager attention with sinks; sliding-window and full layers
    "qwen2-moe": qwen2_moe_config,
    "qwen3-moe": qwen3_moe_config,
    "olmoe": olmoe_config,
    "deepseek-v2": deepseek_v2_config,
    "deepseek-v3": deepseek_v3_config,  # MLA: keys and values of different head sizes
    "phimoe": phimoe_config,
    "granitemoe": granitemoe_config,
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_generation_with_the_block_cache_matches_transformers_own_cache(family: str) -> None:
    config = FAMILIES[family]()
    model = build(config).eval()
    prompt = torch.randint(3, config.vocab_size, (1, 7), generator=torch.Generator().manual_seed(0))
    settings = {"max_new_tokens": 20, "min_new_tokens": 20, "do_sample": False, "pad_token_id": 0}
    settings |= {"return_dict_in_generate": True, "output_logits": True}
    cache = new_cache(model)
    ours = model.generate(prompt, cache=cache, **settings)
    theirs = model.generate(prompt, **settings)
    assert torch.equal(ours.sequences, theirs.sequences)
    assert all(torch.equal(a, b) for a, b in zip(ours.logits, theirs.logits, strict=True))
    # only transformers' plain layers are replaced; sliding-window and other kinds stay as they were
    plain = [type(layer) for layer in theirs.cache.layers]
    assert [type(layer) for layer in cache.layers] == [BlockKVLayer if kind is DynamicLayer else kind for kind in plain]
    full = next(layer for layer in cache.layers if isinstance(layer, BlockKVLayer))
    assert full._key_buffer.shape[-2] == 28  # 7 + 20 - 1 tokens held, in blocks of 4


def test_a_model_with_its_own_kind_of_cache_gets_none() -> None:
    class RecurrentModel:
        def _supports_default_dynamic_cache(self) -> bool:
            return False

    assert new_cache(RecurrentModel()) is None
    assert isinstance(new_cache(build(mixtral_config())), DynamicCache)


def test_the_fit_check_counts_the_kv_cache_in_whole_blocks() -> None:
    costs = fit.TokenCosts(kv_bytes_per_token=10, activation_bytes_per_token=0, logits_bytes=0)
    assert fit.fast_tier_need(0, 0, 0, costs, 9, "cpu").kv_cache == 10 * 12  # 9 tokens take 3 blocks of 4
    assert fit.fast_tier_need(0, 0, 0, costs, 8, "cpu").kv_cache == 10 * 8
