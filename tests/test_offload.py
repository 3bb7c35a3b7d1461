"""The offloading engine on small random MoE models: exact outputs, cache behaviour, prefetch, telemetry, faults."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import pytest
import torch
from engine_checks import assert_same_generation, generate, record_routing, reference_lru, steps_of
from offload_models import (
    build,
    llama_config,
    mixtral_config,
    odd_mixtral_config,
    olmoe_config,
    prompt,
    qwen2_moe_config,
    qwen3_moe_config,
    twin,
)

from moe_tui import engine_config, fit
from moe_tui.errors import UserError
from moe_tui.offload import OffloadConfig, offload_model, transfer
from moe_tui.offload import memory as offload_memory
from moe_tui.precision import format_bytes
from moe_tui.telemetry import LayerStep, read_trace

CUDA = pytest.param(
    "cuda",
    marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")],
)
DEVICES = ["cpu", CUDA]


@pytest.fixture(params=["background thread", "computing thread"])
def cpu_copies(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with CPU copies on a copy thread and on the computing thread (the engine picks by whether a
    core is free of torch's threads, so a machine would only ever test one of them)."""
    background = request.param == "background thread"
    monkeypatch.setattr(transfer, "copies_can_overlap", lambda *args: background)
    return request.param


# ----------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("device", DEVICES)
def test_logits_equal_transformers_for_every_cache_size_with_and_without_prefetch(device: str, cpu_copies: str) -> None:
    config = mixtral_config(experts=4)
    reference, model = twin(config)
    reference.to(device)
    om = offload_model(model, OffloadConfig(cache_size=4, prefetch=0, device=device))
    if device == "cpu":
        assert om.engine.mover.background == (cpu_copies == "background thread")
    ids = prompt(batch=2, length=9)
    expected = generate(reference, ids)
    for k in range(1, config.num_local_experts + 1):
        for prefetch in (0, 2):
            om.set_cache_size(k)
            om.set_prefetch(prefetch)
            assert_same_generation(expected, om, ids)
            assert om.cache_sizes == [k] * 3


def test_odd_shapes_five_experts_top3_hidden_36_exact_at_every_cache_size() -> None:
    config = odd_mixtral_config()
    ids = prompt(batch=3, length=7, seed=4)
    expected = generate(build(config, seed=3), ids)
    for k in range(1, 6):
        for prefetch in (0, 3):
            om = offload_model(build(config, seed=3), OffloadConfig(cache_size=k, prefetch=prefetch))
            assert_same_generation(expected, om, ids)


def test_batch_with_left_padding_matches_transformers() -> None:
    config = mixtral_config()
    reference, model = twin(config, seed=5)
    om = offload_model(model, OffloadConfig(cache_size=2, prefetch=1))
    ids = prompt(batch=3, length=8, seed=4)
    mask = torch.ones_like(ids)
    ids[0, :3] = 0
    mask[0, :3] = 0
    outputs = []
    for m in (reference, om.model):
        with torch.no_grad():
            outputs.append(m.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0))
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize("make_config", [qwen2_moe_config, qwen3_moe_config, olmoe_config])
def test_other_moe_families_are_exact(make_config) -> None:
    config = make_config()
    reference, model = twin(config, seed=2)
    om = offload_model(model, OffloadConfig(cache_size=2, prefetch=1))
    assert_same_generation(reference, om, prompt(batch=2, length=6))
    dense_layers = getattr(config, "mlp_only_layers", [])
    assert len(om.caches) == config.num_hidden_layers - len(dense_layers)


def test_generate_uses_the_kv_cache_and_streamers() -> None:
    from transformers.generation.streamers import BaseStreamer

    class Collect(BaseStreamer):
        def __init__(self) -> None:
            self.pieces: list[torch.Tensor] = []

        def put(self, value: torch.Tensor) -> None:
            self.pieces.append(value)

        def end(self) -> None:
            self.pieces.append(torch.tensor([-1]))

    reference, model = twin(mixtral_config(), seed=6)
    om = offload_model(model, OffloadConfig(cache_size=1, prefetch=1, trace_path=None))
    ids = prompt(batch=1, length=5)
    streamer = Collect()
    with torch.no_grad():
        tokens = om.model.generate(ids, max_new_tokens=4, do_sample=False, streamer=streamer, pad_token_id=0)
        expected = reference.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(tokens, expected)
    assert len(streamer.pieces) == 1 + 4 + 1  # the prompt, one piece per new token, the end
    snapshot = om.snapshot()
    steps = om.stats()["steps"]
    assert steps == 4 and om.last_step == 4  # one prefill + three one-token passes thanks to the KV cache
    assert om.stats()["tokens"] == 5 + 3
    assert snapshot.steps == 4


