"""The fast tier of one MoE layer: ``k`` preallocated expert slots and the bookkeeping of what is in them.

A :class:`LayerCache` owns one (k, nbytes) uint8 tensor on the compute device, allocated once; it never
grows during a forward pass. Which expert each slot holds, and which to evict, is the
:class:`~moe_tui.policies.SlotTable` it extends (the cache simulator's slot model too). On CUDA each slot also has two
events: ``ready`` (its last copy finished, recorded on the copy stream) and ``free`` (the last computation
reading it finished, recorded on the compute stream), so copies and computation are ordered on the device
without the host waiting. On CPU ``ready`` holds the slot's background copy (see :mod:`.transfer`).
"""

from __future__ import annotations

from typing import Any

import torch

from moe_tui.policies import EvictionPolicy, SlotTable


class LayerCache(SlotTable):
    """Slots of one MoE layer in the fast tier: the slot table plus the memory and events behind it."""

    def __init__(self, layer: int, capacity: int, nbytes: int, device: torch.device, policy: EvictionPolicy):
        super().__init__(capacity, policy)
        self.layer = layer
        self.nbytes = nbytes
        self.device = device
        self.slots = torch.empty(capacity, nbytes, dtype=torch.uint8, device=device)
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
    def allocated_bytes(self) -> int:
        """Bytes of the slot buffer."""
        return self.slots.numel()

    def forget_prefetch(self) -> None:
        """End of a pass (or an interrupted one): prefetch marks last one pass."""
        self.guesses.clear()
        self.issued.clear()
        self.prefetched.clear()
        self.prefetch_bytes = 0
