"""The slot model of one layer's expert cache, shared by the engine and the cache simulator (and so the lab,
the planner and the demo's checks): which expert each slot holds, the eviction policy, prefetch marks.

A policy only keeps bookkeeping about keys (expert ids); it owns no memory. :class:`SlotTable` asks it which
resident key to evict and tells it about every insertion, access and eviction. ``protected`` keys (the
experts the current layer still needs) are never chosen as victims. The engine's
:class:`~moe_tui.offload.cache.LayerCache` is a SlotTable with device memory behind its slots; the simulator
replays traces through a bare one, so both count hits and misses by the same rules.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable


class EvictionPolicy:
    """Base class: a score per resident key; the lowest score is evicted first.

    A policy whose scores only grow as they are set (``ordered``: LRU and FIFO, whose score is the time of the
    last use or of the loading) keeps its scores in eviction order, so finding the victim takes a look at the
    first few keys instead of every resident one: the cache lab replays caches of up to hundreds of slots.
    """

    name = "base"
    ordered = False

    def __init__(self) -> None:
        self._clock = 0
        self._score: dict[Hashable, tuple[int, ...]] = {}

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _set(self, key: Hashable, score: tuple[int, ...]) -> None:
        if self.ordered:
            self._score.pop(key, None)  # to the end: the dict stays in ascending score order
        self._score[key] = score

    def insert(self, key: Hashable) -> None:
        """A key was loaded into a slot."""
        raise NotImplementedError

    def access(self, key: Hashable) -> None:
        """A resident key was used."""
        raise NotImplementedError

    def evict(self, key: Hashable) -> None:
        """A key left its slot."""
        self._score.pop(key, None)

    def victim(self, resident: Collection[Hashable], protected: Collection[Hashable] = ()) -> Hashable | None:
        """The resident key to evict next, never one in ``protected``; None when every key is protected."""
        if self.ordered and len(self._score) == len(resident):  # every resident key scored: the first one free
            return next((key for key in self._score if key not in protected and key in resident), None)
        candidates = [key for key in resident if key not in protected]
        if not candidates:
            return None
        return min(candidates, key=lambda key: self._score.get(key, (0,)))

    def order(self, resident: Iterable[Hashable]) -> list[Hashable]:
        """Resident keys in eviction order, next victim first (what the cache panel shows)."""
        return sorted(resident, key=lambda key: self._score.get(key, (0,)))


class LRUPolicy(EvictionPolicy):
    """Least recently used: evict the key whose last insertion or use is oldest."""

    name = "lru"
    ordered = True

    def insert(self, key: Hashable) -> None:
        """Loading counts as a use."""
        self._set(key, (self._tick(),))

    def access(self, key: Hashable) -> None:
        """Move the key to the most-recent end."""
        self._set(key, (self._tick(),))


class FIFOPolicy(EvictionPolicy):
    """First in, first out: evict the key loaded longest ago, whatever its use since."""

    name = "fifo"
    ordered = True

    def insert(self, key: Hashable) -> None:
        """Remember when the key arrived."""
        self._set(key, (self._tick(),))

    def access(self, key: Hashable) -> None:
        """Use does not change the order."""


class LFUPolicy(EvictionPolicy):
    """Least frequently used since loaded; ties go to the least recently used."""

    name = "lfu"

    def insert(self, key: Hashable) -> None:
        """A loaded key starts with one use."""
        self._score[key] = (1, self._tick())

    def access(self, key: Hashable) -> None:
        """Count the use and refresh recency."""
        uses = self._score.get(key, (0, 0))[0]
        self._score[key] = (uses + 1, self._tick())


POLICIES: dict[str, type[EvictionPolicy]] = {cls.name: cls for cls in (LRUPolicy, LFUPolicy, FIFOPolicy)}


def make_policy(name: str) -> EvictionPolicy:
    """A fresh policy by name (``lru``, ``lfu``, ``fifo``); ValueError names the choices otherwise."""
    try:
        return POLICIES[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown cache policy {name!r}; choose from {', '.join(POLICIES)}") from None


class SlotTable:
    """``capacity`` slots of one MoE layer: which expert each holds, its policy, and which were prefetched."""

    def __init__(self, capacity: int, policy: EvictionPolicy):
        self.policy = policy
        self.expert_in: list[int | None] = [None] * capacity
        self.slot_of: dict[int, int] = {}
        self.prefetched: set[int] = set()  # loaded by a prefetch and not used since

    @property
    def capacity(self) -> int:
        """Number of slots (k)."""
        return len(self.expert_in)

    def victim(self, protected: Collection[int] = ()) -> int | None:
        """A slot to load into: an empty one first, otherwise the policy's victim outside ``protected``; None
        when every resident expert is protected."""
        if len(self.slot_of) < len(self.expert_in):
            return self.expert_in.index(None)
        expert = self.policy.victim(self.slot_of.keys(), protected)
        return None if expert is None else self.slot_of[expert]

    def assign(self, slot: int, expert: int) -> None:
        """Record that ``expert`` now occupies ``slot`` (evicting its previous occupant)."""
        self.clear(slot)
        self.expert_in[slot] = expert
        self.slot_of[expert] = slot
        self.policy.insert(expert)

    def clear(self, slot: int) -> None:
        """Empty ``slot`` (its contents are no longer trusted or no longer wanted)."""
        old = self.expert_in[slot]
        if old is not None:
            del self.slot_of[old]
            self.policy.evict(old)
            self.prefetched.discard(old)
        self.expert_in[slot] = None

    def use(self, expert: int) -> bool:
        """Record a hit on a resident expert; True when a prefetch had brought it in (a prefetch hit)."""
        self.policy.access(expert)
        if expert in self.prefetched:
            self.prefetched.discard(expert)
            return True
        return False

    def eviction_order(self) -> tuple[int | None, ...]:
        """Slot contents in eviction order, next victim first; empty slots (filled first) lead as None."""
        empty = len(self.expert_in) - len(self.slot_of)
        return (None,) * empty + tuple(self.policy.order(self.slot_of.keys()))
