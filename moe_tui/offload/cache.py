"""The fast tier of one MoE layer: ``k`` preallocated expert slots and the bookkeeping of what is in them.

A :class:`LayerCache` owns one (k, nbytes) uint8 tensor on the compute device, allocated once; it never
grows during a forward pass. It maps experts to slots and asks an eviction policy
(:mod:`moe_tui.policies`) for victims, never choosing a protected expert. On CUDA each slot also has two
events: ``ready`` (its last copy finished, recorded on the copy stream) and ``free`` (the last computation
reading it finished, recorded on the compute stream), so copies and computation are ordered on the device
without the host waiting. On CPU ``ready`` holds the slot's background copy (see :mod:`.transfer`).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch

from moe_tui.policies import EvictionPolicy


class LayerCache:
    """Slots of one MoE layer in the fast tier."""

    def __init__(self, layer: int, capacity: int, nbytes: int, device: torch.device, policy: EvictionPolicy):
        self.layer = layer
        self.nbytes = nbytes
        self.device = device
        self.policy = policy
        self.slots = torch.empty(capacity, nbytes, dtype=torch.uint8, device=device)
        self.expert_in: list[int | None] = [None] * capacity
        self.slot_of: dict[int, int] = {}
        self.prefetched: set[int] = set()  # loaded by a prefetch and not used since
        self.guesses: list[int] = []  # experts a prefetch guessed for this layer's next pass
        self.issued: list[int] = []  # the guesses whose copy it started (the others were held already)
        self.prefetch_bytes = 0  # bytes those copies moved
        cuda = device.type == "cuda"
        # completion of the slot's last copy: a CUDA event, or the CPU copy thread's job
        self.ready: list[Any] = [torch.cuda.Event() if cuda else None for _ in range(capacity)]
        self.free = [torch.cuda.Event() if cuda else None for _ in range(capacity)]
        self.views: list[Any] = [None] * capacity  # the kernel-ready views of each slot, made once
        self.pending = [False] * capacity  # a copy into the slot was issued and not yet waited for
        self.used = [False] * capacity  # ``free`` was recorded at least once

    @property
    def capacity(self) -> int:
        """Number of slots (k)."""
        return len(self.expert_in)

    @property
    def allocated_bytes(self) -> int:
        """Bytes of the slot buffer."""
        return self.slots.numel()

    def victim(self, protected: Collection[int] = ()) -> int | None:
        """A slot to load into: an empty one first, otherwise the policy's victim outside ``protected``."""
        for index, expert in enumerate(self.expert_in):
            if expert is None:
                return index
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

    def forget_prefetch(self) -> None:
        """End of a pass (or an interrupted one): prefetch marks last one pass."""
        self.guesses.clear()
        self.issued.clear()
        self.prefetched.clear()
        self.prefetch_bytes = 0

    def eviction_order(self) -> tuple[int | None, ...]:
        """Slot contents in eviction order, next victim first; empty slots (filled first) lead as None."""
        empty = len(self.expert_in) - len(self.slot_of)
        return (None,) * empty + tuple(self.policy.order(self.slot_of.keys()))
