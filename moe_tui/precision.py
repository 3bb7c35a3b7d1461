"""Bytes that weights take at a given precision: the one formula that params, the store and the planner share.

A precision is a string: ``"fp32"``, ``"bf16"``, ``"fp16"``, ``"int8"``, or ``"hqq4"`` / ``"hqq3"`` /
``"hqq2"`` (HQQ at 4, 3 or 2 bits; ``"hqq8"`` also exists).

HQQ stores a weight matrix of ``n`` elements quantized along axis 1 with group size ``g`` as
``r = n / g`` groups (rows of ``g`` values each), bit-packed along the rows, plus one scale and one zero
per group in the metadata dtype (fp16 or bf16, ``m`` = 2 bytes):

    8 bits: r * g bytes                    (one value per uint8)
    4 bits: ceil(r / 2) * g bytes          (two values per uint8)
    2 bits: ceil(r / 4) * g bytes          (four values per uint8)
    3 bits: 4 * ceil(r / 10) * g bytes     (ten values per int32, rows padded to a multiple of 10)
    metadata: 2 * r * m bytes              (scale and zero per group)

so at 4 bits, g = 64, one parameter costs 0.5 + 4/64 = 0.5625 bytes. ``int8`` means plain per-channel
int8 (one fp16 scale per output row); these figures ignore the few bytes of shape metadata per matrix.
"""

from __future__ import annotations

import math

FLOAT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
HQQ_BITS = {"hqq8": 8, "hqq4": 4, "hqq3": 3, "hqq2": 2}
PRECISIONS = ("fp32", "bf16", "fp16", "int8", "hqq8", "hqq4", "hqq3", "hqq2")
SUMMARY_PRECISIONS = ("fp32", "bf16", "int8", "hqq4", "hqq3", "hqq2")
DEFAULT_GROUP_SIZE = 64
META_BYTES = 2


def hqq_packed_bytes(numel: int, bits: int, group_size: int = DEFAULT_GROUP_SIZE) -> int:
    """Bytes of the packed integer weights of one HQQ-quantized matrix of ``numel`` elements."""
    if bits not in (2, 3, 4, 8):
        raise ValueError(f"HQQ supports 2, 3, 4 or 8 bits, not {bits}")
    rows = math.ceil(numel / group_size)
    if bits == 3:
        return 4 * math.ceil(rows / 10) * group_size
    per_byte = 8 // bits
    return math.ceil(rows / per_byte) * group_size


def hqq_meta_bytes(numel: int, group_size: int = DEFAULT_GROUP_SIZE, meta_bytes: int = META_BYTES) -> int:
    """Bytes of the per-group scale and zero of one HQQ-quantized matrix."""
    return 2 * math.ceil(numel / group_size) * meta_bytes


def matrix_bytes(shape: tuple[int, ...], precision: str, group_size: int = DEFAULT_GROUP_SIZE) -> int:
    """Bytes that one weight tensor of ``shape`` takes at ``precision`` (see the module docstring)."""
    numel = math.prod(shape)
    if precision in FLOAT_BYTES:
        return numel * FLOAT_BYTES[precision]
    if precision == "int8":
        rows = shape[0] if len(shape) > 1 else 1
        return numel + rows * META_BYTES
    if precision in HQQ_BITS:
        return hqq_packed_bytes(numel, HQQ_BITS[precision], group_size) + hqq_meta_bytes(numel, group_size)
    raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")


def tensors_bytes(shapes: list[tuple[int, ...]], precision: str, group_size: int = DEFAULT_GROUP_SIZE) -> int:
    """Bytes of several tensors, each stored (and quantized) on its own."""
    return sum(matrix_bytes(shape, precision, group_size) for shape in shapes)


def precision_for_bits(bits: int | None, dtype: str = "bf16") -> str:
    """The precision name for an ``--expert-bits``/``--attn-bits`` value (None means unquantized ``dtype``)."""
    if bits is None:
        return dtype
    name = f"hqq{bits}"
    if name not in HQQ_BITS:
        raise ValueError(f"unsupported bit width {bits}; choose 2, 3, 4 or 8")
    return name


def format_bytes(n: float) -> str:
    """Human-readable binary size: ``1.5 GiB``, ``320 KiB``, ``12 B``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_count(n: float) -> str:
    """Human-readable parameter count: ``46.70 B``, ``12.9 M``, ``4.1 K``, ``512``."""
    for threshold, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= threshold:
            return f"{n / threshold:.2f} {suffix}"
    return f"{n:.0f}"