# ----------------------------------------------------------------------------------------------- cache behaviour
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_hits_and_misses_equal_a_reference_lru_simulation(k: int, device: str, tmp_path) -> None:
    config = mixtral_config(experts=5, top_k=2)
    settings = OffloadConfig(cache_size=k, prefetch=0, trace_path=tmp_path / "t.jsonl", device=device)
    om = offload_model(build(config, seed=8), settings)
    routing = record_routing(om)
    for seed in range(3):
        generate(om.model, prompt(batch=1, length=6, seed=seed), new_tokens=8)
    hits, misses, contents = reference_lru(routing, k)
    stats = om.stats()
    assert (stats["hits"], stats["misses"]) == (hits, misses)
    assert hits > 0 and misses > 0
    steps = steps_of(om)
    assert len(steps) == len(routing) * 3
    for step in steps:  # slots after each pass, least recently used first, empty slots leading
        expected = contents[step.step - 1][step.layer]
        assert step.slots == (None,) * (k - len(expected)) + tuple(expected)


@pytest.mark.parametrize("device", DEVICES)
def test_fast_tier_never_holds_more_than_k_experts_per_layer(device: str) -> None:
    config = mixtral_config(experts=6)
    om = offload_model(build(config), OffloadConfig(cache_size=[1, 2, 3], prefetch=2, device=device))
    assert all(cache.slots.device.type == device for cache in om.caches)
    nbytes = om.format.nbytes

    def allocated() -> list[tuple[int, ...]]:
        return [tuple(cache.slots.shape) for cache in om.caches]

    pointers = [cache.slots.data_ptr() for cache in om.caches]
    observed: list[list[tuple[int, ...]]] = []
    for moe_layer in om.moe.layers:
        moe_layer.block.register_forward_hook(lambda *args: observed.append(allocated()))
    generate(om.model, prompt(batch=2, length=12), new_tokens=5)
    assert all(shapes == [(1, nbytes), (2, nbytes), (3, nbytes)] for shapes in observed)
    assert [cache.slots.data_ptr() for cache in om.caches] == pointers  # slots are never reallocated in a pass
    assert om.memory()["slot_bytes"] == 6 * nbytes
    om.set_cache_size(4, layer=0)
    om.set_cache_size(1, layer=2)
    assert allocated() == [(4, nbytes), (2, nbytes), (1, nbytes)]
    assert om.memory()["slot_bytes"] == 7 * nbytes
    for cache in om.caches:
        assert len(cache.slot_of) <= cache.capacity


def test_prefill_streams_more_experts_than_slots(tmp_path) -> None:
    config = mixtral_config(experts=6, top_k=2)
    reference, model = twin(config, seed=9)
    om = offload_model(model, OffloadConfig(cache_size=1, prefetch=0, trace_path=tmp_path / "t.jsonl"))
    assert_same_generation(reference, om, prompt(batch=2, length=16), new_tokens=2)
    prefill = [step for step in steps_of(om) if step.step == 1]
    assert all(step.n_tokens == 32 for step in prefill)
    assert any(len(step.experts) > 1 for step in prefill)
    for step in prefill:
        assert step.misses == len(step.experts)  # every expert of the pass went through the single slot
        assert sum(step.counts) == 32 * 2
        assert len(step.slots) == 1


def test_shrinking_keeps_the_most_recent_experts_and_growing_adds_empty_slots() -> None:
    om = offload_model(build(mixtral_config(experts=4)), OffloadConfig(cache_size=3, prefetch=0))
    generate(om.model, prompt(batch=1, length=6), new_tokens=3)
    before = [cache.eviction_order() for cache in om.caches]
    om.set_cache_size(1)
    assert [cache.eviction_order() for cache in om.caches] == [order[-1:] for order in before]
    om.set_cache_size(2)
    assert all(cache.eviction_order()[0] is None for cache in om.caches)


