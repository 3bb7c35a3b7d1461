"""The memory planner: model facts from the parameter tree, the memory sums, the estimate formula, the CLI."""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from pathlib import Path

import pytest

from moe_tui import cli, fit, plan, probes
from moe_tui.commands.plan import bench_spec, chat_command, parse_size
from moe_tui.errors import UserError
from moe_tui.params import load_config, routed_expert_bytes
from moe_tui.precision import format_bytes
from moe_tui.telemetry import LayerStep, Telemetry, TokenEvent, TraceHeader

GIB = 1024**3
CUDA_MARGIN = fit.MARGIN["cuda"]
TINY = {
    "model_type": "mixtral",
    "architectures": ["MixtralForCausalLM"],
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
    "vocab_size": 256,
    "torch_dtype": "float32",
}


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    """A 2-layer, 4-expert, top-2 Mixtral config.json."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY))
    return path


def facts_by_hand() -> plan.ModelFacts:
    """Round numbers: 1000-byte bf16 experts (250 at hqq2), 10 000 bytes of other weights."""
    precisions = ("bf16", "hqq8", "hqq4", "hqq3", "hqq2")
    return plan.ModelFacts(
        name="toy",
        dtype="bf16",
        moe_layers=2,
        num_experts=4,
        top_k=2,
        expert_bytes={"bf16": 1000, "hqq8": 600, "hqq4": 400, "hqq3": 300, "hqq2": 250},
        dense_bytes=dict.fromkeys(precisions, 10_000),
        dense_active_bytes=dict.fromkeys(precisions, 6_000),
        kv_bytes_per_token=10,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [("16GiB", 16 * GIB), ("16G", 16 * GIB), ("16GB", 16 * 10**9), ("512MiB", 512 * 1024**2), ("1.5TiB", 1536 * GIB)],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text, "--vram") == expected


@pytest.mark.parametrize("text", ["lots", "16 parsecs", "-3G", "0G"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(UserError, match="--vram"):
        parse_size(text, "--vram")


def test_model_facts_of_mixtral_8x7b() -> None:
    config = load_config("mixtral-8x7b")
    facts = plan.model_facts(config, name="mixtral-8x7b")
    assert (facts.moe_layers, facts.num_experts, facts.top_k, facts.dtype) == (32, 8, 2, "bf16")
    assert facts.expert_bytes["hqq4"] == routed_expert_bytes(config, "hqq4")
    assert facts.expert_bytes["bf16"] == 3 * 14336 * 4096 * 2
    assert facts.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2
    assert facts.kv_layer_bytes_per_token == 2 * 8 * 128 * 2
    # Everything outside the experts: embeddings + lm_head (2 x 32000 x 4096) + attention + routers + norms.
    attention = 32 * (2 * 4096 * 4096 + 2 * 1024 * 4096)
    rest = 2 * 32000 * 4096 + 32 * 8 * 4096 + (2 * 32 + 1) * 4096
    assert facts.dense_bytes["bf16"] == 2 * (attention + rest)
    assert facts.dense_bytes["hqq4"] < facts.dense_bytes["hqq8"] < facts.dense_bytes["bf16"]
    # The engine dequantizes one expert at a time into a workspace: at least one bf16 expert, none unquantized.
    assert facts.workspace_bytes["bf16"] == 0
    assert facts.expert_bytes["bf16"] < facts.workspace_bytes["hqq4"] < 2 * facts.expert_bytes["bf16"]
    # A token reads one embedding row, not the table.
    assert facts.dense_active_bytes["bf16"] == facts.dense_bytes["bf16"] - 2 * 32000 * 4096 + 2 * 4096


def test_memory_sums() -> None:
    facts = facts_by_hand()
    margin = fit.MARGIN["cpu"]
    need = plan.fast_tier_need(facts, "hqq2", "bf16", k=3, context=100)
    assert need.total == 10_000 + 3 * 2 * 250 + 256 * 10 + margin  # the KV cache grows by blocks of 256 tokens
    with_activations = replace(facts, activation_bytes_per_token=3, logits_bytes=7)
    need = plan.fast_tier_need(with_activations, "hqq2", "bf16", k=3, context=1000, device="cuda")
    assert need.activations == fit.PREFILL_CHUNK * 3 + 7 and need.margin == fit.MARGIN["cuda"]
    eager = replace(with_activations, score_bytes_per_pair=5)  # a chunk's scores against the whole context
    need = plan.fast_tier_need(eager, "hqq2", "bf16", k=3, context=1000, device="cuda")
    assert need.activations == fit.PREFILL_CHUNK * (3 + 1000 * 5) + 7
    assert plan.fast_tier_need(eager, "hqq2", "bf16", k=3, context=100).activations == 100 * (3 + 100 * 5) + 7
    appending = replace(with_activations, kv_layer_bytes_per_token=2)  # one layer's KV exists twice for a moment
    assert plan.fast_tier_need(appending, "hqq2", "bf16", k=3, context=1000).activations == 512 * 3 + 1024 * 2 + 7
    assert plan.store_bytes(facts, "hqq4") == 2 * 4 * 400


def test_eager_attention_counts_its_score_matrices() -> None:
    gpt_oss = load_config("gpt-oss-20b")  # transformers has no fused kernel for its attention sinks
    assert fit.attends_eagerly(gpt_oss) and not fit.attends_eagerly(load_config("mixtral-8x7b"))
    facts = plan.model_facts(gpt_oss, name="gpt-oss-20b")
    # every head's scores, masked scores and probabilities in bf16, and one float32 copy
    assert facts.score_bytes_per_pair == 64 * (3 * 2 + 4)
    need = plan.fast_tier_need(facts, "hqq4", "hqq4", k=1, context=4096)
    assert need.activations > fit.PREFILL_CHUNK * 4096 * 64 * 2 * 3
    mixtral = load_config("mixtral-8x7b")
    assert plan.model_facts(mixtral).score_bytes_per_pair == 0
    mixtral._attn_implementation = "eager"  # what a model built with attn_implementation="eager" holds
    assert fit.TokenCosts.of(mixtral, 2, 14336).score_bytes_per_pair == 32 * (3 * 2 + 4)


def test_estimate_on_cpu_adds_copies_to_compute() -> None:
    facts = facts_by_hand()
    machine = plan.Machine(host_bytes=10**9, transfer_bandwidth=1000.0, compute_bandwidth=10_000.0, context=0)
    c = plan.estimate(facts, machine, "bf16", "bf16", k=2, prefetch=1, copies=(1.5, 0.5, 0.6))
    assert c.compute_s == pytest.approx((6_000 + 2 * 2 * 1000) / 10_000)  # 1.0 s
    assert c.miss_s == pytest.approx(1.5) and c.prefetch_s == pytest.approx(0.5)
    assert c.seconds_per_token == pytest.approx(3.0)
    assert c.tokens_per_s == pytest.approx(1 / 3)
    assert c.bound == "transfer"
    assert c.host_bytes == plan.store_bytes(facts, "bf16") + c.fast_bytes  # one RAM for both tiers


def test_on_a_cpu_misses_computed_from_the_store_cost_no_copies() -> None:
    """The host RAM is both tiers on a CPU: a miss read from the store costs what a hit read from a slot
    does, so ``--miss host`` at k=1 beats every copying configuration of its precisions and takes least RAM."""
    facts = facts_by_hand()
    machine = plan.Machine(host_bytes=10**9, transfer_bandwidth=1000.0, compute_bandwidth=10_000.0, context=0)
    every = plan.candidates(facts, machine, plan.uniform_copy_model(facts), prefetch_depths=(0, 1))
    host = [c for c in every if c.miss == "host"]
    assert len(host) == len(plan.EXPERT_BITS) * len(plan.ATTN_BITS)  # one per precision pair
    for c in host:
        assert (c.cache_size, c.prefetch, c.misses_per_token, c.miss_s, c.prefetch_s) == (1, 0, 0.0, 0.0, 0.0)
        assert c.seconds_per_token == pytest.approx(c.compute_s) and c.bound == "compute"
        same = [o for o in every if (o.expert_precision, o.attn_precision) == (c.expert_precision, c.attn_precision)]
        assert all(c.seconds_per_token <= o.seconds_per_token and c.host_bytes <= o.host_bytes for o in same)
    best = plan.best_per_precision(every)
    assert {c.miss for c in best if c.expert_precision == "hqq4" and c.attn_precision == "bf16"} == {"copy", "host"}
    assert best[0].seconds_per_token == pytest.approx(min(c.seconds_per_token for c in host))  # ties: k=E copies
    shown = next(c for c in best if c.miss == "host")
    assert chat_command(shown, "toy", machine).endswith("--miss host --context 0 --device cpu")
    assert bench_spec(shown).endswith(",miss=host")
    gpu = replace(machine, fast_bytes=10**9)
    assert all(c.miss == "copy" for c in plan.candidates(facts, gpu, plan.uniform_copy_model(facts)))


def test_estimate_on_cuda_overlaps_prefetch_with_compute() -> None:
    facts = facts_by_hand()
    machine = plan.Machine(
        host_bytes=10**9, fast_bytes=10**9, transfer_bandwidth=1000.0, compute_bandwidth=10_000.0, context=0
    )
    c = plan.estimate(facts, machine, "bf16", "bf16", k=2, prefetch=1, copies=(0.2, 0.5, 0.9))
    assert c.seconds_per_token == pytest.approx(max(1.0, 0.5) + 0.2)
    assert c.bound == "compute"
    assert c.host_bytes == plan.store_bytes(facts, "bf16")


def test_estimate_adds_dequantization_and_overhead() -> None:
    facts = replace(facts_by_hand(), rest_active_bytes=2_000)
    machine = plan.Machine(
        host_bytes=10**9,
        transfer_bandwidth=1000.0,
        compute_bandwidth=10_000.0,
        context=0,
        overhead_s=0.25,
        dequant_bandwidth={"hqq4": 4_000.0, "hqq8": 8_000.0},
        expert_bandwidth={"hqq4": 2_000.0},
    )
    c = plan.estimate(facts, machine, "hqq4", "hqq8", k=2, prefetch=0, copies=(0.0, 0.0, 1.0))
    dense = 6_000 / 10_000 + (6_000 - 2_000) / 8_000  # non-expert weights read, the quantized ones unpacked (hqq8)
    experts = 2 * 2 * 400 / 2_000  # top-2 x 2 layers x one 4-bit expert, at the 4-bit experts' own rate
    assert c.compute_s == pytest.approx(dense + experts + 0.25)
    assert c.seconds_per_token == pytest.approx(c.compute_s)
    # a precision whose expert rate is unknown is read at the compute bandwidth, and 4-bit attention is unpacked
    c = plan.estimate(facts, machine, "hqq2", "hqq4", k=2, prefetch=0, copies=(0.0, 0.0, 1.0))
    assert c.compute_s == pytest.approx(6_000 / 10_000 + 4_000 / 4_000 + 2 * 2 * 250 / 10_000 + 0.25)


def test_the_fast_tier_counts_the_workspace_of_the_engines_format() -> None:
    """int2 unpacks a chunk at a time, so its workspace is not HQQ's whole dequantized expert."""
    facts = facts_by_hand()
    hqq = plan.fast_tier_need(facts, "hqq2", "bf16", k=1, context=0, workspace=None)
    chunked = plan.fast_tier_need(facts, "hqq2", "bf16", k=1, context=0, workspace={"hqq2": 7})
    assert chunked.total == hqq.total - facts.workspace_bytes.get("hqq2", 0) + 7


