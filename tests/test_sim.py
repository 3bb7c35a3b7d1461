"""The cache simulator on hand-made traces whose answers are known by hand, and Belady's MIN against brute force."""

from __future__ import annotations

import random

import pytest

from moe_tui.sim import (
    LabStopped,
    LayerPass,
    belady_layer,
    lab_sizes,
    layer_passes,
    recorded_result,
    run_lab,
    simulate,
    simulate_layer,
)
from moe_tui.telemetry import LayerStep, TokenEvent, TraceHeader

# The textbook reference string (Silberschatz, Operating System Concepts) with 3 frames:
# FIFO 15 faults, LRU 12, OPT 9.
TEXTBOOK = [7, 0, 1, 2, 0, 3, 0, 4, 2, 3, 0, 3, 2, 1, 2, 0, 1, 7, 0, 1]
# Belady's anomaly: FIFO misses more with 4 frames (10) than with 3 (9).
ANOMALY = [1, 2, 3, 4, 1, 2, 5, 1, 2, 3, 4, 5]


def singles(sequence: list[int]) -> list[LayerPass]:
    """One expert per pass (top-1 routing)."""
    return [LayerPass((e,)) for e in sequence]


@pytest.mark.parametrize(("policy", "misses"), [("fifo", 15), ("lru", 12)])
def test_textbook_reference_string(policy: str, misses: int) -> None:
    counters = simulate_layer(singles(TEXTBOOK), 3, policy)
    assert (counters.misses, counters.hits) == (misses, len(TEXTBOOK) - misses)


def test_textbook_optimum_is_nine_faults() -> None:
    assert belady_layer(singles(TEXTBOOK), 3).misses == 9


def test_lfu_keeps_the_frequent_expert() -> None:
    # 0 is used three times; with 2 slots LFU keeps it through the stream of one-off experts 1..4, LRU does not.
    sequence = [0, 0, 0, 1, 2, 0, 3, 4, 0]
    assert simulate_layer(singles(sequence), 2, "lfu").misses == 5  # 0, 1, 2, 3, 4
    assert simulate_layer(singles(sequence), 2, "lru").misses == 7  # 0 is evicted twice and missed again


def test_fifo_anomaly() -> None:
    assert simulate_layer(singles(ANOMALY), 3, "fifo").misses == 9
    assert simulate_layer(singles(ANOMALY), 4, "fifo").misses == 10


def test_a_cache_holding_every_expert_misses_only_once_per_expert() -> None:
    passes = [LayerPass((a, b)) for a, b in [(0, 1), (2, 3), (1, 2), (3, 0), (0, 2)]]
    for policy in ("lru", "lfu", "fifo"):
        assert simulate_layer(passes, 4, policy).misses == 4
    assert belady_layer(passes, 4).misses == 4


def test_top2_pass_keeps_its_own_experts() -> None:
    # k=2, top-2: the second expert of a pass must never evict the first.
    passes = [LayerPass((0, 1)), LayerPass((2, 3)), LayerPass((2, 3))]
    counters = simulate_layer(passes, 2, "fifo")
    assert (counters.hits, counters.misses) == (2, 4)


def test_pass_protects_its_own_resident_experts() -> None:
    # Slots hold 0 (older) and 1; the pass (2, 0) must evict 1, not the least recently used 0 it still needs.
    passes = [LayerPass((0,)), LayerPass((1,)), LayerPass((2, 0))]
    counters = simulate_layer(passes, 2, "lru")
    assert (counters.hits, counters.misses) == (1, 3)


def test_streaming_pass_with_more_experts_than_slots() -> None:
    # A prefill that uses 4 experts with 2 slots streams them through; the resident one is a hit first.
    passes = [LayerPass((1,)), LayerPass((0, 1, 2, 3))]
    counters = simulate_layer(passes, 2, "lru")
    assert (counters.hits, counters.misses) == (1, 4)
    assert belady_layer(passes, 2).misses == 4