def test_settings_change_between_passes_and_are_recorded(tmp_path) -> None:
    om = offload_model(
        build(mixtral_config()), OffloadConfig(cache_size=2, prefetch=1, trace_path=tmp_path / "t.jsonl")
    )
    om.set_policy("FIFO")
    om.set_prefetch(0)
    om.set_cache_size(3, layer=1)
    generate(om.model, prompt(batch=1, length=4), new_tokens=2)
    header = om.snapshot().header
    assert (header.policy, header.prefetch, header.cache_size) == ("fifo", 0, (2, 3, 2))
    assert all(cache.policy.name == "fifo" for cache in om.caches)
    assert om.stats()["prefetch_issued"] == 0
    _, events = read_trace(tmp_path / "t.jsonl")
    assert [type(e).__name__ for e in events[:3]] == ["ConfigEvent"] * 3


def test_setting_changes_during_a_pass_wait_for_the_next_pass() -> None:
    om = offload_model(build(mixtral_config()), OffloadConfig(cache_size=2, prefetch=0))
    seen: list[list[int]] = []

    def change_midway(module, args, output):
        om.set_cache_size(1)
        seen.append(om.cache_sizes)

    handle = om.moe.layers[0].block.register_forward_hook(change_midway)
    with torch.no_grad():
        om.model(prompt(batch=1, length=3))
    handle.remove()
    assert seen == [[2, 2, 2]]  # not applied inside the pass
    with torch.no_grad():
        om.model(prompt(batch=1, length=3))
    assert om.cache_sizes == [1, 1, 1]


# ----------------------------------------------------------------------------------------------- prefetch
def predictable_model(experts: int = 6, top_k: int = 2):
    """A Mixtral whose layers barely change the residual stream and share one router and norm weights.

    The next layer's router then sees (almost) the same input as this layer's, so prefetch guesses are right.
    """
    model = build(mixtral_config(experts=experts, top_k=top_k, layers=4), seed=11)
    router = model.model.layers[0].mlp.gate.weight
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate.weight.copy_(router)
            layer.self_attn.o_proj.weight.mul_(1e-4)
            layer.mlp.experts.down_proj.mul_(1e-4)
            layer.post_attention_layernorm.weight.fill_(1.0)
    return model


@pytest.mark.parametrize("device", DEVICES)
def test_prefetch_loads_the_next_layers_experts_ahead(device: str, tmp_path) -> None:
    config_kwargs = {"cache_size": 2, "prefetch": 2, "trace_path": tmp_path / "t.jsonl", "device": device}
    om = offload_model(predictable_model(), OffloadConfig(**config_kwargs))
    generate(om.model, prompt(batch=1, length=5), new_tokens=10)
    stats = om.stats()
    assert stats["prefetch_issued"] > 0
    decode = [step for step in steps_of(om) if step.n_tokens == 1]
    later_layers = [step for step in decode if step.layer > 0]
    assert all(not step.prefetch_issued for step in decode if step.layer == 0)  # nothing guesses layer 0
    assert all(all(step.hits) for step in later_layers)  # guessed right: every expert was there
    assert sum(sum(step.prefetch_hits) for step in later_layers) > 0
    recall = stats["prefetch_recall"]
    assert recall > 0.5


def test_prefetch_accounting_is_consistent(tmp_path) -> None:
    om = offload_model(
        build(mixtral_config(experts=6, layers=4), seed=12),
        OffloadConfig(cache_size=3, prefetch=2, trace_path=tmp_path / "t.jsonl"),
    )
    generate(om.model, prompt(batch=1, length=5), new_tokens=12)
    steps = steps_of(om)
    nbytes = om.format.nbytes
    for step in steps:
        assert len(step.prefetch_issued) <= 2
        assert len(set(step.prefetch_issued)) == len(step.prefetch_issued)
        for expert, hit, prefetch_hit in zip(step.experts, step.hits, step.prefetch_hits, strict=True):
            assert hit or not prefetch_hit  # a prefetch hit is a hit
            assert not prefetch_hit or expert in step.prefetch_issued
        assert step.bytes_loaded == (step.misses + len(step.prefetch_issued)) * nbytes
    stats = om.stats()
    assert stats["prefetch_used"] == sum(sum(step.prefetch_hits) for step in steps)
    assert stats["prefetch_issued"] == sum(len(step.prefetch_issued) for step in steps)
    assert stats["bytes_loaded"] == sum(step.bytes_loaded for step in steps)