def test_probes_measure_something() -> None:
    assert probes.transfer_bandwidth(nbytes=1 << 20) > 0
    assert probes.compute_bandwidth(nbytes=1 << 20) > 0
    assert probes.dequant_bandwidth([(128, 64), (128, 64), (64, 128)], bits=4, dtype="fp32") > 0
    assert 0 < probes.per_token_overhead(num_layers=1, num_experts=2, top_k=1, tokens=4, warmup=1) < 10


def test_the_expert_probe_times_the_format_the_engine_uses(monkeypatch) -> None:
    """The expert probe times the format it is given, the engine's choice (at 2 bits in bf16 on a CPU int2's
    expansion and the int4 kernel, in fp32 HQQ's layout); a large expert is timed scaled down, in its format."""
    import torch

    from moe_tui.offload.formats import ExpertFormat, HqqFormat, Int2Format, make_format

    timed: list[ExpertFormat] = []
    for cls in (Int2Format, HqqFormat):
        forward = cls.forward
        monkeypatch.setattr(cls, "forward", lambda fmt, v, x, glu, f=forward: (timed.append(fmt), f(fmt, v, x, glu))[1])
    shapes = [(256, 128), (256, 128), (128, 256)]
    two_bits = make_format(shapes, torch.bfloat16, 2, 64, "cpu")
    assert probes.expert_bandwidth(two_bits) > 0
    assert {type(fmt) for fmt in timed} == {Int2Format} and timed[0].shapes == shapes
    timed.clear()
    assert probes.expert_bandwidth(make_format(shapes, torch.float32, 2, 64, "cpu")) > 0
    assert {type(fmt) for fmt in timed} == {HqqFormat}, "no int2 in fp32: HQQ's"
    timed.clear()
    monkeypatch.setattr(probes, "EXPERT_PROBE_BYTES", 8 * 1024)  # about a quarter of this 2-bit expert's buffer
    assert probes.expert_bandwidth(two_bits) > 0
    assert {type(fmt) for fmt in timed} == {Int2Format} and timed[0].shapes == [(128, 128), (128, 128), (128, 128)]