def test_prefetch_hits_and_waste() -> None:
    # Each pass is prefetched: right guess for pass 2 (expert 1), wrong for pass 3 (guessed 3, used 2).
    passes = [LayerPass((0,)), LayerPass((1,), prefetch=(1,)), LayerPass((2,), prefetch=(3,))]
    counters = simulate_layer(passes, 1, "lru", prefetch=True)
    assert (counters.hits, counters.misses) == (1, 2)
    assert (counters.prefetch_issued, counters.prefetch_used) == (2, 1)
    assert counters.prefetch_recall == pytest.approx(1 / 3)


def test_prefetch_never_evicts_its_own_batch() -> None:
    # Two guesses into one slot: the second cannot evict the first, so only one copy starts.
    passes = [LayerPass((0,), prefetch=(0, 1))]
    counters = simulate_layer(passes, 1, "lru", prefetch=True)
    assert (counters.prefetch_issued, counters.prefetch_used, counters.hits) == (1, 1, 1)


def test_prefetched_expert_evicted_before_use_is_not_a_prefetch_hit() -> None:
    passes = [LayerPass((0,), prefetch=(5,)), LayerPass((5,))]
    counters = simulate_layer(passes, 1, "lru", prefetch=True)
    assert (counters.prefetch_issued, counters.prefetch_used, counters.hits) == (1, 0, 0)


def test_prefetch_never_evicts_a_guess_it_already_holds() -> None:
    # Slots hold 0 (least recent) and 1. Guessing (0, 2) loads 2 over 1, keeping the guessed 0.
    passes = [LayerPass((0,)), LayerPass((1,)), LayerPass((0,), prefetch=(0, 2))]
    counters = simulate_layer(passes, 2, "lru", prefetch=True)
    assert (counters.hits, counters.prefetch_issued, counters.prefetch_used) == (1, 1, 0)
    # A trace that lists only the started copy (2) cannot know 0 was guessed: LRU evicts 0, which then misses.
    only_issued = [*passes[:2], LayerPass((0,), prefetch=(2,))]
    assert simulate_layer(only_issued, 2, "lru", prefetch=True).hits == 0


def test_prefetch_mark_lasts_one_pass() -> None:
    # Guessed 1 for the first pass, which used 0; 1 stays resident and its use in the next pass is a plain hit.
    passes = [LayerPass((0,), prefetch=(1,)), LayerPass((1,))]
    counters = simulate_layer(passes, 2, "lru", prefetch=True)
    assert (counters.prefetch_issued, counters.prefetch_used, counters.hits) == (1, 0, 1)


def test_streaming_evicts_experts_outside_the_pass_first() -> None:
    # FIFO holds 0, 1, 4 (oldest first). The pass (0, 1, 2, 3) needs 4 experts in 3 slots: 2 evicts 4 (not in
    # the pass) although 0 is older; only 3 must evict an expert of the pass, then 0, the oldest. So 1 is still
    # held for the last pass (plain FIFO would have evicted 0 and then 1).
    passes = [LayerPass((0,)), LayerPass((1,)), LayerPass((4,)), LayerPass((0, 1, 2, 3)), LayerPass((1,))]
    counters = simulate_layer(passes, 3, "fifo")
    assert (counters.hits, counters.misses) == (3, 5)


def optimum_hits(passes: list[LayerPass], cache_size: int) -> int:
    """Most hits any demand-fetching cache can get on the passes' fetches, trying every possible victim.

    Dynamic programming over slot contents: a hit keeps them, a miss adds the expert, replacing any one
    resident expert when all slots are full.
    """
    best = {frozenset(): 0}
    for expert in (e for layer_pass in passes for e in layer_pass.experts):
        following: dict[frozenset[int], int] = {}
        for held, score in best.items():
            if expert in held:
                choices = [(held, score + 1)]
            elif len(held) < cache_size:
                choices = [(held | {expert}, score)]
            else:
                choices = [((held - {victim}) | {expert}, score) for victim in held]
            for state, value in choices:
                following[state] = max(following.get(state, -1), value)
        best = following
    return max(best.values())


