"""Unquantized experts: ``gate | up | down`` in the compute dtype, so ``gate | up`` is one (2I, H) matrix."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from moe_tui.offload.families.base import GatedUnit
from moe_tui.offload.formats.base import ExpertFormat, Views
from moe_tui.offload.formats.linear import linear

PRECISION_OF = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


class DenseFormat(ExpertFormat):
    """Weights as they are, in the compute dtype; computing reads them in place."""

    def __init__(self, shapes: list[tuple[int, int]], dtype: torch.dtype):
        super().__init__(shapes, dtype, None, 0)
        self.name = self.precision = PRECISION_OF[dtype]
        self.nbytes = sum(math.prod(s) for s in self.shapes) * dtype.itemsize

    def pack(self, gate: Tensor, up: Tensor, down: Tensor, out: Tensor) -> None:
        """Copy the three matrices one after the other into ``out``."""
        self.check_weights(gate, up, down)
        flat = out.view(self.dtype)
        start = 0
        for weight in (gate, up, down):
            flat[start : start + weight.numel()].copy_(weight.reshape(-1))
            start += weight.numel()

    def views(self, buffer: Tensor) -> Views:
        """(gate_up (2I, H), down (H, I)) viewed in place."""
        flat = buffer.view(self.dtype)
        split = 2 * self.intermediate * self.hidden
        return flat[:split].view(2 * self.intermediate, self.hidden), flat[split:].view(self.shapes[2])

    def forward(self, views: Views, x: Tensor, glu: GatedUnit) -> Tensor:
        """Two matmuls and the gated activation."""
        gate_up, down = views
        gate, up = linear(x, gate_up).chunk(2, dim=-1)
        return linear(glu(gate, up), down)

    def dequantize(self, buffer: Tensor) -> tuple[Tensor, Tensor]:
        """The matrices themselves."""
        gate_up, down = self.views(buffer)
        return gate_up, down