def test_without_bandwidths_memory_only() -> None:
    c = plan.estimate(facts_by_hand(), plan.Machine(host_bytes=10**9), "hqq4", "hqq4", 1, 0, (1.0, 0.0, 0.5))
    assert c.tokens_per_s is None and c.bound == ""
    assert c.fast_bytes > 0


def test_uniform_copy_model() -> None:
    model = plan.uniform_copy_model(facts_by_hand())
    assert model(1, 0) == (2 * 2 * 0.75, 0.0, 0.25)
    assert model(4, 0) == (0.0, 0.0, 1.0)
    assert model(2, 1) is None


def test_nothing_fits_names_the_smallest_need() -> None:
    facts = facts_by_hand()
    machine = plan.Machine(host_bytes=10**9, fast_bytes=1000)
    least = plan.fast_tier_need(facts, "hqq2", "hqq4", 1, machine.context, device="cuda").total
    message = plan.nothing_fits_message(facts, machine)
    assert "even k=1 at 2 bits" in message and f"needs {format_bytes(least)}" in message
    assert "KV cache for 4096 tokens 40.0 KiB, margin 1.0 GiB" in message
    assert "you have 1000 B" in message
    candidates = plan.candidates(facts, machine, plan.uniform_copy_model(facts), prefetch_depths=(0,))
    assert not [c for c in candidates if plan.fits(c, machine)]