# ----------------------------------------------------------------------------------------------- telemetry
@pytest.mark.parametrize("device", DEVICES)
def test_one_layer_step_per_moe_layer_per_pass_with_routing_details(device: str, tmp_path) -> None:
    config = mixtral_config(experts=4, top_k=2)
    settings = OffloadConfig(cache_size=2, prefetch=1, trace_path=tmp_path / "t.jsonl", device=device)
    om = offload_model(build(config), settings)
    routing = record_routing(om)
    generate(om.model, prompt(batch=2, length=5), new_tokens=3)
    om.close()
    header, events = read_trace(tmp_path / "t.jsonl")
    assert (header.num_layers, header.num_experts, header.top_k, header.cache_size) == (3, 4, 2, (2, 2, 2))
    assert header.expert_bytes == om.format.nbytes
    assert (header.fast_tier, header.slow_tier) == (("cpu", "ram") if device == "cpu" else ("cuda:0", "pinned"))
    steps = [event for event in events if isinstance(event, LayerStep)]
    assert [(s.step, s.layer) for s in steps] == [(p, layer) for p in (1, 2, 3) for layer in range(3)]
    for step in steps:
        assert step.n_tokens == (10 if step.step == 1 else 2)
        assert set(step.experts) == routing[step.step - 1][step.layer]
        assert sum(step.counts) == step.n_tokens * 2
        assert all(0.0 < weight <= 1.0 for weight in step.weights)
        hits = [e for e, hit in zip(step.experts, step.hits, strict=True) if hit]
        assert list(step.experts[: len(hits)]) == hits  # hits are fetched first
        assert step.load_s >= 0.0 and step.compute_s > 0.0


def test_weights_in_telemetry_are_mean_router_weights() -> None:
    om = offload_model(build(mixtral_config()), OffloadConfig(cache_size=2, prefetch=0))
    captured = []
    om.moe.layers[0].router.register_forward_hook(lambda m, a, out: captured.append((out[1], out[2])))
    with torch.no_grad():
        om.model(prompt(batch=1, length=6))
    weights, index = captured[0]
    last = om.snapshot().layers[0]
    for expert, mean in zip(last.last_experts, last.last_weights, strict=True):
        assert mean == pytest.approx(weights[index == expert].mean().item(), rel=1e-6)


def test_telemetry_off_still_counts_fetches_but_records_no_steps() -> None:
    om = offload_model(build(mixtral_config()), OffloadConfig(cache_size=1, prefetch=1, telemetry=False))
    generate(om.model, prompt(batch=1, length=4), new_tokens=3)
    stats = om.stats()
    assert stats["misses"] > 0 and stats["bytes_loaded"] > 0
    assert om.telemetry.counters().accesses == 0
    assert om.snapshot().steps == 0


def test_memory_report_names_the_tiers() -> None:
    om = offload_model(build(mixtral_config(experts=4)), OffloadConfig(cache_size=2, store="mmap"))
    report = om.memory()
    nbytes = om.format.nbytes
    assert (report["fast_tier"], report["slow_tier"]) == ("cpu", "mmap")
    assert report["expert_bytes"] == nbytes == 3 * 48 * 40 * 4
    assert report["slow_tier_bytes"] == 3 * 4 * nbytes
    assert report["fast_tier_bytes"] == 3 * 2 * nbytes


# ----------------------------------------------------------------------------------------------- faults
@pytest.mark.parametrize("device", DEVICES)
def test_an_exception_inside_generation_leaves_the_engine_usable(device: str) -> None:
    config = mixtral_config()
    reference, model = twin(config, seed=13)
    reference.to(device)
    om = offload_model(model, OffloadConfig(cache_size=1, prefetch=1, device=device))
    mover = om.engine.mover
    original = mover.load
    calls = {"n": 0}

    def failing_load(cache, slot, source, timer):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated copy failure")
        return original(cache, slot, source, timer)

    mover.load = failing_load
    with pytest.raises(RuntimeError, match="simulated copy failure"):
        generate(om.model, prompt(batch=1, length=6), new_tokens=3)
    assert all(len(cache.slot_of) <= cache.capacity for cache in om.caches)
    assert_same_generation(reference, om, prompt(batch=2, length=6))


