"""What every expert format provides (see :mod:`moe_tui.offload.formats`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from moe_tui.offload.families.base import GatedUnit

Views = tuple[Tensor, ...]  # a buffer seen as the tensors its kernel reads (made once per slot)

BUFFER_ALIGN = 64  # bytes: every tensor inside a buffer starts on this boundary, and so does every slot


def aligned(n: int) -> int:
    """``n`` rounded up to :data:`BUFFER_ALIGN`."""
    return -(-n // BUFFER_ALIGN) * BUFFER_ALIGN


class ExpertFormat:
    """One expert's buffer layout and its computation ``down(glu(gate(x), up(x)))``, ``glu`` being the family's
    gated unit (usually ``act(gate) * up``).

    Subclasses set ``name`` (shown to users: ``bf16``, ``int4``, ``int8``, ``hqq2``), ``precision`` (the name
    :mod:`moe_tui.precision` counts bytes with), ``fused`` (the kernel reads the packed bytes directly),
    ``layout`` (``any``, or the device type whose kernels the packed bytes are laid out for), ``nbytes``,
    ``workspace_bytes`` (fast-tier memory used while computing, 0 for fused formats) and
    ``pack_transient_bytes`` (host memory that quantizing one expert takes on the way).
    """

    name: str
    precision: str
    fused: bool = True
    layout: str = "any"
    nbytes: int
    workspace_bytes: int = 0
    # host bytes that packing one expert takes besides the store (its quantization's temporaries)
    pack_transient_bytes: int = 0

    def __init__(self, shapes: list[tuple[int, int]], dtype: torch.dtype, bits: int | None, group_size: int):
        self.shapes = [tuple(s) for s in shapes]
        if len(self.shapes) != 3 or self.shapes[0] != self.shapes[1] or self.shapes[2] != self.shapes[0][::-1]:
            raise ValueError(f"expert shapes must be gate (I, H), up (I, H), down (H, I); got {self.shapes}")
        self.intermediate, self.hidden = self.shapes[0]
        self.dtype = dtype
        self.bits = bits
        self.group_size = group_size
        self.optimize = True  # HQQ's zero-point optimisation when quantizing (formats that quantize with HQQ)

    def describe(self) -> dict[str, Any]:
        """The settings that decide the buffer contents (the quantized-store cache key and its description)."""
        return {
            "format": self.name,
            "layout": self.layout,
            "shapes": self.shapes,
            "dtype": str(self.dtype),
            "bits": self.bits,
            "group_size": self.group_size,
            "optimize": self.optimize,
            "nbytes": self.nbytes,
        }

    def label(self) -> str:
        """How bench, the planner and the panels name the format: ``int4``, or ``hqq2 (unfused)``."""
        return self.name if self.fused else f"{self.name} (unfused)"

    def check_weights(self, gate: Tensor, up: Tensor, down: Tensor) -> None:
        """Refuse weights whose shapes are not the format's."""
        for weight, shape in zip((gate, up, down), self.shapes, strict=True):
            if tuple(weight.shape) != shape:
                raise ValueError(f"expert weight has shape {tuple(weight.shape)}, expected {shape}")

    def pack(self, gate: Tensor, up: Tensor, down: Tensor, out: Tensor) -> None:
        """Write one expert's weights (quantizing them if the format does) into ``out`` (``nbytes`` uint8)."""
        raise NotImplementedError

    def views(self, buffer: Tensor) -> Views:
        """The tensors the kernel reads from ``buffer`` (views, valid while the buffer lives)."""
        raise NotImplementedError

    def forward(self, views: Views, x: Tensor, glu: GatedUnit) -> Tensor:
        """The expert's output for ``x`` (n, H) in the compute dtype."""
        raise NotImplementedError

    def dequantize(self, buffer: Tensor) -> tuple[Tensor, Tensor]:
        """The (2I, H) gate-up and (H, I) down matrices as the kernel sees them (for tests and references)."""
        raise NotImplementedError


# Measured: quantizing Mixtral-8x7B's fused (28672 x 4096) gate-up matrix with HQQ on a CPU took 1.39 GiB above
# the store (the bf16 halves, their concatenation, float32 copies and HQQ's own): 12.7 bytes per element.
QUANTIZE_BYTES_PER_ELEMENT = 13


def region(buffer: Tensor, offset: int, nbytes: int, dtype: torch.dtype, shape: tuple[int, ...]) -> Tensor:
    """``nbytes`` of ``buffer`` from ``offset`` seen as a ``dtype`` tensor of ``shape``."""
    return buffer[offset : offset + nbytes].view(dtype).view(shape)
