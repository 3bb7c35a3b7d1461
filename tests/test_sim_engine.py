"""The simulator replays the engine's own traces to the exact counts the engine measured (every policy)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from moe_tui.offload import OffloadConfig, offload_model  # noqa: E402
from moe_tui.sim import simulate  # noqa: E402
from moe_tui.telemetry import read_trace  # noqa: E402


@pytest.mark.parametrize(
    ("k", "prefetch", "policy", "miss"),
    [
        (1, 1, "lru", "copy"),
        (2, 0, "lru", "copy"),
        (2, 1, "fifo", "copy"),
        (3, 2, "lfu", "copy"),
        (2, 1, "lru", "host"),
    ],
)
def test_replay_of_an_engine_trace_matches_its_counters(
    tmp_path: Path, k: int, prefetch: int, policy: str, miss: str
) -> None:
    config = transformers.MixtralConfig(
        vocab_size=128, hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=6, num_experts_per_tok=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.MixtralForCausalLM(config).eval()
    trace = tmp_path / "trace.jsonl"
    settings = OffloadConfig(cache_size=k, prefetch=prefetch, policy=policy, trace_path=trace, miss=miss)
    engine = offload_model(model, settings)
    prompt = torch.randint(0, 128, (1, 7))  # a 7-token prefill needs more experts than k slots: streaming
    engine.model.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
    stats = engine.stats()
    engine.close()
    header, events = read_trace(trace)
    if prefetch > 1 and not any(getattr(e, "prefetch_guesses", ()) for e in events):
        pytest.skip("the engine's trace lists only started prefetch copies, not the guesses it already held")
    name = policy + ("+prefetch" if prefetch else "") + ("+host" if miss == "host" else "")
    replay = simulate(header, events, k, name).total
    assert (replay.hits, replay.misses, replay.host) == (stats["hits"], stats["misses"], stats["host"])
    assert (stats["host"] > 0) == (miss == "host")
    assert (replay.prefetch_issued, replay.prefetch_used) == (stats["prefetch_issued"], stats["prefetch_used"])
    assert replay.bytes_loaded == stats["bytes_loaded"]
