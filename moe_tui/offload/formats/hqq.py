"""HQQ's own bit-packed layout, dequantized into a workspace on every use: the unfused format.

Used for 2 and 3 bits (no PyTorch kernel reads them) and for 4 or 8 bits where the fused kernels do not fit
(an fp32 compute dtype for 4 bits, unsupported shapes or group sizes). The buffer holds the three bit-packed
matrices, then per matrix its scale and its zero (one per group, 2-byte floats). Each matrix of ``n`` elements
has ``r = n / g`` groups; ``p`` groups share a packed row (``p`` = 8 / b values per uint8 at 8, 4 and 2 bits, 10
values per int32 at 3 bits) and the rows are padded with zeros to a multiple of ``p``. The packing order is
HQQ's (``hqq.core.bitpack``): group row ``j * R + i`` sits in packed row ``i`` at bit offset ``b * (p - 1 - j)``.
The buffer size equals :func:`moe_tui.precision.tensors_bytes` of the three shapes at that precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from moe_tui import precision
from moe_tui.offload import quant
from moe_tui.offload.families.base import GatedUnit
from moe_tui.offload.formats.base import QUANTIZE_BYTES_PER_ELEMENT, ExpertFormat, Views
from moe_tui.offload.formats.linear import linear
from moe_tui.offload.quant import pack_factor, pack_rows

META_BYTES = precision.META_BYTES


@dataclass(frozen=True)
class MatrixLayout:
    """Where one quantized matrix lives inside an expert buffer."""

    shape: tuple[int, int]
    groups: int  # r: groups of g values
    packed_rows: int  # R = ceil(r / p)
    packed_offset: int
    packed_bytes: int
    scale_offset: int
    zero_offset: int


class HqqFormat(ExpertFormat):
    """HQQ-packed experts at ``bits``, dequantized into one preallocated workspace before each use."""

    fused = False

    def __init__(
        self,
        shapes: list[tuple[int, int]],
        dtype: torch.dtype,
        bits: int,
        group_size: int = precision.DEFAULT_GROUP_SIZE,
    ):
        super().__init__(shapes, dtype, bits, group_size)
        self.name = self.precision = f"hqq{bits}"
        self.meta_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float16
        per_unit, unit_dtype = pack_factor(bits)
        sizes = []
        for shape in self.shapes:
            groups = math.prod(shape) // group_size
            packed_rows = math.ceil(groups / per_unit)
            sizes.append((shape, groups, packed_rows, packed_rows * group_size * unit_dtype.itemsize))
        offset = sum(size[3] for size in sizes)
        packed_offset = 0
        self.matrices: list[MatrixLayout] = []
        for shape, groups, packed_rows, packed_bytes in sizes:
            meta = groups * META_BYTES
            self.matrices.append(
                MatrixLayout(shape, groups, packed_rows, packed_offset, packed_bytes, offset, offset + meta)
            )
            packed_offset += packed_bytes
            offset += 2 * meta
        self.nbytes = offset
        self.workspace_bytes = self._planned_workspace_bytes()
        self.pack_transient_bytes = QUANTIZE_BYTES_PER_ELEMENT * max(math.prod(s) for s in self.shapes)
        self._workspace: dict[torch.device, dict[str, Tensor]] = {}

    def describe(self) -> dict[str, object]:
        """The settings that decide the buffer contents, with the metadata dtype."""
        return {**super().describe(), "meta_dtype": str(self.meta_dtype)}

    # ----------------------------------------------------------------- packing
    def pack(self, gate: Tensor, up: Tensor, down: Tensor, out: Tensor) -> None:
        """Quantize each matrix with HQQ and write values, scale and zero into ``out``."""
        self.check_weights(gate, up, down)
        for weight, layout in zip((gate, up, down), self.matrices, strict=True):
            values, scale, zero = quant.quantize_matrix(weight, self.bits or 8, self.group_size, self.optimize)
            self.packed_view(out, layout).copy_(pack_rows(values, self.bits or 8))
            scale_view, zero_view = self.meta_views(out, layout)
            scale_view.copy_(scale.reshape(-1, 1))
            zero_view.copy_(zero.reshape(-1, 1))

    def packed_view(self, buffer: Tensor, layout: MatrixLayout) -> Tensor:
        """The bit-packed values of one matrix as (R, g) units."""
        _, unit_dtype = pack_factor(self.bits or 8)
        raw = buffer[layout.packed_offset : layout.packed_offset + layout.packed_bytes]
        return raw.view(unit_dtype).view(layout.packed_rows, self.group_size)

    def meta_views(self, buffer: Tensor, layout: MatrixLayout) -> tuple[Tensor, Tensor]:
        """Scale and zero of one matrix as (r, 1) views into ``buffer``."""
        end = layout.zero_offset + layout.groups * META_BYTES
        scale = buffer[layout.scale_offset : layout.zero_offset].view(self.meta_dtype).view(-1, 1)
        zero = buffer[layout.zero_offset : end].view(self.meta_dtype).view(-1, 1)
        return scale, zero

    # ----------------------------------------------------------------- computing
    def views(self, buffer: Tensor) -> Views:
        """The buffer itself: it is unpacked on every use."""
        return (buffer,)

    def forward(self, views: Views, x: Tensor, glu: GatedUnit) -> Tensor:
        """Dequantize into the workspace, then two matmuls."""
        gate_up, down = self.dequantize(views[0])
        gate, up = linear(x, gate_up).chunk(2, dim=-1)
        return linear(glu(gate, up), down)

    def dequantize(self, buffer: Tensor) -> tuple[Tensor, Tensor]:
        """Gate-up and down unpacked into the device's workspace (views, valid until the next call)."""
        workspace = self._workspace_on(buffer.device)
        flat = workspace["weights"]
        start = 0
        for layout in self.matrices:
            numel = layout.groups * self.group_size
            self._dequantize(
                buffer, layout, flat[start : start + numel].view(layout.groups, self.group_size), workspace
            )
            start += numel
        split = 2 * self.intermediate * self.hidden
        return flat[:split].view(2 * self.intermediate, self.hidden), flat[split:].view(self.shapes[2])

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        per_unit, _ = pack_factor(self.bits or 8)
        max_rows = max(m.packed_rows for m in self.matrices)
        max_groups = max(m.groups for m in self.matrices)
        return {
            "ints": (per_unit * max_rows, self.group_size),
            "shifted": (max_rows, self.group_size),
            "meta": (max_groups, 1),
            "weights": (sum(math.prod(s) for s in self.shapes),),
        }

    def _planned_workspace_bytes(self) -> int:
        _, unit_dtype = pack_factor(self.bits or 8)
        shapes = self._shapes()
        units = math.prod(shapes["ints"]) + math.prod(shapes["shifted"])
        floats = 2 * math.prod(shapes["meta"]) + math.prod(shapes["weights"])
        return units * unit_dtype.itemsize + floats * self.dtype.itemsize

    def _workspace_on(self, device: torch.device) -> dict[str, Tensor]:
        """The workspace on ``device``, allocated on first use (layers run one after another: one is enough)."""
        workspace = self._workspace.get(device)
        if workspace is None:
            _, unit_dtype = pack_factor(self.bits or 8)
            shapes = self._shapes()
            workspace = {
                "ints": torch.empty(shapes["ints"], dtype=unit_dtype, device=device),
                "shifted": torch.empty(shapes["shifted"], dtype=unit_dtype, device=device),
                "scale": torch.empty(shapes["meta"], dtype=self.dtype, device=device),
                "zero": torch.empty(shapes["meta"], dtype=self.dtype, device=device),
                "weights": torch.empty(shapes["weights"], dtype=self.dtype, device=device),
            }
            self._workspace[device] = workspace
        return workspace

    def _dequantize(self, buffer: Tensor, layout: MatrixLayout, out: Tensor, workspace: dict[str, Tensor]) -> None:
        bits = self.bits or 8
        per_unit, _ = pack_factor(bits)
        rows = layout.packed_rows
        packed = self.packed_view(buffer, layout)
        shifted = workspace["shifted"][:rows]
        ints = workspace["ints"]
        mask = (1 << bits) - 1
        for j in range(per_unit):
            shift = bits * (per_unit - 1 - j)
            target = ints[j * rows : (j + 1) * rows]
            if j == 0:  # the top values need no mask: nothing is packed above them
                torch.bitwise_right_shift(packed, shift, out=target)
            elif shift == 0:
                torch.bitwise_and(packed, mask, out=target)
            else:
                torch.bitwise_right_shift(packed, shift, out=shifted)
                torch.bitwise_and(shifted, mask, out=target)
        scale, zero = self.meta_views(buffer, layout)
        scale_c = workspace["scale"][: layout.groups]
        zero_c = workspace["zero"][: layout.groups]
        scale_c.copy_(scale)
        zero_c.copy_(zero)
        out.copy_(ints[: layout.groups])  # converting first, then in place: ~1.5x faster than sub(..., out=)
        out.sub_(zero_c).mul_(scale_c)