def test_a_failed_copy_empties_its_slot_and_the_engine_recovers(cpu_copies: str) -> None:
    config = mixtral_config()
    reference, model = twin(config, seed=15)
    om = offload_model(model, OffloadConfig(cache_size=2, prefetch=1))
    original = om.store.row
    calls = {"n": 0}

    def broken_row(layer, expert):
        calls["n"] += 1
        return original(layer, expert)[:-1] if calls["n"] == 2 else original(layer, expert)  # wrong size

    om.store.row = broken_row
    with pytest.raises(RuntimeError):
        generate(om.model, prompt(batch=1, length=6), new_tokens=3)
    assert calls["n"] >= 2
    assert_same_generation(reference, om, prompt(batch=1, length=6))


@pytest.mark.parametrize("device", DEVICES)
def test_an_exception_after_an_moe_layer_leaves_the_engine_usable(device: str) -> None:
    reference, model = twin(mixtral_config(), seed=14)
    reference.to(device)
    om = offload_model(model, OffloadConfig(cache_size=2, prefetch=2, device=device))
    error = torch.cuda.OutOfMemoryError if device == "cuda" else MemoryError

    def explode(module, args, output):
        raise error("simulated out of memory")

    handle = om.model.model.layers[1].self_attn.register_forward_hook(explode)
    with pytest.raises(error):
        generate(om.model, prompt(batch=1, length=6), new_tokens=3)
    handle.remove()
    assert_same_generation(reference, om, prompt(batch=1, length=6))


def test_closed_engine_refuses_to_run() -> None:
    om = offload_model(build(mixtral_config()), OffloadConfig(cache_size=2))
    om.close()
    with pytest.raises(RuntimeError, match="closed"), torch.no_grad():
        om.model(prompt(batch=1, length=3))


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cache_size": 0}, "cache size"),
        ({"cache_size": [2, -1]}, "cache size"),
        ({"prefetch": -1}, "prefetch"),
        ({"policy": "random"}, "unknown cache policy"),
        ({"expert_bits": 5}, "unsupported expert bit width"),
        ({"attn_bits": 2}, "unsupported attention bit width"),
        ({"group_size": 60}, "group size"),
        ({"device": "tpu"}, "unknown device"),
        ({"store": "disk"}, "unknown expert store"),
        ({"dtype": "int8"}, "unknown dtype"),
    ],
)
def test_bad_settings_are_refused_at_once(kwargs, message) -> None:
    with pytest.raises(UserError, match=message):
        OffloadConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cache_size": 5}, r"cache size 5 is out of range: choose 1\.\.4"),
        ({"cache_size": [1, 2]}, "2 entries but the model has 3 MoE layers"),
        ({"prefetch": 5}, "prefetch 5 is more than"),
        ({"expert_bits": 4, "group_size": 256}, "group size 256 does not divide"),
    ],
)
def test_settings_that_do_not_fit_the_model_are_refused_before_any_work(kwargs, message) -> None:
    model = build(mixtral_config(experts=4, hidden=48, intermediate=40))
    with pytest.raises(UserError, match=message):
        offload_model(model, OffloadConfig(**kwargs))
    assert type(model.model.layers[0].mlp.experts).__name__ == "MixtralExperts"  # untouched


def test_a_model_without_experts_is_refused() -> None:
    with pytest.raises(UserError, match="not a Mixture-of-Experts model"):
        offload_model(build(llama_config()), OffloadConfig())
    with pytest.raises(UserError, match="expected a transformers model"):
        offload_model("mixtral", OffloadConfig())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when CUDA is absent")
def test_cuda_without_a_gpu_is_refused() -> None:
    with pytest.raises(UserError, match="--device cuda was asked for, but"):
        offload_model(build(mixtral_config()), OffloadConfig(device="cuda"))


