"""4-bit experts computed by PyTorch's own int4 kernels, from HQQ's quantization.

HQQ quantizes each matrix in groups of ``g`` along its input dimension: ``w = (q - z) * s`` with ``q`` in 0..15.
PyTorch's int4 kernels (``_weight_int4pack_mm_for_cpu`` on CPU, ``_weight_int4pack_mm`` on CUDA) compute
``w = (q - 8) * s + m`` from a (K / g, N, 2) tensor of scales and offsets in the compute dtype, so each group
stores ``s`` and ``m = (8 - z) * s``: the same weights, with one rounding of ``m`` to the compute dtype.

Gate and up are quantized and packed as one (2I, H) matrix, so an expert is two kernel calls. The buffer is
``gate_up packed | down packed | gate_up scales | down scales``, each part on a 64-byte boundary. The packed
part's layout is the kernel's own and differs between CPU and CUDA (``layout``); its size is N * K / 2 bytes on
both, so the buffer has the size of HQQ's 4-bit layout with 2-byte metadata.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from moe_tui.offload import quant
from moe_tui.offload.families.base import GatedUnit
from moe_tui.offload.formats.base import QUANTIZE_BYTES_PER_ELEMENT, ExpertFormat, Views, aligned, region

GROUP_SIZES = (32, 64, 128, 256)
PORTABLE_BLOCK_ROWS = 64  # the CPU kernel packs rows in blocks of 4 vector widths: 32 with AVX2, 64 with AVX-512
CUDA_INNER_K_TILES = 8
# Where the kernels are fast: on this CPU the fp16 path of the int4 kernel took 119 ms for a 28672 x 4096 matrix
# against 3.2 ms in bf16 (the unfused path is faster than that), and the CUDA kernel takes bf16 only.
KERNEL_DTYPES = {"cpu": (torch.bfloat16,), "cuda": (torch.bfloat16,)}


@functools.cache
def cpu_block_rows() -> int:
    """Rows the CPU int4 kernel packs together on this machine (it depends on the CPU's vector width): a block of
    rows packed alone gives the same bytes as those rows of a larger matrix. Saved stores record it, since a
    buffer packed with one block size is garbage to a machine with another."""
    values = torch.arange(PORTABLE_BLOCK_ROWS * 64, dtype=torch.int32).reshape(PORTABLE_BLOCK_ROWS, 64) % 16
    whole = torch.ops.aten._convert_weight_to_int4pack_for_cpu(values, 2)
    for rows in (16, 32):
        alone = torch.ops.aten._convert_weight_to_int4pack_for_cpu(values[:rows].contiguous(), 2)
        if torch.equal(whole[:rows], alone):
            return rows
    return PORTABLE_BLOCK_ROWS


class Int4Format(ExpertFormat):
    """HQQ 4-bit experts in PyTorch's int4 kernel layout for ``device``."""

    def __init__(self, shapes: list[tuple[int, int]], dtype: torch.dtype, group_size: int, device: torch.device):
        super().__init__(shapes, dtype, 4, group_size)
        if not self.supports(shapes, dtype, group_size, device):
            raise ValueError(f"no int4 kernel for {shapes} at group size {group_size} in {dtype} on {device.type}")
        self.name = "int4"
        self.precision = "hqq4"
        self.layout = device.type
        i, h = self.intermediate, self.hidden
        self._matrices = ((2 * i, h), (h, i))  # (N, K) of gate_up and down
        packed = [aligned(n * k // 2) for n, k in self._matrices]
        meta = [aligned(k // group_size * n * 2 * dtype.itemsize) for n, k in self._matrices]
        self._offsets = [0, packed[0], packed[0] + packed[1], packed[0] + packed[1] + meta[0]]
        self._sizes = [*packed, *meta]
        self.nbytes = sum(self._sizes)
        self.pack_transient_bytes = QUANTIZE_BYTES_PER_ELEMENT * 2 * i * h  # gate-up is quantized as one matrix

    @staticmethod
    def supports(shapes: list[tuple[int, int]], dtype: torch.dtype, group_size: int, device: torch.device) -> bool:
        """Whether PyTorch's int4 kernel on ``device`` takes these shapes, group size and dtype."""
        if device.type not in KERNEL_DTYPES or dtype not in KERNEL_DTYPES[device.type] or group_size not in GROUP_SIZES:
            return False
        i, h = shapes[0]
        if device.type == "cuda":
            tile = 16 * CUDA_INNER_K_TILES
            return i % 8 == 0 and h % 8 == 0 and i % tile == 0 and h % tile == 0
        return i % 16 == 0 and h % 16 == 0 and i % group_size == 0 and h % group_size == 0

    def describe(self) -> dict[str, Any]:
        """The base description, with the CPU kernel's row blocking (the packed bytes depend on it)."""
        described = super().describe()
        if self.layout == "cpu":
            described["block_rows"] = cpu_block_rows()
        return described

    def pack(self, gate: Tensor, up: Tensor, down: Tensor, out: Tensor) -> None:
        """Quantize gate-up and down with HQQ and write them in the kernel's layout (packed on ``layout``'s device)."""
        self.check_weights(gate, up, down)
        for index, weight in enumerate((torch.cat([gate, up]), down)):
            n, k = weight.shape
            values, scale, zero = quant.quantize_matrix(weight, 4, self.group_size, self.optimize)
            packed = self._kernel_pack(values.view(n, k))
            scales, offsets = kernel_meta(scale.view(n, -1), zero.view(n, -1), self.dtype)
            meta = torch.stack([scales, offsets], dim=-1).transpose(0, 1).contiguous()  # (K / g, N, 2)
            raw = packed.contiguous().view(torch.uint8).reshape(-1)
            out[self._offsets[index] : self._offsets[index] + raw.numel()].copy_(raw)
            raw_meta = meta.view(torch.uint8).reshape(-1)
            out[self._offsets[2 + index] : self._offsets[2 + index] + raw_meta.numel()].copy_(raw_meta)

    def _kernel_pack(self, values: Tensor) -> Tensor:
        """(N, K) integers 0..15 in the int4 kernel's packed layout of this format's device."""
        if self.layout == "cuda":
            nibbles = (values[:, ::2] << 4 | values[:, 1::2]).to(torch.uint8)
            return torch.ops.aten._convert_weight_to_int4pack(nibbles.cuda(), CUDA_INNER_K_TILES)
        return torch.ops.aten._convert_weight_to_int4pack_for_cpu(values.cpu().to(torch.int32), 2)

    def views(self, buffer: Tensor) -> Views:
        """Packed gate-up, packed down and their scale/offset tensors."""
        views = []
        for index, (n, k) in enumerate(self._matrices):
            views.append(self._packed(buffer, index, n, k))
        for index, (n, k) in enumerate(self._matrices):
            size = k // self.group_size * n * 2 * self.dtype.itemsize
            views.append(region(buffer, self._offsets[2 + index], size, self.dtype, (k // self.group_size, n, 2)))
        return tuple(views)

    def _packed(self, buffer: Tensor, index: int, n: int, k: int) -> Tensor:
        size = n * k // 2
        if self.layout == "cuda":
            shape = (n // 8, k // (CUDA_INNER_K_TILES * 16), 32, CUDA_INNER_K_TILES // 2)
            return region(buffer, self._offsets[index], size, torch.int32, shape)
        return region(buffer, self._offsets[index], size, torch.uint8, (n, k // 2))

    def _mm(self, x: Tensor, packed: Tensor, meta: Tensor) -> Tensor:
        if self.layout == "cuda":
            return torch.ops.aten._weight_int4pack_mm(x, packed, self.group_size, meta)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, self.group_size, meta)

    def forward(self, views: Views, x: Tensor, glu: GatedUnit) -> Tensor:
        """Two int4 kernel calls and the gated activation."""
        gate_up, down, gate_up_meta, down_meta = views
        gate, up = self._mm(x, gate_up, gate_up_meta).chunk(2, dim=-1)
        return self._mm((glu(gate, up)).contiguous(), down, down_meta)

    def dequantize(self, buffer: Tensor) -> tuple[Tensor, Tensor]:
        """The weights the kernel computes with, recovered by multiplying the identity (exact up to rounding), on
        the buffer's device (the CUDA layout's kernel runs on the GPU even for a buffer in the host store)."""
        home = buffer.device
        if self.layout == "cuda":
            buffer = buffer.to("cuda")
        weights = weights_by_identity(self._mm, self.views(buffer), [k for _, k in self._matrices], self.dtype)
        return weights[0].to(home), weights[1].to(home)


MatrixProduct = Callable[[Tensor, Tensor, Tensor], Tensor]  # x, one matrix's packed view, its scales -> x W^T


def weights_by_identity(
    mm: MatrixProduct, views: Views, widths: list[int], dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Gate-up and down as a kernel format computes with them (views: both packed matrices, then their scales;
    ``widths``: each matrix's K): the product of the identity with each, transposed."""
    weights = []
    for index, k in enumerate(widths):
        eye = torch.eye(k, dtype=dtype, device=views[index].device)
        weights.append(mm(eye, views[index], views[2 + index]).t().contiguous())
    return weights[0], weights[1]


def kernel_meta(scale: Tensor, zero: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """HQQ's (scale, zero) per group as the kernel's (scale, offset): ``(q - z) s = (q - 8) s + (8 - z) s``.

    The scale and zero are first rounded to the 2-byte metadata dtype as HQQ's own layout stores them.
    """
    meta_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float16
    s = scale.to(meta_dtype).float()
    z = zero.to(meta_dtype).float()
    return s.to(dtype), ((8 - z) * s).to(dtype)
