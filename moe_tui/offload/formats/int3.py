"""3-bit experts on the CPU, computed by PyTorch's int4 kernel after a per-chunk expansion (as :mod:`.int2`).

HQQ's 3-bit values (0..7) fit the int4 kernel's 4-bit fields, so in the kernel's packed layout every nibble
uses bits 0-2 only: a packed byte is ``(x & 0x33) | (x & 0x44)``. The ``0x33`` parts of two bytes share one
stored byte, as in int2; the ``0x44`` parts (bits 2 and 6) of four bytes share another, each shifted into a
pair of bit positions of its own. A chunk of the kernel's bytes, cut into quarters ``Q0 Q1 Q2 Q3``, is stored as

* pairs: ``low(Q0 Q1) | low(Q2 Q3) << 2``, half the chunk's size, ``low`` being ``& 0x33``;
* high bits: ``high(Q0) >> 2 | high(Q1) >> 1 | high(Q2) | high(Q3) << 1``, a quarter, ``high`` being ``& 0x44``;

three bytes for every four of the kernel's, exactly 3 bits per weight (HQQ's own 3-bit layout packs ten values
in 32 bits, 3.2 bits). Expanding a chunk is int2's AND and shift for the pairs, then four shifts, ANDs and ORs
of the high bits into the quarters, in a workspace that stays in cache. One Mixtral-8x7B expert, one token:
see ``benchmarks/expert_kernels.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from moe_tui.offload.formats.int2 import PAIR_MASK, Int2Format, expand_pairs

HIGH_MASK = 0x44  # bit 2 of each nibble: what a 3-bit value has beyond int2's pair
# the shift that moves each quarter's high bits into the stored byte (negative: to the right), and back
QUARTER_SHIFTS = (-2, -1, 0, 1)


class Int3Format(Int2Format):
    """HQQ 3-bit experts stored in three bytes for every four of the int4 kernel's, expanded chunk by chunk."""

    BITS = 3
    STORED = (3, 4)

    def _workspace(self, kernel_bytes: int) -> int:
        """The expansion, and a quarter of it more for the high bits on their way into place."""
        return kernel_bytes + kernel_bytes // 4

    @staticmethod
    def _squeeze(chunks: Tensor) -> Tensor:
        """Each row of ``chunks`` (one chunk's kernel bytes) as stored: the pairs, then the high bits."""
        quarter = chunks.shape[1] // 4
        pairs = Int2Format._squeeze(chunks & PAIR_MASK)
        high = torch.zeros(chunks.shape[0], quarter, dtype=torch.uint8)
        for index, shift in enumerate(QUARTER_SHIFTS):
            part = chunks[:, index * quarter : (index + 1) * quarter] & HIGH_MASK
            high |= part << shift if shift >= 0 else part >> -shift
        return torch.cat([pairs, high], dim=1)

    @staticmethod
    def _expand(stored: Tensor, workspace: Tensor) -> None:
        """One chunk's stored bytes into the kernel's packed bytes at the start of ``workspace``; its last
        fifth holds each quarter's high bits on their way."""
        kernel_bytes = stored.numel() * 4 // 3
        quarter = kernel_bytes // 4
        pairs, high = stored[: 2 * quarter], stored[2 * quarter :]
        expand_pairs(pairs, workspace)
        scratch = workspace[kernel_bytes : kernel_bytes + quarter]
        for index, shift in enumerate(QUARTER_SHIFTS):
            if shift <= 0:  # back the other way
                torch.bitwise_left_shift(high, -shift, out=scratch)
            else:
                torch.bitwise_right_shift(high, shift, out=scratch)
            scratch.bitwise_and_(HIGH_MASK)
            workspace[index * quarter : (index + 1) * quarter].bitwise_or_(scratch)