def test_more_fast_tier_memory_than_free_is_refused_naming_a_k_that_fits(monkeypatch) -> None:
    config = mixtral_config(experts=4)
    nbytes = 3 * 48 * 40 * 4
    costs = fit.TokenCosts.of(config, 4, 40)

    def need(k: int) -> int:
        return fit.fast_tier_need(0, 3 * k * nbytes, 0, costs, 256, "cpu").total

    monkeypatch.setattr(offload_memory, "free_bytes", lambda device: need(2) + 100)
    with pytest.raises(
        UserError, match=r"short; what would fit: cache size 2, or --expert-bits 4 with cache size 4$"
    ) as refused:
        offload_model(build(config), OffloadConfig(cache_size=4))
    assert f"{format_bytes(need(4) - need(2) - 100)} short" in str(refused.value)
    assert "KV cache for 256 tokens" in str(refused.value)  # the model's own limit, below the default 4096
    om = offload_model(build(config), OffloadConfig(cache_size=1))
    answering = fit.fast_tier_need(0, 0, 0, costs, 256, "cpu").total  # the KV cache, activations and margin
    # Growing to k allocates the new slots before freeing the old: 3 * (k - 1) + k experts at the peak.
    monkeypatch.setattr(offload_memory, "free_bytes", lambda device: answering + 5 * nbytes + 100)
    with pytest.raises(UserError, match="cache size 2 would fit") as refused:
        om.set_cache_size(4)
    assert "beside what answering needs (KV cache for 256 tokens" in str(refused.value)
    assert om.cache_sizes == [1, 1, 1]
    # The slots alone would fit, but not beside what the conversation was promised.
    monkeypatch.setattr(offload_memory, "free_bytes", lambda device: 5 * nbytes + 100)
    with pytest.raises(UserError, match="cache size 1 would fit"):
        om.set_cache_size(2)
    monkeypatch.setattr(offload_memory, "free_bytes", lambda device: 10)
    with pytest.raises(UserError, match="nothing smaller fits either"):
        offload_model(build(config), OffloadConfig(cache_size=1))


def test_growing_mid_conversation_counts_the_kv_cache_already_held_as_allocated(monkeypatch) -> None:
    config = mixtral_config(experts=4)
    nbytes = 3 * 48 * 40 * 4
    om = offload_model(build(config), OffloadConfig(cache_size=1))
    promised = om.conversation
    # The conversation holds its whole KV cache: free memory is that much lower than at the load.
    # Growing 1 -> 2 slots peaks at 3 new experts plus a layer of 2.
    free = promised.total - promised.kv_cache + 5 * nbytes + 100
    monkeypatch.setattr(offload_memory, "free_bytes", lambda device: free)
    with pytest.raises(UserError, match="cache size 1 would fit"):
        om.set_cache_size(2)  # told nothing, the whole KV cache still counts as to come
    om.set_cache_size(2, kv_held=promised.kv_cache)
    assert om.cache_sizes == [2, 2, 2]
    # What is held counts only up to the KV cache that was promised: more held is not more room.
    monkeypatch.setattr(offload_memory, "free_bytes", lambda device: free - promised.kv_cache)
    with pytest.raises(UserError, match="KV cache already allocated\\) but only") as refused:
        om.set_cache_size(3, kv_held=2 * promised.kv_cache)
    assert f"{format_bytes(promised.kv_cache)} of the KV cache already allocated" in str(refused.value)


def test_shrinking_the_cache_is_never_refused_for_memory(monkeypatch) -> None:
    om = offload_model(build(mixtral_config(experts=4)), OffloadConfig(cache_size=3))
    monkeypatch.setattr(offload_memory, "free_bytes", lambda device: 0)
    om.set_cache_size(2)
    om.set_cache_size(2, layer=1)
    assert om.cache_sizes == [2, 2, 2]


def test_a_cpu_engine_asks_glibc_once_to_return_large_frees(monkeypatch) -> None:
    calls = []

    class RecordingLibc:
        def malloc_trim(self, pad: int) -> int:
            calls.append(("malloc_trim", pad))
            return 1

        def mallopt(self, parameter: int, value: int) -> int:
            calls.append(("mallopt", parameter, value))
            return 1

    monkeypatch.setattr(offload_memory, "_glibc", RecordingLibc)
    offload_memory.return_large_frees.cache_clear()
    try:
        offload_model(build(mixtral_config(experts=4)), OffloadConfig(cache_size=1))
        offload_model(build(mixtral_config(experts=4)), OffloadConfig(cache_size=2))
        assert calls == [("malloc_trim", 0), ("mallopt", -3, 1 << 20)]  # M_MMAP_THRESHOLD, once per process
        offload_memory.return_large_frees.cache_clear()
        monkeypatch.setattr(offload_memory, "_glibc", lambda: None)  # musl, macOS, Windows: nothing to set
        assert offload_memory.return_large_frees() is False
    finally:
        offload_memory.return_large_frees.cache_clear()


FRESH_BLOCK_CHECK = """
import ctypes, sys
from moe_tui.offload import memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "engine":
    assert memory.return_large_frees()
libc.free(libc.malloc(16 << 20))  # by default this raises glibc's threshold to 16 MiB
before = libc.mallinfo2().hblkhd
block = libc.malloc(2 << 20)
grown = libc.mallinfo2().hblkhd - before
libc.free(block)
print(grown, libc.mallinfo2().hblkhd - before)
"""


