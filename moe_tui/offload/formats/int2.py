"""2-bit experts on the CPU, computed by PyTorch's int4 kernel after a cheap per-chunk expansion.

HQQ's 2-bit values ``q`` (0..3) fit in the int4 kernel's 4-bit fields, so a 2-bit matrix is first laid out exactly
as :class:`~.int4.Int4Format` lays out a 4-bit one (``_convert_weight_to_int4pack_for_cpu``, scales and offsets
``(K / g, N, 2)``): every nibble of that packed layout is then at most 3, that is, only its bits 0-1 and 4-5 are
used. Two packed bytes ``a`` and ``b`` therefore share one stored byte ``a | b << 2``, whatever the kernel's
internal order, and ``(x & 0x33, (x >> 2) & 0x33)`` gives them back: one AND and one shift per byte.

The rows of each matrix are cut into chunks of whole kernel blocks (the kernel packs 32 rows together with
AVX2, 64 with AVX-512; such a block's packed bytes do not depend on the rows around it, and saved stores record
the block size); within a chunk, byte ``j`` of the first half pairs with byte ``j`` of the second. Computing a
matrix expands one chunk at a time into a small workspace that stays in the CPU's cache and runs the int4 kernel
on it, so the expanded weights never travel through main memory. One Mixtral-8x7B expert, one token, 2 threads:
22 ms, bf16's time (23 ms) for a sixth of its bytes, where dequantizing HQQ's own 2-bit layout took 137 ms
(``benchmarks/expert_kernels.py``).

The buffer is ``gate_up chunks | down chunks | gate_up scales | down scales``, each chunk's scales contiguous
(``(chunks, K / g, rows, 2)``) so the kernel reads them without a copy. Its size is that of HQQ's 2-bit layout
with 2-byte metadata. CPU only: the CUDA kernel's layout is not expanded here (CUDA keeps :class:`~.hqq.HqqFormat`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from moe_tui.offload import quant
from moe_tui.offload.families.base import GatedUnit
from moe_tui.offload.formats.base import QUANTIZE_BYTES_PER_ELEMENT, ExpertFormat, Views, aligned, region
from moe_tui.offload.formats.int4 import (
    PORTABLE_BLOCK_ROWS,
    Int4Format,
    cpu_block_rows,
    kernel_meta,
    weights_by_identity,
)

CHUNK_BYTES = 2 << 20  # expanded bytes per chunk (at most): near a core's L2 cache; 1 MiB was 3% slower, 256 KiB 2x
PAIR_MASK = 0x33  # the bits of a packed byte whose two nibbles are each at most 3


def chunk_rows(n: int, k: int, block: int) -> int:
    """Rows per chunk of an (N, K) matrix: the most, in whole blocks of the kernel's ``block`` rows, whose
    expanded bytes fit :data:`CHUNK_BYTES` and that divide N (at least one block)."""
    best = block
    for rows in range(block, n + 1, block):
        if n % rows == 0 and rows * k // 2 <= CHUNK_BYTES:
            best = rows
    return best


class Int2Format(ExpertFormat):
    """HQQ 2-bit experts stored two per int4 byte, expanded chunk by chunk for PyTorch's CPU int4 kernel.

    Subclasses store other widths below 4 bits the same way: ``BITS``, the stored bytes per kernel byte
    (``STORED``, a fraction), and how a chunk's kernel bytes are squeezed and expanded again.
    """

    fused = False  # the kernel reads an expansion, made on every use (of a cache-sized chunk, not the matrix)
    BITS = 2
    STORED = (1, 2)  # stored bytes per kernel byte: numerator, denominator

    def __init__(self, shapes: list[tuple[int, int]], dtype: torch.dtype, group_size: int):
        super().__init__(shapes, dtype, self.BITS, group_size)
        self.name = f"int{self.BITS}"
        if not self.supports(shapes, dtype, group_size, torch.device("cpu")):
            raise ValueError(f"no {self.name} layout for {shapes} at group size {group_size} in {dtype}")
        self.precision = f"hqq{self.BITS}"
        self.layout = "cpu"
        i, h = self.intermediate, self.hidden
        self._matrices = ((2 * i, h), (h, i))  # (N, K) of gate_up and down
        self._rows = tuple(chunk_rows(n, k, cpu_block_rows()) for n, k in self._matrices)
        packed = [aligned(self._stored(n * k // 2)) for n, k in self._matrices]
        meta = [aligned(k // group_size * n * 2 * dtype.itemsize) for n, k in self._matrices]
        self._offsets = [0, packed[0], packed[0] + packed[1], packed[0] + packed[1] + meta[0]]
        self.nbytes = sum(packed) + sum(meta)
        chunk_bytes = (rows * k // 2 for rows, (_, k) in zip(self._rows, self._matrices, strict=True))
        self.workspace_bytes = max(self._workspace(nbytes) for nbytes in chunk_bytes)
        self.pack_transient_bytes = QUANTIZE_BYTES_PER_ELEMENT * 2 * i * h  # gate-up is quantized as one matrix

    def _stored(self, kernel_bytes: int) -> int:
        """Stored bytes of ``kernel_bytes`` of the kernel's packed layout."""
        numerator, denominator = self.STORED
        return kernel_bytes * numerator // denominator

    def _workspace(self, kernel_bytes: int) -> int:
        """Bytes that expanding a chunk of ``kernel_bytes`` takes: the expansion itself."""
        return kernel_bytes

    @staticmethod
    def _squeeze(chunks: Tensor) -> Tensor:
        """Each row of ``chunks`` (one chunk's kernel bytes) as stored: byte ``j`` of the first half paired with
        byte ``j`` of the second."""
        half = chunks.shape[1] // 2
        return chunks[:, :half] | (chunks[:, half:] << 2)

    @staticmethod
    def _expand(stored: Tensor, workspace: Tensor) -> None:
        """One chunk's stored bytes into the kernel's packed bytes at the start of ``workspace``: the low pair of
        bits of every nibble makes the first half, the high pair the second."""
        half = stored.numel()
        torch.bitwise_and(stored, PAIR_MASK, out=workspace[:half])
        high = workspace[half : 2 * half]
        torch.bitwise_right_shift(stored, 2, out=high)
        high.bitwise_and_(PAIR_MASK)

    @staticmethod
    def supports(shapes: list[tuple[int, int]], dtype: torch.dtype, group_size: int, device: torch.device) -> bool:
        """Whether the CPU int4 kernel takes these shapes, group size and dtype (the expansion runs on CPU only),
        with rows that split into the kernel's blocks on any CPU."""
        i, h = shapes[0]
        blocks = i % PORTABLE_BLOCK_ROWS == 0 and h % PORTABLE_BLOCK_ROWS == 0
        return device.type == "cpu" and blocks and Int4Format.supports(shapes, dtype, group_size, device)

    def describe(self) -> dict[str, Any]:
        """The base description, with the CPU kernel's row blocking (the packed bytes depend on it)."""
        return {**super().describe(), "block_rows": cpu_block_rows()}

    def pack(self, gate: Tensor, up: Tensor, down: Tensor, out: Tensor) -> None:
        """Quantize gate-up and down with HQQ, lay them out for the int4 kernel and squeeze the bytes."""
        self.check_weights(gate, up, down)
        for index, weight in enumerate((torch.cat([gate, up]), down)):
            n, k = weight.shape
            values, scale, zero = quant.quantize_matrix(weight, self.BITS, self.group_size, self.optimize)
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(values.view(n, k).cpu().to(torch.int32), 2)
            packed = packed.view(torch.uint8).reshape(n, k // 2)
            rows = self._rows[index]
            raw = self._squeeze(packed.reshape(n // rows, rows * k // 2)).reshape(-1)
            out[self._offsets[index] : self._offsets[index] + raw.numel()].copy_(raw)
            scales, offsets = kernel_meta(scale.view(n, -1), zero.view(n, -1), self.dtype)
            meta = torch.stack([scales, offsets], dim=-1).transpose(0, 1)  # (K / g, N, 2)
            meta = meta.reshape(k // self.group_size, n // rows, rows, 2).transpose(0, 1).contiguous()
            raw_meta = meta.view(torch.uint8).reshape(-1)
            out[self._offsets[2 + index] : self._offsets[2 + index] + raw_meta.numel()].copy_(raw_meta)

    def views(self, buffer: Tensor) -> Views:
        """Stored gate-up and down chunks, then their per-chunk scale/offset tensors."""
        views = []
        for index, (n, k) in enumerate(self._matrices):
            rows, stored = self._rows[index], self._stored(n * k // 2)
            views.append(region(buffer, self._offsets[index], stored, torch.uint8, (n // rows, stored * rows // n)))
        for index, (n, k) in enumerate(self._matrices):
            rows, groups = self._rows[index], k // self.group_size
            size = groups * n * 2 * self.dtype.itemsize
            shape = (n // rows, groups, rows, 2)
            views.append(region(buffer, self._offsets[2 + index], size, self.dtype, shape))
        return tuple(views)

    def _mm(self, x: Tensor, chunks: Tensor, meta: Tensor) -> Tensor:
        """``x`` times one matrix (N, K): each chunk expanded into the workspace, then the int4 kernel."""
        count, rows = chunks.shape[0], meta.shape[2]
        kernel_bytes = rows * x.shape[1] // 2
        workspace = torch.empty(self._workspace(kernel_bytes), dtype=torch.uint8)
        kernel_view = workspace[:kernel_bytes].view(rows, -1)
        out = torch.empty(x.shape[0], count * rows, dtype=x.dtype)
        for chunk in range(count):
            self._expand(chunks[chunk], workspace)
            part = torch.ops.aten._weight_int4pack_mm_for_cpu(x, kernel_view, self.group_size, meta[chunk])
            out[:, chunk * rows : (chunk + 1) * rows] = part
        return out

    def forward(self, views: Views, x: Tensor, glu: GatedUnit) -> Tensor:
        """Gate-up and down through the expanded chunks, and the gated activation between them."""
        gate_up, down, gate_up_meta, down_meta = views
        gate, up = self._mm(x, gate_up, gate_up_meta).chunk(2, dim=-1)
        return self._mm(glu(gate, up).contiguous(), down, down_meta)

    def dequantize(self, buffer: Tensor) -> tuple[Tensor, Tensor]:
        """The weights the kernel computes with, recovered by multiplying the identity (exact up to rounding)."""
        return weights_by_identity(self._mm, self.views(buffer), [k for _, k in self._matrices], self.dtype)
