"""One expert as one flat byte buffer: packing (optionally HQQ-quantized) and unpacking into compute weights.

An expert's three matrices (gate (I, H), up (I, H), down (H, I)) are stored in one contiguous ``uint8``
buffer so that one copy moves one expert:

* unquantized: ``gate | up | down`` in the compute dtype, so that ``gate | up`` is one (2I, H) matrix;
* HQQ at ``b`` bits (axis 1, group size ``g``): the three bit-packed matrices, then per matrix its scale
  and its zero (one per group, 2-byte floats). Each matrix of ``n`` elements has ``r = n / g`` groups;
  ``p`` groups share a packed row (``p`` = 8 / b values per uint8 at 8, 4 and 2 bits, 10 values per int32
  at 3 bits) and the rows are padded with zeros to a multiple of ``p``. The packing order is HQQ's
  (``hqq.core.bitpack``): group row ``j * R + i`` sits in packed row ``i`` at bit offset ``b * (p - 1 - j)``.

The buffer size equals :func:`moe_tui.precision.tensors_bytes` of the three shapes at that precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from moe_tui import precision
from moe_tui.offload.arch import MoEModel
from moe_tui.offload.cache import LayerCache

META_BYTES = precision.META_BYTES


def _pack_factor(bits: int) -> tuple[int, torch.dtype]:
    """Values per packed element and the packed element's dtype."""
    if bits == 3:
        return 10, torch.int32
    return 8 // bits, torch.uint8


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


class ExpertFormat:
    """How one expert of a model is laid out in its buffer at a given precision (see the module docstring)."""

    def __init__(
        self,
        shapes: list[tuple[int, int]],
        dtype: torch.dtype,
        bits: int | None = None,
        group_size: int = precision.DEFAULT_GROUP_SIZE,
    ):
        self.shapes = [tuple(s) for s in shapes]
        self.dtype = dtype
        self.bits = bits
        self.group_size = group_size
        self.meta_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float16
        if bits is None:
            self.matrices: list[MatrixLayout] = []
            self.nbytes = sum(math.prod(s) for s in self.shapes) * dtype.itemsize
            return
        per_unit, unit_dtype = _pack_factor(bits)
        matrices = []
        offset = 0
        for shape in self.shapes:
            numel = math.prod(shape)
            groups = numel // group_size
            packed_rows = math.ceil(groups / per_unit)
            packed_bytes = packed_rows * group_size * unit_dtype.itemsize
            matrices.append(MatrixLayout(shape, groups, packed_rows, offset, packed_bytes, 0, 0))
            offset += packed_bytes
        laid_out = []
        for m in matrices:
            meta = m.groups * META_BYTES
            laid_out.append(
                MatrixLayout(m.shape, m.groups, m.packed_rows, m.packed_offset, m.packed_bytes, offset, offset + meta)
            )
            offset += 2 * meta
        self.matrices = laid_out
        self.nbytes = offset

    @property
    def precision(self) -> str:
        """The precision name used by :mod:`moe_tui.precision` (``hqq4``, ``bf16``, ...)."""
        if self.bits is None:
            return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]
        return f"hqq{self.bits}"

    def describe(self) -> dict[str, object]:
        """The settings that decide the buffer contents (for the quantized-store cache key)."""
        return {
            "shapes": self.shapes,
            "dtype": str(self.dtype),
            "bits": self.bits,
            "group_size": self.group_size,
            "meta_dtype": str(self.meta_dtype),
            "nbytes": self.nbytes,
        }

    def pack(self, gate: Tensor, up: Tensor, down: Tensor, out: Tensor) -> None:
        """Write one expert's weights (quantizing them when ``bits`` is set) into ``out`` (``nbytes`` uint8)."""
        weights = (gate, up, down)
        for weight, shape in zip(weights, self.shapes, strict=True):
            if tuple(weight.shape) != shape:
                raise ValueError(f"expert weight has shape {tuple(weight.shape)}, expected {shape}")
        if self.bits is None:
            flat = out.view(self.dtype)
            start = 0
            for weight in weights:
                flat[start : start + weight.numel()].copy_(weight.reshape(-1))
                start += weight.numel()
            return
        for weight, layout in zip(weights, self.matrices, strict=True):
            values, scale, zero = quantize_matrix(weight, self.bits, self.group_size)
            self._packed_view(out, layout).copy_(pack_rows(values, self.bits))
            out[layout.scale_offset : layout.zero_offset].view(self.meta_dtype).copy_(scale.reshape(-1))
            out[layout.zero_offset : layout.zero_offset + layout.groups * META_BYTES].view(self.meta_dtype).copy_(
                zero.reshape(-1)
            )

    def _packed_view(self, buffer: Tensor, layout: MatrixLayout) -> Tensor:
        _, unit_dtype = _pack_factor(self.bits or 8)
        raw = buffer[layout.packed_offset : layout.packed_offset + layout.packed_bytes]
        return raw.view(unit_dtype).view(layout.packed_rows, self.group_size)

    def meta_views(self, buffer: Tensor, layout: MatrixLayout) -> tuple[Tensor, Tensor]:
        """Scale and zero of one matrix as (r, 1) views into ``buffer``."""
        end = layout.zero_offset + layout.groups * META_BYTES
        scale = buffer[layout.scale_offset : layout.zero_offset].view(self.meta_dtype).view(-1, 1)
        zero = buffer[layout.zero_offset : end].view(self.meta_dtype).view(-1, 1)
        return scale, zero