@pytest.mark.skipif(
    not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="glibc 2.33 or later reports its mmapped blocks"
)
@pytest.mark.parametrize("setting", ["engine", "glibc default"])
def test_after_it_a_freed_megabyte_block_goes_straight_back_to_the_system(setting: str) -> None:
    # A fresh interpreter: in a long-lived one malloc may serve the block from free space its heap already has.
    done = subprocess.run(
        [sys.executable, "-c", FRESH_BLOCK_CHECK, setting], capture_output=True, text=True, timeout=120, check=True
    )
    mapped, left = map(int, done.stdout.split())
    if setting == "engine":
        assert mapped >= 2 << 20 and left == 0  # its own mapping (with its header), gone when freed
    else:
        assert mapped == 0  # kept in the heap, where freeing it would not give it back


def test_loading_bounds_onednn_kernel_caches_unless_the_user_sized_them(monkeypatch) -> None:
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "8")
    offload_model(build(mixtral_config(experts=4)), OffloadConfig(cache_size=1))
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(offload_memory.KERNEL_CACHE_ENTRIES)
    assert os.environ["LRU_CACHE_CAPACITY"] == "8"  # the user's own size wins


ALLOC_CONF = "PYTORCH_CUDA_ALLOC_CONF"


def test_the_cuda_allocator_is_asked_for_expandable_segments_unless_the_user_configured_it(monkeypatch) -> None:
    for name in engine_config.ALLOCATOR_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    offload_model(build(mixtral_config(experts=4)), OffloadConfig(cache_size=1, device="cpu"))
    assert ALLOC_CONF not in os.environ  # a CPU engine leaves the GPU's allocator alone
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine, up to CUDA's start
    seen_by_cuda: list[str | None] = []  # the setting as CUDA starts (current_device starts it)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: seen_by_cuda.append(os.getenv(ALLOC_CONF)) or 0)
    assert engine_config.resolve_device("cuda") == torch.device("cuda", 0)
    assert seen_by_cuda == ["expandable_segments:True"]
    monkeypatch.delenv(ALLOC_CONF)
    monkeypatch.setenv("PYTORCH_ALLOC_CONF", "max_split_size_mb:512")
    engine_config.resolve_device("auto")
    assert seen_by_cuda[1:] == [None]  # the user's setting, under either name, wins


def test_an_engine_on_cuda_keeps_attention_off_cudnn_which_plans_for_every_decoded_length(monkeypatch) -> None:
    enabled = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        offload_model(build(mixtral_config(experts=4)), OffloadConfig(cache_size=1, device="cpu"))
        assert torch.backends.cuda.cudnn_sdp_enabled()  # a CPU engine leaves the GPU's kernels alone
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        assert engine_config.resolve_device("cuda") == torch.device("cuda", 0)
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(enabled)


KERNEL_CACHE_CHECK = """
import sys
from moe_tui.offload import memory
if sys.argv[1] == "engine":
    memory.bound_kernel_caches()  # before torch's first matmul, as a load does
memory.return_large_frees()
import psutil, torch
weight = torch.randn(1024, 512, dtype=torch.bfloat16)
tokens = torch.randn(400, 512, dtype=torch.bfloat16)
torch.nn.functional.linear(tokens[:1], weight)
before = psutil.Process().memory_info().rss
for count in range(2, 302):  # as many token counts as experts see over a long chat
    torch.nn.functional.linear(tokens[:count], weight)
print((psutil.Process().memory_info().rss - before) / 2**20)
"""


@pytest.mark.skipif(
    not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="oneDNN computes no bf16 matmul on this CPU"
)
@pytest.mark.parametrize("setting", ["engine", "oneDNN default"])
def test_matmuls_of_many_shapes_hold_a_bounded_amount_of_compiled_kernels(setting: str) -> None:
    # A fresh interpreter: both caches take their size at the process's first bf16 matmul. It starts without
    # the sizes that engines loaded by earlier tests put into this process's environment.
    unsized = {name: value for name, value in os.environ.items() if name not in offload_memory.KERNEL_CACHE_VARIABLES}
    done = subprocess.run(
        [sys.executable, "-c", KERNEL_CACHE_CHECK, setting],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=unsized,
    )
    grown_mib = float(done.stdout)
    if setting == "engine":
        assert grown_mib < 2 * offload_memory.KERNEL_CACHE_ENTRIES  # about 1 MiB a cached shape
    else:
        assert grown_mib > 3 * offload_memory.KERNEL_CACHE_ENTRIES  # a kernel kept for each of 300 shapes