def test_best_per_precision_picks_the_largest_k_that_fits() -> None:
    facts = facts_by_hand()
    machine = plan.Machine(
        host_bytes=10**9,
        fast_bytes=10_000 + 3 * 2 * 400 + CUDA_MARGIN,
        transfer_bandwidth=1e3,
        compute_bandwidth=1e4,
        context=0,
    )
    every = plan.candidates(facts, machine, plan.uniform_copy_model(facts), prefetch_depths=(0,))
    best = {
        (c.expert_precision, c.attn_precision): c
        for c in plan.best_per_precision([c for c in every if plan.fits(c, machine)])
    }
    assert best[("hqq4", "hqq4")].cache_size == 3
    assert best[("hqq2", "hqq4")].cache_size == 4
    assert best[("bf16", "bf16")].cache_size == 1


def test_spread_slots_follows_the_miss_curves() -> None:
    # Layer 0 gains 3 misses/token from a second slot, layer 1 gains 1 and then 0.5 from a third.
    curves = [[4.0, 1.0, 1.0], [2.0, 1.0, 0.5]]
    assert plan.spread_slots(curves, 2) == [1, 1]
    assert plan.spread_slots(curves, 3) == [2, 1]
    assert plan.spread_slots(curves, 4) == [2, 2]
    assert plan.spread_slots(curves, 5) == [2, 3]
    assert plan.spread_slots(curves, 6) == [2, 3]  # a third slot in layer 0 gains nothing: left unspent