@pytest.mark.parametrize("seed", range(40))
def test_belady_equals_brute_force_optimum_and_bounds_every_policy(seed: int) -> None:
    rng = random.Random(seed)
    num_experts = rng.randint(2, 5)
    top_k = rng.randint(1, num_experts)
    passes = []
    for _ in range(rng.randint(1, 9)):
        width = rng.randint(top_k, num_experts) if rng.random() < 0.2 else top_k  # some prefill-like passes
        passes.append(LayerPass(tuple(rng.sample(range(num_experts), width))))
    for k in range(1, num_experts + 1):
        optimum = optimum_hits(passes, k)
        assert belady_layer(passes, k).hits == optimum
        for policy in ("lru", "lfu", "fifo"):
            assert simulate_layer(passes, k, policy).hits <= optimum


def make_steps(routing: list[list[tuple[int, ...]]], prefetch: bool = False) -> list:
    """Trace events of a decode run: routing[step][layer] = the experts used; prefetch guesses are exact."""
    events: list = []
    for step, layers in enumerate(routing):
        for layer, experts in enumerate(layers):
            events.append(
                LayerStep(
                    step=step,
                    layer=layer,
                    n_tokens=1,
                    experts=experts,
                    counts=(1,) * len(experts),
                    weights=(1.0 / len(experts),) * len(experts),
                    hits=(False,) * len(experts),
                    prefetch_hits=(False,) * len(experts),
                    prefetch_issued=experts[:1] if prefetch else (),
                    slots=(),
                    bytes_loaded=100 * len(experts),
                )
            )
        events.append(TokenEvent(step=step, text="x"))
    return events


HEADER = TraceHeader(model="toy", num_layers=2, num_experts=4, top_k=1, cache_size=(1, 1), expert_bytes=100)


def test_layer_passes_split_by_layer_and_skip_tokens() -> None:
    events = make_steps([[(0,), (1,)], [(2,), (3,)]])
    passes = layer_passes(HEADER, events)
    assert passes == [[LayerPass((0,)), LayerPass((2,))], [LayerPass((1,)), LayerPass((3,))]]


def test_simulate_per_layer_sizes_and_bytes() -> None:
    events = make_steps([[(0,), (0,)], [(1,), (1,)], [(0,), (0,)]])
    result = simulate(HEADER, events, cache_size=(1, 2), policy="lru")
    assert [c.misses for c in result.layers] == [3, 2]
    assert result.total.misses == 5
    assert result.total.bytes_loaded == 500


def test_simulate_rejects_bad_sizes_and_policies() -> None:
    events = make_steps([[(0,), (0,)]])
    with pytest.raises(ValueError, match=r"outside 1\.\.4"):
        simulate(HEADER, events, cache_size=5)
    with pytest.raises(ValueError, match="2 MoE layers"):
        simulate(HEADER, events, cache_size=(1, 1, 1))
    with pytest.raises(ValueError, match="unknown cache policy"):
        simulate(HEADER, events, cache_size=1, policy="random")


def test_run_lab_covers_every_size_and_policy_with_gaps() -> None:
    routing = [[(e,), (e,)] for e in TEXTBOOK]
    header = TraceHeader(model="toy", num_layers=2, num_experts=8, top_k=1, cache_size=(3, 3), expert_bytes=10)
    report = run_lab(header, make_steps(routing, prefetch=True))
    assert report.cache_sizes == tuple(range(1, 9))
    assert report.policies == ("lru", "lfu", "fifo", "lru+prefetch", "lru+prefetch+host", "min")
    assert report.tokens == len(TEXTBOOK) and report.passes == len(TEXTBOOK)
    assert report.result("lru", 3).total.misses == 24
    assert report.gap("lru", 3) == pytest.approx((11 - 8) / 20)
    assert report.gap("fifo", 3, layer=1) == pytest.approx((11 - 5) / 20)
    for k in report.cache_sizes:
        for policy in ("lru", "lfu", "fifo"):
            assert report.gap(policy, k) >= 0
    # Perfect guesses: every pass was prefetched correctly, so every fetch after the first is a prefetch hit.
    assert report.hit_rate("lru+prefetch", 1) == 1.0
    # with perfect guesses nothing misses, so computing misses on the host changes nothing
    assert report.result("lru+prefetch+host", 1).total == report.result("lru+prefetch", 1).total
    data = report.to_dict()
    assert len(data["replays"]) == 8 * 6
    assert data["recorded"]["total"]["misses"] == 40