def test_a_refusal_offers_a_shorter_context_or_fewer_expert_bits(monkeypatch) -> None:
    config = mixtral_config(experts=4)
    nbytes = 3 * 48 * 40 * 4
    costs = fit.TokenCosts.of(config, 4, 40)
    at_k1 = fit.fast_tier_need(0, 3 * nbytes, 0, costs, 100, "cpu").total
    monkeypatch.setattr(offload_memory, "free_bytes", lambda device: at_k1)
    with pytest.raises(UserError, match=r"what would fit: cache size 1 with --context 100\b"):
        offload_model(build(config), OffloadConfig(cache_size=1, context=200))
    # 2-bit experts are a fraction of fp32 ones: k=4 at 2 bits fits where k=2 in fp32 does not.
    monkeypatch.setattr(
        offload_memory, "free_bytes", lambda device: fit.fast_tier_need(0, 0, 0, costs, 256, "cpu").total + 3 * nbytes
    )
    with pytest.raises(UserError, match=r"cache size 1, or --expert-bits 4 with cache size \d"):
        offload_model(build(config), OffloadConfig(cache_size=2))


def test_a_context_beyond_the_models_limit_is_refused() -> None:
    with pytest.raises(UserError, match="more than this model reads"):
        offload_model(build(mixtral_config()), OffloadConfig(context=257))
    with pytest.raises(UserError, match="context must be a whole number"):
        OffloadConfig(context=0)


def test_run_time_setters_check_their_arguments() -> None:
    om = offload_model(build(mixtral_config(experts=4)), OffloadConfig(cache_size=2))
    with pytest.raises(UserError, match="out of range"):
        om.set_cache_size(0)
    with pytest.raises(UserError, match="layer 7 is out of range"):
        om.set_cache_size(2, layer=7)
    with pytest.raises(UserError, match="unknown cache policy"):
        om.set_policy("mru")
    with pytest.raises(UserError, match="prefetch"):
        om.set_prefetch(-2)
    assert om.cache_sizes == [2, 2, 2]


def test_trace_path_that_cannot_be_written_is_a_user_error(tmp_path) -> None:
    with pytest.raises(UserError, match="cannot write the trace file"):
        offload_model(build(mixtral_config()), OffloadConfig(trace_path=tmp_path / "missing" / "t.jsonl"))


def test_trace_lines_are_json_with_the_documented_schema(tmp_path) -> None:
    path = tmp_path / "t.jsonl"
    om = offload_model(build(mixtral_config()), OffloadConfig(cache_size=2, trace_path=path))
    generate(om.model, prompt(batch=1, length=3), new_tokens=2)
    om.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records[0]["type"] == "header" and records[0]["schema"] == 1
    fields = {"step", "layer", "n_tokens", "experts", "counts", "weights", "hits", "prefetch_hits"}
    assert all(fields <= set(r) for r in records[1:] if r["type"] == "step")


def test_cpu_copies_run_beside_torch_only_on_a_core_torch_leaves_free() -> None:
    assert transfer.copies_can_overlap(threads=1, cores=2)
    assert not transfer.copies_can_overlap(threads=2, cores=2)
    assert not transfer.copies_can_overlap(threads=4, cores=2)


def test_a_copy_on_the_computing_thread_is_made_at_once_and_counted_as_load_time() -> None:
    from moe_tui.offload.cache import LayerCache
    from moe_tui.policies import make_policy

    mover = transfer.CpuMover(background=False)
    cache = LayerCache(0, capacity=2, nbytes=1 << 20, device=torch.device("cpu"), policy=make_policy("lru"))
    source = torch.full((1 << 20,), 7, dtype=torch.uint8)
    timer = transfer.Timer(cuda=False)
    mover.load(cache, 1, source, timer)
    assert torch.equal(cache.slots[1], source) and timer.load_s > 0
    mover.before_compute(cache, 1, timer)
    assert not cache.pending[1]
    mover.load(cache, 0, source[:-1], timer)  # the wrong size: the error waits for the computing step
    with pytest.raises(RuntimeError):
        mover.before_compute(cache, 0, timer)
    mover.drain()
    mover.close()