def test_spread_slots_picks_as_a_search_over_every_layer_at_every_step_would() -> None:
    """spread_slots keeps each layer's steepest drop between steps; on random curves (flat stretches, ties, too
    few slots) it shares the slots exactly as recomputing every layer's best at every step does."""
    import random

    def recomputing(curves: list[list[float]], slots: int) -> list[int]:
        sizes, remaining = [1] * len(curves), slots - len(curves)
        while remaining > 0:
            best = None
            for layer, (curve, k) in enumerate(zip(curves, sizes, strict=True)):
                for extra in range(1, min(remaining, len(curve) - k) + 1):
                    rate = (curve[k - 1] - curve[k - 1 + extra]) / extra
                    if rate > 0 and (best is None or rate > best[0]):
                        best = (rate, layer, extra)
            if best is None:
                return sizes
            sizes[best[1]] += best[2]
            remaining -= best[2]
        return sizes

    rng = random.Random(3)
    for _ in range(2000):
        experts = rng.randint(1, 12)
        curves = [
            sorted((round(rng.random() * 3, rng.choice([0, 1])) for _ in range(experts)), reverse=True)
            for _ in range(rng.randint(1, 6))
        ]
        slots = rng.randint(len(curves), len(curves) * experts + 3)
        assert plan.spread_slots(curves, slots) == recomputing(curves, slots), (curves, slots)


def test_per_layer_candidate_beats_uniform_slots() -> None:
    facts = facts_by_hand()
    curves = [[4.0, 1.0, 1.0, 1.0], [2.0, 1.0, 0.5, 0.5]]
    # Room for 5 slots of 400 bytes: uniform k=2 uses 4 (2 misses/token); spread 2+3 gives 1.5.
    machine = plan.Machine(host_bytes=10**9, fast_bytes=10_000 + 5 * 400 + 399 + CUDA_MARGIN, context=0)
    c = plan.per_layer_candidate(facts, machine, "hqq4", "hqq4", curves)
    assert c is not None and c.layer_sizes == (2, 3)
    assert c.misses_per_token == 1.5 and c.hit_rate == pytest.approx(1 - 1.5 / 4)
    assert c.fast_bytes == 10_000 + 5 * 400 + CUDA_MARGIN and plan.fits(c, machine)
    even = plan.Machine(host_bytes=10**9, fast_bytes=10_000 + 4 * 400 + CUDA_MARGIN, context=0)
    assert plan.per_layer_candidate(facts, even, "hqq4", "hqq4", [[4.0, 1.0], [4.0, 1.0]]) is None


def decode_trace(routing: list[list[tuple[int, ...]]], prefetch: bool) -> tuple[TraceHeader, list]:
    """A trace with one prefill (experts 0 and 1 in every layer) followed by decode steps."""
    header = TraceHeader(
        model="toy", num_layers=2, num_experts=4, top_k=1, cache_size=(1, 1), prefetch=int(prefetch), expert_bytes=1
    )
    events: list = []
    steps = [[(0, 1), (0, 1)], *routing]
    for step, layers in enumerate(steps):
        for layer, experts in enumerate(layers):
            n = len(experts)
            events.append(
                LayerStep(
                    step=step,
                    layer=layer,
                    n_tokens=4 if step == 0 else 1,
                    experts=experts,
                    counts=(1,) * n,
                    weights=(1.0,) * n,
                    hits=(False,) * n,
                    prefetch_hits=(False,) * n,
                    prefetch_issued=experts if prefetch and step else (),
                    slots=(),
                )
            )
        events.append(TokenEvent(step, "x"))
    return header, events


def test_trace_copy_model_counts_decoded_tokens_only() -> None:
    header, events = decode_trace([[(0,), (2,)], [(3,), (2,)]], prefetch=False)
    model = plan.trace_copy_model(header, events)
    # k=2 after the prefill holds {0, 1} in both layers: layer 0 hits 0 then misses 3; layer 1 misses 2 then hits.
    assert model(2, 0) == (2 / 2, 0.0, 0.5)
    assert model(2, 1) is None  # the trace holds no prefetch guesses


