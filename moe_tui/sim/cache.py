"""Replay one MoE layer's passes through ``k`` expert slots, under an online policy or Belady's MIN.

The model of a pass, shared by every policy so that their counts compare:

1. With prefetch on, the experts the recording engine prefetched for this pass are loaded first (each one
   not already held costs a copy and may evict a resident expert, never another guess of the same batch).
2. The pass then fetches its distinct experts in the trace's order (the order the recording engine fetched
   them: held ones first). One already held is a hit (a prefetch hit if this pass's prefetch brought it
   in); one not held is a miss, loaded into a free slot or into the slot of the policy's victim, or, when
   misses are computed on the host, computed there from the store without entering a slot.
3. The victim is never one of the pass's own experts while another resident expert can go, so a pass that
   needs no more experts than there are slots ends with all of them resident. One that needs more (a
   prefill on a small cache) streams the rest through the slots: each expert is computed as soon as it is
   loaded, and then any expert the pass has finished with may make room for the next.
4. Prefetch marks last until the end of the pass they were made for, as in the engine: a guess that was
   not used by that pass and stays resident is an ordinary hit later.

Belady's MIN sees the same fetches as one sequence and evicts the resident expert whose next fetch lies
furthest in the future (never fetched again counts as infinitely far). It has the fewest misses any
demand-fetching cache of that size can have on the trace (every online policy above is one such cache), so
its hit rate bounds LRU, LFU and FIFO from above. Prefetching replays are not bounded by it: a prefetch hit
is paid for by a copy made ahead of time, so compare their copies (misses plus prefetches), not only their
hit rates.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

from moe_tui.policies import SlotTable, make_policy
from moe_tui.sim.passes import LayerPass
from moe_tui.telemetry import Counters

MIN_POLICY = "min"


def simulate_layer(
    passes: Sequence[LayerPass],
    cache_size: int,
    policy: str,
    prefetch: bool = False,
    decode_only: bool = False,
    host_misses: bool = False,
) -> Counters:
    """Hits, misses and prefetch counts of an online policy (``lru``, ``lfu``, ``fifo``) on one layer's passes.

    With ``decode_only`` every pass is replayed but only one-token passes are counted (what decode speed
    depends on). With ``host_misses`` a miss is computed on the host from the store (the engine's
    ``miss=host``): counted in ``host``, it copies nothing and leaves the slots as they were, so only
    prefetch fills them. ``bytes_loaded`` and the times are left at zero: the caller scales copies by the
    expert size.
    """
    _check_cache_size(cache_size)
    slots = SlotTable(cache_size, make_policy(policy))
    hits = misses = issued = used = host = 0
    for layer_pass in passes:
        counted = not decode_only or layer_pass.n_tokens == 1
        if prefetch:
            issued += _prefetch(slots, layer_pass.prefetch) * counted
        experts = layer_pass.experts
        for index, expert in enumerate(experts):
            if expert in slots.slot_of:
                used += slots.use(expert) * counted
                hits += counted
                continue
            if host_misses:
                host += counted
                continue
            misses += counted
            # the pass's own experts stay while another can go; then those it has finished with; then any
            for protected in (experts, experts[index + 1 :], ()):
                if _load(slots, expert, protected):
                    break
        slots.prefetched.clear()
    return Counters(hits=hits, misses=misses, prefetch_issued=issued, prefetch_used=used, host=host)


def belady_layer(passes: Sequence[LayerPass], cache_size: int) -> Counters:
    """Hits and misses of Belady's MIN (the offline optimum for demand fetching) on one layer's passes."""
    _check_cache_size(cache_size)
    fetches = [expert for layer_pass in passes for expert in layer_pass.experts]
    following = _next_fetch(fetches)
    next_fetch: dict[int, float] = {}
    resident: set[int] = set()
    hits = 0
    for position, expert in enumerate(fetches):
        if expert in resident:
            hits += 1
        else:
            if len(resident) >= cache_size:
                resident.remove(max(resident, key=lambda e: (next_fetch[e], e)))
            resident.add(expert)
        next_fetch[expert] = following[position]
    return Counters(hits=hits, misses=len(fetches) - hits)


def _next_fetch(fetches: Sequence[int]) -> list[float]:
    """For each position, the position of the next fetch of the same expert (infinity when there is none)."""
    upcoming: dict[int, float] = {}
    result = [math.inf] * len(fetches)
    for position in range(len(fetches) - 1, -1, -1):
        expert = fetches[position]
        result[position] = upcoming.get(expert, math.inf)
        upcoming[expert] = position
    return result


def _check_cache_size(cache_size: int) -> None:
    if cache_size < 1:
        raise ValueError(f"cache size must be at least 1, not {cache_size}")


def _load(slots: SlotTable, expert: int, protected: Collection[int]) -> bool:
    """Bring ``expert`` into a slot, evicting the policy's victim if full; False when every slot is protected."""
    slot = slots.victim(protected)
    if slot is None:
        return False
    slots.assign(slot, expert)
    return True


def _prefetch(slots: SlotTable, guesses: Sequence[int]) -> int:
    """Load the guesses not yet resident, never evicting another guess; returns the copies started."""
    batch = set(guesses)
    started = 0
    for expert in dict.fromkeys(guesses):
        if expert not in slots.slot_of and _load(slots, expert, batch):
            slots.prefetched.add(expert)
            started += 1
    return started
