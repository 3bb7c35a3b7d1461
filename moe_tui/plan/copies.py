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
    from moe_tui.sim.lab import simulate_passes
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
        total = simulate_passes(header, passes, k, policy, decode_only=True).total
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

    def steepest(layer: int) -> tuple[float, int] | None:
        """The layer's best (drop per slot, slots) from its size now, within what remains; None: no gain."""
        curve, k = layer_misses[layer], sizes[layer]
        best: tuple[float, int] | None = None
        for extra in range(1, min(remaining, len(curve) - k) + 1):
            rate = (curve[k - 1] - curve[k - 1 + extra]) / extra
            if rate > 0 and (best is None or rate > best[0]):
                best = (rate, extra)
        return best

    # Each layer's steepest drop is kept until its size changes, or until it asks for more slots than remain
    # (fewer slots left only narrow the choice): one layer's curve is read per step, not all of them.
    steepest_of = [steepest(layer) for layer in range(len(sizes))]
    while remaining > 0:
        choice: tuple[float, int, int] | None = None  # (rate, layer, slots): the steepest, first layer on a tie
        for layer, found in enumerate(steepest_of):
            if found is not None and found[1] > remaining:
                found = steepest_of[layer] = steepest(layer)
            if found is not None and (choice is None or found[0] > choice[0]):
                choice = (found[0], layer, found[1])
        if choice is None:
            break
        _, layer, extra = choice
        sizes[layer] += extra
        remaining -= extra
        steepest_of[layer] = steepest(layer)
    return sizes


def uniform_copy_model(facts: ModelFacts) -> CopyModel:
    """Copies per token under uniform routing: each selected expert is held with probability k / E; no prefetch."""

    def model(k: int, prefetch: int) -> tuple[float, float, float] | None:
        if prefetch:
            return None
        hit_rate = min(k, facts.num_experts) / facts.num_experts
        return facts.moe_layers * facts.top_k * (1 - hit_rate), 0.0, hit_rate

    return model