def test_a_lab_of_many_experts_replays_every_small_cache_size_and_round_large_ones() -> None:
    """A 128-expert model replayed all 128 sizes: 6 policies x 128 full replays of the trace (two minutes for
    200 tokens of a 48-layer Qwen3-shaped trace), a table of 128 rows."""
    qwen3 = TraceHeader(model="q", num_layers=2, num_experts=128, top_k=8, cache_size=(20, 20), expert_bytes=1)
    every_small = tuple(range(1, 17))
    assert lab_sizes(qwen3) == (*every_small, 20, 24, 32, 48, 64, 96, 128)  # the recorded k=20 among them
    assert lab_sizes(qwen3, also=(100,)) == (*every_small, 20, 24, 32, 48, 64, 96, 100, 128)
    report = run_lab(qwen3, make_steps([[(0, 1), (2, 3)], [(4, 5), (0, 1)]]))
    assert report.cache_sizes == lab_sizes(qwen3)
    assert lab_sizes(HEADER) == tuple(range(1, HEADER.num_experts + 1))  # a small model: every size


def test_run_lab_without_prefetch_guesses_has_no_prefetch_policy() -> None:
    report = run_lab(HEADER, make_steps([[(0,), (1,)]]))
    assert report.policies == ("lru", "lfu", "fifo", "min")


def test_run_lab_asks_before_each_replay_whether_to_stop() -> None:
    """The lab's screen stops a long replay when the user leaves it: the answer is asked before every replay."""
    asked: list[int] = []

    def stop_at_the_third() -> bool:
        asked.append(1)
        return len(asked) == 3

    with pytest.raises(LabStopped):
        run_lab(HEADER, make_steps([[(0,), (1,)]]), should_stop=stop_at_the_third)
    assert len(asked) == 3
    never: list[int] = []
    report = run_lab(HEADER, make_steps([[(0,), (1,)]]), should_stop=lambda: bool(never.append(1)))
    assert len(never) == len(report.results)  # once per replay


def test_recorded_result_folds_the_engine_counts() -> None:
    events = make_steps([[(0,), (1,)], [(2,), (3,)]])
    recorded = recorded_result(HEADER, events)
    assert recorded.total.misses == 4
    assert recorded.total.bytes_loaded == 400


def test_decode_only_replays_prefill_without_counting_it() -> None:
    # The prefill loads 0 and 1 (k=2); the decode passes then hit 0 and miss 2 and 3.
    passes = [LayerPass((0, 1), n_tokens=5), LayerPass((0,)), LayerPass((2,)), LayerPass((3,))]
    counters = simulate_layer(passes, 2, "lru", decode_only=True)
    assert (counters.hits, counters.misses) == (1, 2)
    assert simulate_layer(passes, 2, "lru").misses == 4


def test_misses_computed_on_the_host_copy_nothing_and_leave_the_slots_alone() -> None:
    passes = [
        LayerPass((0, 1), prefetch=(0,)),  # 0 prefetched and used; 1 misses (copied: it stays in a slot)
        LayerPass((1, 2), prefetch=(3,)),  # a wrong guess; 1 hits only if the first miss was copied
        LayerPass((3,), prefetch=()),  # 3 hits only if no copied miss evicted it
    ]
    copied = simulate_layer(passes, 2, "lru", prefetch=True)
    hosted = simulate_layer(passes, 2, "lru", prefetch=True, host_misses=True)
    assert (copied.hits, copied.misses, copied.host) == (2, 3, 0)
    assert (hosted.hits, hosted.misses, hosted.host) == (2, 0, 3)
    assert hosted.prefetch_issued == copied.prefetch_issued == 2
    assert hosted.accesses == copied.accesses == 5
    assert hosted.prefetch_recall == copied.prefetch_recall == 1 / 4
