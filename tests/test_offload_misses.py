"""A miss copied into a slot, or computed on the host from the store: same logits, different costs."""

from __future__ import annotations

import pytest
import torch
from engine_checks import assert_same_generation, generate, steps_of
from offload_models import build, mixtral_config, prompt, twin

from moe_tui.errors import UserError
from moe_tui.offload import OffloadConfig, offload_model
from moe_tui.offload.formats import Int4Format
from moe_tui.offload.misses import MissCosts
from moe_tui.offload.model import check_miss_mode


def test_misses_on_the_host_are_exact_and_copy_nothing_without_prefetch(tmp_path) -> None:
    config = mixtral_config(experts=4)
    reference, model = twin(config, seed=7)
    ids = prompt(batch=2, length=6, seed=3)
    expected = generate(reference, ids)
    om = offload_model(model, OffloadConfig(cache_size=2, prefetch=0, miss="host", trace_path=tmp_path / "t.jsonl"))
    assert_same_generation(expected, om, ids)
    stats = om.stats()
    assert stats["misses"] == stats["hits"] == stats["bytes_loaded"] == 0  # nothing ever enters a slot
    assert stats["host"] > 0 and stats["hit_rate"] == 0.0
    assert all(cache.slot_of == {} for cache in om.caches)
    steps = steps_of(om)
    assert all(step.host == (True,) * len(step.experts) for step in steps)
    assert sum(step.host_computed for step in steps) == stats["host"]
    assert om.snapshot().totals.host == stats["host"]


def test_with_prefetch_only_guesses_fill_the_slots_and_every_cache_size_stays_exact() -> None:
    config = mixtral_config(experts=4)
    reference, model = twin(config, seed=8)
    ids = prompt(batch=1, length=5, seed=1)
    expected = generate(reference, ids)
    om = offload_model(model, OffloadConfig(cache_size=1, prefetch=2, miss="host"))
    for k in range(1, 5):
        om.set_cache_size(k)
        assert_same_generation(expected, om, ids)
    stats = om.stats()
    assert stats["misses"] == 0 and stats["prefetch_issued"] > 0 and stats["hits"] > 0 and stats["host"] > 0
    assert stats["bytes_loaded"] == stats["prefetch_issued"] * om.format.nbytes


def test_auto_on_a_cpu_computes_every_miss_on_the_host() -> None:
    config = mixtral_config(experts=4)
    reference, model = twin(config, seed=9)
    ids = prompt(batch=1, length=5, seed=2)
    om = offload_model(model, OffloadConfig(cache_size=2, prefetch=0, miss="auto"))
    assert_same_generation(reference, om, ids)
    costs = om.engine.costs
    assert costs is not None and costs.fast_s == costs.host_s and costs.copy_s > 0  # same cores: copying only costs
    assert om.stats()["host"] > 0 and om.stats()["misses"] == 0


def test_the_miss_mode_changes_between_passes_and_bad_modes_are_refused() -> None:
    om = offload_model(build(mixtral_config(experts=4), seed=1), OffloadConfig(cache_size=2, prefetch=0))
    ids = prompt(batch=1, length=4)
    with torch.no_grad():
        om.model(ids)
    copies = om.stats()["misses"]
    assert copies > 0 and om.miss == "copy"
    om.set_miss("host")
    assert om.miss == "host"
    with torch.no_grad():
        om.model(prompt(batch=1, length=4, seed=9))
    assert om.stats()["misses"] == copies  # the resident experts still hit; the others ran on the host
    with pytest.raises(UserError, match="unknown miss mode 'disk'"):
        om.set_miss("disk")
    with pytest.raises(UserError, match="unknown miss mode"):
        OffloadConfig(miss="everywhere")


def test_host_is_refused_where_only_the_gpu_kernel_reads_the_store() -> None:
    cuda_int4 = Int4Format([(128, 256), (128, 256), (256, 128)], torch.bfloat16, 64, torch.device("cuda"))
    with pytest.raises(UserError, match="miss=host needs experts the CPU can compute"):
        check_miss_mode("host", cuda_int4)
    check_miss_mode("auto", cuda_int4)  # auto just copies


def test_cost_model_sends_single_tokens_to_a_fast_host_and_prefills_to_the_gpu() -> None:
    # CUDA-like figures for a Mixtral 4-bit expert: 3.5 ms to copy, 0.1 ms on the GPU, 1 ms + 2 ms/token on the host
    costs = MissCosts(copy_s=3.5e-3, fast_s=(1e-4, 1e-6), host_s=(1e-3, 2e-3))
    assert costs.host_is_cheaper(tokens=1, reuse=0.0)
    assert not costs.host_is_cheaper(tokens=512, reuse=0.0)
    # a copy that will likely be reused (high hit rate) is worth more than its first use
    slow_host = MissCosts(copy_s=3.5e-3, fast_s=(1e-4, 1e-6), host_s=(3.4e-3, 1e-4))
    assert slow_host.host_is_cheaper(tokens=1, reuse=0.0)
    assert not slow_host.host_is_cheaper(tokens=1, reuse=0.9)