def quantize_matrix(weight: Tensor, bits: int, group_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """HQQ-quantize one matrix along axis 1: integer values (r, g) as uint8, and scale and zero (r, 1).

    Uses HQQ's own quantizer (half-quadratic optimisation of the zero point) with its default settings for
    the bit width; dequantization is ``(values - zero) * scale``.
    """
    from hqq.core.quantize import BaseQuantizeConfig, Quantizer

    params = dict(BaseQuantizeConfig(nbits=bits, group_size=group_size)["weight_quant_params"])
    params.pop("view_as_float", None)
    values, meta = Quantizer.quantize(
        weight.float(), bitpack=False, device=str(weight.device), compute_dtype=torch.float32, **params
    )
    return values.to(torch.uint8), meta["scale"], meta["zero"]


def pack_rows(values: Tensor, bits: int) -> Tensor:
    """Bit-pack (r, g) integer values into (ceil(r / p), g) units, HQQ's order, zero-padding the rows."""
    per_unit, unit_dtype = _pack_factor(bits)
    rows, cols = values.shape
    packed_rows = math.ceil(rows / per_unit)
    padded = torch.zeros(packed_rows * per_unit, cols, dtype=unit_dtype, device=values.device)
    padded[:rows] = values.to(unit_dtype)
    packed = torch.zeros(packed_rows, cols, dtype=unit_dtype, device=values.device)
    for j in range(per_unit):
        packed |= padded[j * packed_rows : (j + 1) * packed_rows] << (bits * (per_unit - 1 - j))
    return packed


class WeightSource:
    """Turns a slot's buffer into the (2I, H) gate-up and (H, I) down matrices an expert computes with.

    Unquantized buffers are viewed in place. Quantized ones are unpacked and dequantized into one
    preallocated workspace (per engine: layers run one after the other), so no memory is allocated per call.
    """

    def __init__(self, fmt: ExpertFormat, device: torch.device):
        self.fmt = fmt
        i, h = fmt.shapes[0]
        self._split = 2 * i * h
        self._gate_up_shape = (2 * i, h)
        self._down_shape = fmt.shapes[2]
        self.workspace_bytes = 0
        if fmt.bits is None:
            return
        shapes = self._workspace_shapes(fmt)
        _, unit_dtype = _pack_factor(fmt.bits)
        self._ints = torch.empty(shapes["ints"], dtype=unit_dtype, device=device)
        self._shifted = torch.empty(shapes["shifted"], dtype=unit_dtype, device=device)
        self._scale = torch.empty(shapes["meta"], dtype=fmt.dtype, device=device)
        self._zero = torch.empty(shapes["meta"], dtype=fmt.dtype, device=device)
        self._weights = torch.empty(shapes["weights"], dtype=fmt.dtype, device=device)
        self.workspace_bytes = self.planned_bytes(fmt)

    @staticmethod
    def _workspace_shapes(fmt: ExpertFormat) -> dict[str, tuple[int, ...]]:
        per_unit, _ = _pack_factor(fmt.bits or 8)
        max_rows = max(m.packed_rows for m in fmt.matrices)
        max_groups = max(m.groups for m in fmt.matrices)
        return {
            "ints": (per_unit * max_rows, fmt.group_size),
            "shifted": (max_rows, fmt.group_size),
            "meta": (max_groups, 1),
            "weights": (sum(math.prod(s) for s in fmt.shapes),),
        }

    @classmethod
    def planned_bytes(cls, fmt: ExpertFormat) -> int:
        """Bytes of the dequantization workspace for ``fmt`` (0 when unquantized), without allocating it."""
        if fmt.bits is None:
            return 0
        _, unit_dtype = _pack_factor(fmt.bits)
        shapes = cls._workspace_shapes(fmt)
        units = math.prod(shapes["ints"]) + math.prod(shapes["shifted"])
        floats = 2 * math.prod(shapes["meta"]) + math.prod(shapes["weights"])
        return units * unit_dtype.itemsize + floats * fmt.dtype.itemsize

    def slot_weights(self, cache: LayerCache, slot: int) -> tuple[Tensor, Tensor]:
        """The weights of the expert in ``slot``; unquantized slots' views are made once and kept."""
        if self.fmt.bits is not None:
            return self.weights(cache.slots[slot])
        views = cache.views[slot]
        if views is None:
            views = cache.views[slot] = self.weights(cache.slots[slot])
        return views

    def weights(self, buffer: Tensor) -> tuple[Tensor, Tensor]:
        """The expert's gate-up and down matrices for the ``nbytes`` uint8 ``buffer`` (views, valid until next call)."""
        fmt = self.fmt
        if fmt.bits is None:
            flat = buffer.view(fmt.dtype)
        else:
            flat = self._weights
            start = 0
            for layout in fmt.matrices:
                numel = layout.groups * fmt.group_size
                self._dequantize(buffer, layout, flat[start : start + numel].view(layout.groups, fmt.group_size))
                start += numel
        gate_up = flat[: self._split].view(self._gate_up_shape)
        down = flat[self._split :].view(self._down_shape)
        return gate_up, down

    def _dequantize(self, buffer: Tensor, layout: MatrixLayout, out: Tensor) -> None:
        fmt = self.fmt
        bits = fmt.bits or 8
        per_unit, _ = _pack_factor(bits)
        rows = layout.packed_rows
        packed = fmt._packed_view(buffer, layout)
        shifted = self._shifted[:rows]
        ints = self._ints
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
        scale, zero = fmt.meta_views(buffer, layout)
        scale_c = self._scale[: layout.groups]
        zero_c = self._zero[: layout.groups]
        scale_c.copy_(scale)
        zero_c.copy_(zero)
        out.copy_(ints[: layout.groups])  # converting first, then in place: ~1.5x faster than sub(..., out=)
        out.sub_(zero_c).mul_(scale_c)


def quantize_linears(
    moe: MoEModel, bits: int, group_size: int, dtype: torch.dtype, device: torch.device, report
) -> int:
    """Replace the decoder's linear layers (attention, shared experts) by HQQ ``HQQLinear`` at ``bits``.

    Routers, the offloaded experts, embeddings and the LM head stay as they are, and so do linears too small
    to group (fewer than 2 output rows or a size the group does not divide). Returns how many were replaced.
    """
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    targets = []
    for decoder_layer in moe.decoder.layers:
        for name, module in decoder_layer.named_modules():
            if isinstance(module, nn.Linear) and module.out_features > 1 and module.weight.numel() % group_size == 0:
                targets.append((decoder_layer, name, module))
    quant_config = BaseQuantizeConfig(nbits=bits, group_size=group_size)
    report(f"quantizing attention to {bits} bits", 0, len(targets))
    for done, (decoder_layer, name, module) in enumerate(targets, start=1):
        parent_name, _, attribute = name.rpartition(".")
        parent = decoder_layer.get_submodule(parent_name) if parent_name else decoder_layer
        quantized = HQQLinear(module, quant_config, del_orig=True, compute_dtype=dtype, device=str(device))
        setattr(parent, attribute, quantized)
        report(f"quantizing attention to {bits} bits", done, len(targets))
    return len(targets)
