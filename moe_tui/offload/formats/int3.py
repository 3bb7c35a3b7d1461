"""3-bit experts on the CPU, computed by PyTorch's int4 kernel after a per-chunk expansion (as :mod:`.int2`).

HQQ's 3-bit values (0..7) fit the int4 kernel's 4-bit fields, so in the kernel's packed layout every nibble
leaves its top bit clear: a packed byte uses ``0x77`` only, and bits 3 and 7 are free. A chunk of the kernel's
bytes, cut into quarters ``Q0 Q1 Q2 Q3``, is stored as its first three quarters with the six bits of each ``Q3``
byte spread over the free bits of the three bytes in the same position:

* ``Q0 | (Q3 & 0x11) << 3``, ``Q1 | (Q3 & 0x22) << 2``, ``Q2 | (Q3 & 0x44) << 1``;

three bytes for every four of the kernel's, exactly 3 bits per weight (HQQ's own 3-bit layout packs ten values
in 32 bits, 3.2 bits). Expanding a chunk is one AND that clears the free bits of the three stored quarters in
place in the workspace, then ``Q3`` put together from three shifts and masks of them. The first packing (pairs
as in int2, plus a byte of high bits per four) took int2's expansion and four shift-mask-ORs more: one
Mixtral-8x7B expert, one token, 2 threads, took 37 ms with it and 29 ms with this one, timed in turn in one
process (int2: 24 ms; across formats see ``benchmarks/expert_kernels.py``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from moe_tui.offload.formats.int2 import Int2Format

USED_MASK = 0x77  # the bits of a packed byte whose nibbles each hold a 3-bit value
# the bits of a Q3 byte that each stored quarter carries, and how far left they move into its free bits 3 and 7
SPREAD = ((0x11, 3), (0x22, 2), (0x44, 1))


class Int3Format(Int2Format):
    """HQQ 3-bit experts stored in three bytes for every four of the int4 kernel's, expanded chunk by chunk."""

    BITS = 3
    STORED = (3, 4)

    def _workspace(self, kernel_bytes: int) -> int:
        """The expansion, and a quarter of it more for the last quarter's parts on their way into place."""
        return kernel_bytes + kernel_bytes // 4

    def describe(self) -> dict[str, Any]:
        """The base description and the packing (a saved store in the first int3 packing is not reused)."""
        return {**super().describe(), "packing": "spread-free-bits"}

    @staticmethod
    def _squeeze(chunks: Tensor) -> Tensor:
        """Each row of ``chunks`` (one chunk's kernel bytes) as stored: the first three quarters carrying the last
        one in their free bits."""
        quarter = chunks.shape[1] // 4
        last = chunks[:, 3 * quarter :]
        parts = [
            chunks[:, index * quarter : (index + 1) * quarter] | ((last & mask) << shift)
            for index, (mask, shift) in enumerate(SPREAD)
        ]
        return torch.cat(parts, dim=1)

    @staticmethod
    def _expand(stored: Tensor, workspace: Tensor) -> None:
        """One chunk's stored bytes into the kernel's packed bytes at the start of ``workspace``; its last
        fifth holds each part of the last quarter on its way."""
        three = stored.numel()
        quarter = three // 3
        torch.bitwise_and(stored, USED_MASK, out=workspace[:three])
        last = workspace[three : three + quarter]
        scratch = workspace[three + quarter : three + 2 * quarter]
        for index, (mask, shift) in enumerate(SPREAD):
            part = stored[index * quarter : (index + 1) * quarter]
            target = last if index == 0 else scratch
            torch.bitwise_right_shift(part, shift, out=target)
            target.bitwise_and_(mask)
            if index:
                last.bitwise_or_(scratch)
