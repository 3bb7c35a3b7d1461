"""Expert formats: how one routed expert is laid out in its byte buffer, and how it is computed from there.

Every format keeps one expert in one contiguous ``uint8`` buffer (one copy moves one expert) in the layout its
kernel reads, so computing with a cached expert reads only those bytes:

* :class:`~.dense.DenseFormat` (``bf16``/``fp16``/``fp32``): ``gate | up | down`` in the compute dtype;
* :class:`~.int4.Int4Format` (4 bits): HQQ's quantization, converted to PyTorch's own int4 kernels
  (``_weight_int4pack_mm_for_cpu`` on CPU, ``_weight_int4pack_mm`` on CUDA), whose packed layout differs
  between the two devices;
* :class:`~.int8.Int8Format` (8 bits): per-output-channel int8 with PyTorch's ``_weight_int8pack_mm`` on a CPU,
  converted to the compute dtype in a workspace on every use on CUDA (where that kernel is slow);
* :class:`~.int2.Int2Format` (2 bits on CPU): HQQ's 2-bit values in the int4 kernel's layout, two packed bytes
  per stored byte, expanded a cache-sized chunk at a time before the int4 kernel;
* :class:`~.int3.Int3Format` (3 bits on CPU): the same for 3-bit values, three stored bytes for four of the
  kernel's (a chunk's last quarter carried in the free top bits of the other three);
* :class:`~.hqq.HqqFormat` (2 and 3 bits on CUDA, and 4 or 8 bits where no kernel fits): HQQ's bit-packed
  layout, dequantized into a workspace on every use.

The three that unpack on every use (int2 and int3 into a chunk, HQQ's into a whole expert) are **unfused**, and
say so.

:func:`make_format` picks the format once; the store, the slots, the engine, the planner and the benchmarks
all take that object and never re-derive it.
"""

from __future__ import annotations

import torch

from moe_tui import precision
from moe_tui.offload.formats.base import ExpertFormat, Views
from moe_tui.offload.formats.dense import DenseFormat
from moe_tui.offload.formats.hqq import HqqFormat
from moe_tui.offload.formats.int2 import Int2Format
from moe_tui.offload.formats.int3 import Int3Format
from moe_tui.offload.formats.int4 import Int4Format
from moe_tui.offload.formats.int8 import Int8Format

__all__ = [
    "DenseFormat",
    "ExpertFormat",
    "HqqFormat",
    "Int2Format",
    "Int3Format",
    "Int4Format",
    "Int8Format",
    "Views",
    "kernel_dtype_note",
    "make_format",
]


def make_format(
    shapes: list[tuple[int, int]],
    dtype: torch.dtype,
    bits: int | None = None,
    group_size: int = precision.DEFAULT_GROUP_SIZE,
    device: torch.device | str = "cpu",
    fused: bool = True,
    optimize: bool = True,
) -> ExpertFormat:
    """The format for experts of ``shapes`` (gate, up, down) computed in ``dtype`` on ``device``.

    ``bits`` None keeps them unquantized. At 4 and 8 bits the fused kernel formats are used where the device,
    dtype and shapes allow them, at 2 and 3 bits on CPU the int4 kernel's expansion; elsewhere (and with
    ``fused=False``) HQQ's unfused format. ``optimize`` is
    HQQ's zero-point optimisation when quantizing (off: min-max rounding, much faster).
    """
    device = torch.device(device)
    fmt: ExpertFormat
    if bits is None:
        return DenseFormat(shapes, dtype)
    if fused and bits == 4 and Int4Format.supports(shapes, dtype, group_size, device):
        fmt = Int4Format(shapes, dtype, group_size, device)
    elif fused and bits == 2 and Int2Format.supports(shapes, dtype, group_size, device):
        fmt = Int2Format(shapes, dtype, group_size)
    elif fused and bits == 3 and Int3Format.supports(shapes, dtype, group_size, device):
        fmt = Int3Format(shapes, dtype, group_size)
    elif fused and bits == 8 and Int8Format.supports(shapes, dtype, device):
        return Int8Format(shapes, dtype, device)  # its own round-to-nearest: nothing to optimise
    else:
        fmt = HqqFormat(shapes, dtype, bits, group_size)
    fmt.optimize = optimize
    return fmt


def kernel_dtype_note(
    fmt: ExpertFormat, shapes: list[tuple[int, int]], bits: int | None, group_size: int, device: torch.device
) -> str:
    """A load note when ``fmt`` is HQQ's unfused layout only because of the compute dtype: PyTorch's quantized
    kernels compute in bfloat16, so a float32 model (the demo) at 4 bits would otherwise run slower than it
    could with nothing saying why: 53 against 92 tok/s for the demo on a 2-core CPU, and one Mixtral-8x7B expert
    takes 1.7 ms unfused against 0.08 ms in int4 on an H200 ('' when there is nothing to say)."""
    if bits is None or not isinstance(fmt, HqqFormat) or fmt.dtype == torch.bfloat16:
        return ""
    kernel = make_format(shapes, torch.bfloat16, bits, group_size, device)
    if isinstance(kernel, HqqFormat):
        return ""
    dtype = str(fmt.dtype).removeprefix("torch.")
    return (
        f"{bits}-bit experts use HQQ's unfused layout, dequantized on every use: the faster {kernel.label()} format "
        f"needs bfloat16 compute and this model computes in {dtype}; --dtype bf16 would use it"
    )
