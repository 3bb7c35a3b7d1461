"""Copies per token at each cache size: from a routing trace replayed through the simulator, or uniform."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from moe_tui.errors import UserError
from moe_tui.plan.facts import ModelFacts

if TYPE_CHECKING:
    from moe_tui.telemetry import TraceEvent, TraceHeader


# (k, prefetch) -> (demand misses per token, prefetch copies per token, hit rate); None when not estimable.
CopyModel = Callable[[int, int], tuple[float, float, float] | None]


def trace_copy_model(header: TraceHeader, events: list[TraceEvent]) -> CopyModel:
    """Copies per decoded token from replaying a trace: LRU at k, or LRU with the trace's prefetch guesses.

    The trace's own prefetch depth is the only depth it can replay; other depths are not estimated.
    """
    from moe_tui.sim import simulate
    from moe_tui.sim.passes import has_prefetch, layer_passes

    passes = layer_passes(header, events)
    tokens = sum(p.n_tokens == 1 for p in passes[0])
    if tokens == 0:
        raise UserError("the trace holds no decoded tokens (only prefills): it cannot estimate decode copies")
    replayable = header.prefetch if has_prefetch(passes) else 0

    @functools.cache
    def model(k: int, prefetch: int) -> tuple[float, float, float] | None:
        if prefetch not in (0, replayable):
            return None
        policy = "lru+prefetch" if prefetch else "lru"
        total = simulate(header, events, k, policy, decode_only=True).total
        return total.misses / tokens, total.prefetch_issued / tokens, total.hit_rate

    return model


def trace_layer_misses(header: TraceHeader, events: list[TraceEvent]) -> list[list[float]]:
    """Demand misses per decoded token of each MoE layer under LRU at every k: ``result[layer][k - 1]``."""
    from moe_tui.sim.cache import simulate_layer
    from moe_tui.sim.passes import layer_passes

    passes = layer_passes(header, events)
    tokens = sum(p.n_tokens == 1 for p in passes[0]) or 1
    return [
        [simulate_layer(layer, k, "lru", decode_only=True).misses / tokens for k in range(1, header.num_experts + 1)]
        for layer in passes
    ]


def spread_slots(layer_misses: Sequence[Sequence[float]], slots: int) -> list[int]:
    """Share ``slots`` among MoE layers (at least one each): repeatedly give the layer with the steepest drop
    in misses per token per added slot (looking past flat stretches of its curve) the slots that drop takes;
    stops early when no layer gains from more slots."""
    sizes = [1] * len(layer_misses)
    remaining = slots - len(sizes)
    while remaining > 0:
        best: tuple[float, int, int] | None = None
        for layer, (curve, k) in enumerate(zip(layer_misses, sizes, strict=True)):
            for extra in range(1, min(remaining, len(curve) - k) + 1):
                rate = (curve[k - 1] - curve[k - 1 + extra]) / extra
                if rate > 0 and (best is None or rate > best[0]):
                    best = (rate, layer, extra)
        if best is None:
            break
        _, layer, extra = best
        sizes[layer] += extra
        remaining -= extra
    return sizes


def uniform_copy_model(facts: ModelFacts) -> CopyModel:
    """Copies per token under uniform routing: each selected expert is held with probability k / E; no prefetch."""

    def model(k: int, prefetch: int) -> tuple[float, float, float] | None:
        if prefetch:
            return None
        hit_rate = min(k, facts.num_experts) / facts.num_experts
        return facts.moe_layers * facts.top_k * (1 - hit_rate), 0.0, hit_rate

    return model