def test_trace_copy_model_replays_prefetch() -> None:
    header, events = decode_trace([[(0,), (2,)], [(3,), (2,)]], prefetch=True)
    misses, prefetched, hit_rate = plan.trace_copy_model(header, events)(1, 1)
    assert (misses, hit_rate) == (0.0, 1.0)  # exact guesses: every decoded expert was prefetched
    assert prefetched == pytest.approx(3 / 2)  # 3 copies (layer 1 already held 2 for the second token) / 2 tokens


def test_cli_plan_table_and_json(tiny_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", str(tiny_config), "--vram", "1028MiB", "--ram", "2GiB", "--context", "256"]  # 1 GiB margin
    argv += ["--bandwidth", "10", "--compute-bandwidth", "100"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "2 MoE layers x 4 experts, top-2, fp32" in out
    assert "transfer bandwidth: 10.0 GB/s (given)" in out and "max(C, P) + M on CUDA" in out
    assert f"1. moe-tui chat --model {tiny_config} --cache-size" in out
    assert f"to measure them side by side:\n  moe-tui bench --model {tiny_config} --device cuda --compare k=" in out
    assert cli.main([*argv, "--json", "--all"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fitting"] == len(data["configurations"]) > 0
    for entry in data["configurations"]:
        assert entry["fast_bytes"] <= 1028 * 1024**2
        assert entry["tokens_per_s"] == pytest.approx(1 / entry["seconds_per_token"])


def test_cli_plan_cpu_only_measures_bandwidth(tiny_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", str(tiny_config), "--ram", "1GiB"]) == 0
    out = capsys.readouterr().out
    assert "fast tier host RAM (CPU only)" in out and "measured here (host RAM to host RAM)" in out
    assert "per-token overhead O:" in out and "dequantization bandwidth: hqq4" in out
    assert "expert bandwidth: fp32 " in out and "hqq2 (unfused) " in out and "hqq3 (unfused) " in out
    assert "\nhqq4 (unfused)  " in out, "the experts column names the engine's format (no fp32 kernel)"


def error_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Exit 2 with one line on stderr."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("moe-tui: error: ") and err.count("\n") == 1
    return err


def test_cli_plan_nothing_fits(capsys: pytest.CaptureFixture[str]) -> None:
    err = error_of(["plan", "mixtral-8x7b", "--vram", "2GiB", "--ram", "64GiB"], capsys)
    assert "even k=1 at 2 bits (4-bit attention) needs 4.8 GiB of fast-tier memory" in err
    assert "KV cache for 4096 tokens 512.0 MiB, activations 116.3 MiB, margin 1.0 GiB" in err
    assert "you have 2.0 GiB" in err


def test_cli_plan_bad_inputs(tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "--vram 'big'" in error_of(["plan", str(tiny_config), "--vram", "big"], capsys)
    assert "no such file" in error_of(["plan", str(tmp_path / "missing.json")], capsys)
    trace = tmp_path / "other.jsonl"
    header = TraceHeader(model="other", num_layers=3, num_experts=8, top_k=2, cache_size=(2, 2, 2))
    trace.write_text(json.dumps({"type": "header", "schema": 1, **{**header.__dict__, "cache_size": [2, 2, 2]}}) + "\n")
    err = error_of(["plan", str(tiny_config), "--ram", "1GiB", "--bandwidth", "1", "--trace", str(trace)], capsys)
    assert "3 MoE layers x 8 experts, top-2" in err and "2 MoE layers x 4 experts, top-2" in err


def test_cli_plan_spreads_slots_over_layers(
    tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Layer 0 always uses experts 0 and 1; layer 1 cycles through all four: 2 + 4 slots beat 3 + 3.
    trace = tmp_path / "skewed.jsonl"
    header = TraceHeader(model="tiny", num_layers=2, num_experts=4, top_k=2, cache_size=(2, 2), expert_bytes=1)
    with trace.open("w") as handle:
        telemetry = Telemetry(header, trace=handle)
        for step in range(40):
            for layer, experts in enumerate([(0, 1), ((0, 1), (2, 3))[step % 2]]):
                telemetry.record_step(
                    LayerStep(step, layer, 1, experts, (1, 1), (0.5, 0.5), (False,) * 2, (False,) * 2, (), ())
                )
        telemetry.close()
    facts = plan.model_facts(load_config(tiny_config))
    room = plan.fast_tier_need(facts, "fp32", "fp32", 0, 256, device="cuda").total + 6 * facts.expert_bytes["fp32"]
    argv = ["plan", str(tiny_config), "--vram", f"{room}B", "--ram", "1GiB", "--context", "256", "--trace", str(trace)]
    argv += ["--bandwidth", "10", "--compute-bandwidth", "100", "--overhead-ms", "0", "--json", "--all"]
    data = json.loads(run_ok(argv, capsys))
    spread = [c for c in data["configurations"] if c["layer_sizes"]]
    fp32 = [c for c in spread if c["expert_precision"] == c["attn_precision"] == "fp32"]
    assert [c["layer_sizes"] for c in fp32] == [[2, 4]]
    assert fp32[0]["misses_per_token"] == pytest.approx((2 + 4) / 40)  # only each expert's first use
    command = shlex.split(fp32[0]["command"])
    assert command[:2] == ["moe-tui", "chat"] and "--cache-size" in command
    from moe_tui.commands.chat import options_from_args

    options = options_from_args(cli.build_parser().parse_args(command[1:]))
    assert (options.model, options.engine.cache_size, options.engine.prefetch, options.engine.expert_bits) == (
        str(tiny_config),
        [2, 4],
        0,
        None,
    )
    assert options.engine.device == "cuda"
    # bench reads the same configuration from the plan's bench line
    bench_line = shlex.split(data["bench_command"])
    assert bench_line[:6] == ["moe-tui", "bench", "--model", str(tiny_config), "--device", "cuda"]
    assert fp32[0]["bench"] in bench_line[bench_line.index("--compare") + 1 :]
    from moe_tui.bench import parse_spec

    engine = parse_spec(fp32[0]["bench"], 4).engine
    assert (engine.cache_size, engine.prefetch, engine.expert_bits) == ([2, 4], 0, None)


def run_ok(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI expecting success; its standard output."""
    assert cli.main(argv) == 0
    return capsys.readouterr().out


MOE_CONFIGS = sorted(
    path.stem
    for path in (Path(__file__).resolve().parent.parent / "samples" / "configs").glob("*.json")
    if "llama" not in path.stem
)


@pytest.mark.parametrize("name", MOE_CONFIGS)
def test_every_bundled_moe_config_can_be_planned(name: str) -> None:
    """The planner's facts use the matrices the store packs (gpt-oss's expert biases stay resident), so the
    dequantization workspace is the engine's own figure for every bundled family."""
    facts = plan.model_facts(load_config(name), name=name)
    assert facts.expert_shapes and all(len(shape) == 2 for shape in facts.expert_shapes)
    assert facts.workspace_bytes["hqq2"] > 0 and facts.workspace_bytes[facts.dtype] == 0
    machine = plan.Machine(host_bytes=1 << 50, fast_bytes=1 << 50)
    assert plan.candidates(facts, machine, plan.uniform_copy_model(facts))


def test_plan_counts_experts_in_the_format_the_engine_would_use(tmp_path: Path, capsys) -> None:
    """On a CPU in bf16, 3-bit experts are int3 (3 bits a weight, not HQQ's 3.2): plan's bytes, name and
    workspace are that format's, as the loader's memory check counts them."""
    import torch

    from moe_tui.offload.formats import make_format

    path = tmp_path / "config.json"
    path.write_text(json.dumps({**TINY, "hidden_size": 128, "intermediate_size": 128, "torch_dtype": "bfloat16"}))
    argv = ["plan", str(path), "--ram", "1GiB", "--bandwidth", "10", "--compute-bandwidth", "100", "--overhead-ms", "1"]
    assert cli.main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    int3 = make_format([(128, 128), (128, 128), (128, 128)], torch.bfloat16, 3, 64, "cpu")
    assert data["model"]["expert_bytes"]["hqq3"] == int3.nbytes
    assert data["machine"]["formats"]["hqq3"] == "int3 (unfused)"
    assert data["machine"]["workspace_bytes"]["hqq3"] == int3.workspace_bytes
