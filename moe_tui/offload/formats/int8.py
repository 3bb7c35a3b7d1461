"""8-bit experts: per-output-channel int8 computed by PyTorch's ``_weight_int8pack_mm`` on a CPU, and converted to
the compute dtype on every use on CUDA.

Each row of a weight matrix is scaled by its largest magnitude: ``w = q * s`` with ``q`` in -127..127 and one
scale per output row in the compute dtype (symmetric round-to-nearest, the layout that kernel reads). Gate and
up are one (2I, H) matrix. The buffer is ``gate_up int8 | down int8 | gate_up scales | down scales``, each part
on a 64-byte boundary; with a 2-byte compute dtype its size is :mod:`moe_tui.precision`'s ``int8``.

On CUDA the kernel is slow at real sizes: one token through a Mixtral-8x7B expert took 1.57 ms on an H200,
11.7x bf16's 0.13 ms, while converting the int8 values into a workspace in the compute dtype and multiplying
densely took 0.59 ms (``benchmarks/expert_kernels.py``). The conversion is exact (-127..127 fits every compute
dtype) and a row's scale multiplies each of that row's outputs, so both compute the same product; the CUDA
path costs gate-up's weights in the compute dtype as workspace (down reuses it), which the fit counts.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from moe_tui.offload.families.base import GatedUnit
from moe_tui.offload.formats.base import ExpertFormat, Views, aligned, region


class Int8Format(ExpertFormat):
    """Per-channel int8 experts."""

    def __init__(self, shapes: list[tuple[int, int]], dtype: torch.dtype, device: torch.device):
        super().__init__(shapes, dtype, 8, 0)
        self.name = self.precision = "int8"
        i, h = self.intermediate, self.hidden
        self._matrices = ((2 * i, h), (h, i))
        sizes = [aligned(n * k) for n, k in self._matrices] + [aligned(n * dtype.itemsize) for n, _ in self._matrices]
        self._offsets = [sum(sizes[:j]) for j in range(4)]
        self.nbytes = sum(sizes)
        self.pack_transient_bytes = 8 * 2 * i * h  # the concatenated bf16 matrix, its float32 copy and the int8
        self.workspace_bytes = 2 * i * h * dtype.itemsize if device.type == "cuda" else 0  # see the module docstring
        self._workspace: dict[torch.device, Tensor] = {}

    @staticmethod
    def supports(shapes: list[tuple[int, int]], dtype: torch.dtype, device: torch.device) -> bool:
        """Whether this format computes fast for this dtype on ``device``: on CUDA always (it converts its values,
        see the module docstring), elsewhere where ``_weight_int8pack_mm`` runs for the dtype (tried once on a
        tiny input).

        On a CPU only bf16 is fast: a 14336 x 4096 matrix took 3.7 ms in bf16, 36 ms in fp16 and 25 ms in fp32
        (slower than the unquantized fp32 matrix itself).
        """
        if device.type == "cuda":
            return torch.cuda.is_available()
        if device.type == "cpu" and dtype != torch.bfloat16:
            return False
        return _kernel_runs(device.type, dtype)

    def pack(self, gate: Tensor, up: Tensor, down: Tensor, out: Tensor) -> None:
        """Quantize each row symmetrically and write values and scales into ``out``."""
        self.check_weights(gate, up, down)
        for index, weight in enumerate((torch.cat([gate, up]), down)):
            values, scales = quantize_rows(weight, self.dtype)
            raw = values.view(torch.uint8).reshape(-1)
            out[self._offsets[index] : self._offsets[index] + raw.numel()].copy_(raw)
            raw_scales = scales.view(torch.uint8)
            out[self._offsets[2 + index] : self._offsets[2 + index] + raw_scales.numel()].copy_(raw_scales)

    def views(self, buffer: Tensor) -> Views:
        """int8 gate-up, int8 down, and their per-row scales."""
        views = [region(buffer, self._offsets[j], n * k, torch.int8, (n, k)) for j, (n, k) in enumerate(self._matrices)]
        for j, (n, _) in enumerate(self._matrices):
            views.append(region(buffer, self._offsets[2 + j], n * self.dtype.itemsize, self.dtype, (n,)))
        return tuple(views)

    def forward(self, views: Views, x: Tensor, glu: GatedUnit) -> Tensor:
        """Two int8 kernel calls and the gated activation (on CUDA, :meth:`forward_converted`)."""
        gate_up, down, gate_up_scales, down_scales = views
        if gate_up.device.type == "cuda":
            return self.forward_converted(views, x, glu)
        gate, up = torch.ops.aten._weight_int8pack_mm(x, gate_up, gate_up_scales).chunk(2, dim=-1)
        return torch.ops.aten._weight_int8pack_mm((glu(gate, up)).contiguous(), down, down_scales)

    def forward_converted(self, views: Views, x: Tensor, glu: GatedUnit) -> Tensor:
        """The same computation with each matrix's int8 values converted to the compute dtype in the workspace,
        a dense product, then the per-row scales on its outputs."""
        gate_up, down, gate_up_scales, down_scales = views
        workspace = self._workspace_on(gate_up.device)
        converted = workspace[: gate_up.numel()].view(gate_up.shape)
        converted.copy_(gate_up)
        gate, up = (F.linear(x, converted) * gate_up_scales).chunk(2, dim=-1)
        converted = workspace[: down.numel()].view(down.shape)  # gate-up's values are no longer needed
        converted.copy_(down)
        return F.linear(glu(gate, up), converted) * down_scales

    def _workspace_on(self, device: torch.device) -> Tensor:
        """One matrix's worth of the compute dtype on ``device``, allocated on first use (layers and experts
        compute one after another, in stream order on CUDA: one is enough)."""
        workspace = self._workspace.get(device)
        if workspace is None:
            workspace = torch.empty(2 * self.intermediate * self.hidden, dtype=self.dtype, device=device)
            self._workspace[device] = workspace
        return workspace

    def dequantize(self, buffer: Tensor) -> tuple[Tensor, Tensor]:
        """``q * s`` for both matrices, in the compute dtype."""
        gate_up, down, gate_up_scales, down_scales = self.views(buffer)
        return (gate_up.to(self.dtype) * gate_up_scales[:, None], down.to(self.dtype) * down_scales[:, None])


def quantize_rows(weight: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Symmetric per-row int8: values (N, K) int8 and scales (N,) in ``dtype`` with ``weight ~ values * scales``."""
    w = weight.float()
    scales = (w.abs().amax(dim=1) / 127.0).clamp(min=torch.finfo(torch.float16).tiny).to(dtype)
    values = torch.round(w / scales.float()[:, None]).clamp(-127, 127).to(torch.int8)
    return values, scales


@functools.cache
def _kernel_runs(device_type: str, dtype: torch.dtype) -> bool:
    try:
        x = torch.ones(1, 32, dtype=dtype, device=device_type)
        w = torch.ones(16, 32, dtype=torch.int8, device=device_type)
        s = torch.ones(16, dtype=dtype, device=device_type)
        return bool(torch.ops.aten._weight_int8pack_mm(x, w, s).eq(32).all())
    except (RuntimeError, NotImplementedError):
        return False
