"""HQQ quantization helpers: quantizing a matrix, HQQ's bit packing, and HQQ linears for the resident layers.

The expert formats (:mod:`moe_tui.offload.formats`) build on :func:`quantize_matrix` and :func:`pack_rows`.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable

import torch
from torch import Tensor, nn

from moe_tui.offload.arch import MoEModel

HQQ_MODULE = "hqq.core.quantize"


def import_hqq() -> None:
    """Import HQQ's quantizer with ``torch.compile`` deferred to the first call of each function it decorates.

    hqq decorates three methods of its linear layers (backends moe-tui does not use) with ``torch.compile()``
    as it is imported, and decorating imports TorchInductor; transformers imports hqq, when it is installed,
    as soon as a model's code loads (for its quantized KV cache). Deferring that took loading the demo model from
    8.3 to 6.5 s on a 2-core CPU (``moe-tui ask``'s start, and the dashboard's). The loader calls this before
    transformers loads a model's code; nothing happens once hqq is imported, or where it is not installed.
    """
    if HQQ_MODULE in sys.modules:
        return
    compile_now = torch.compile
    torch.compile = compile_on_first_call(compile_now)
    try:
        __import__(HQQ_MODULE)
    except ImportError:  # transformers will not import it either
        pass
    finally:
        torch.compile = compile_now


def compile_on_first_call(compile_now: Callable) -> Callable:
    """A stand-in for ``torch.compile`` (called as ``compile_now`` is, with a function or as a decorator factory)
    whose functions call ``compile_now`` with the same options only when first called."""

    def deferred(function: Callable | None = None, **options):
        if function is None:
            return lambda decorated: deferred(decorated, **options)
        compiled = None

        @functools.wraps(function)
        def call(*args, **kwargs):
            nonlocal compiled
            if compiled is None:
                compiled = compile_now(function, **options)
            return compiled(*args, **kwargs)

        return call

    return deferred


def pack_factor(bits: int) -> tuple[int, torch.dtype]:
    """Values per packed element and the packed element's dtype in HQQ's layout."""
    if bits == 3:
        return 10, torch.int32
    return 8 // bits, torch.uint8


def quantize_matrix(weight: Tensor, bits: int, group_size: int, optimize: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """HQQ-quantize one matrix along axis 1: integer values (r, g) as uint8, and scale and zero (r, 1).

    Uses HQQ's own quantizer with its default settings for the bit width: the half-quadratic optimisation of
    the zero point, or with ``optimize=False`` plain min-max rounding (about 70x faster on a CPU, less
    accurate); dequantization is ``(values - zero) * scale``.
    """
    from hqq.core.quantize import BaseQuantizeConfig, Quantizer

    params = dict(BaseQuantizeConfig(nbits=bits, group_size=group_size)["weight_quant_params"])
    params.pop("view_as_float", None)
    values, meta = Quantizer.quantize(
        weight.float(),
        bitpack=False,
        device=str(weight.device),
        compute_dtype=torch.float32,
        **{**params, "optimize": optimize},
    )
    return values.to(torch.uint8), meta["scale"], meta["zero"]


def pack_rows(values: Tensor, bits: int) -> Tensor:
    """Bit-pack (r, g) integer values into (ceil(r / p), g) units, HQQ's order, zero-padding the rows."""
    per_unit, unit_dtype = pack_factor(bits)
    rows, cols = values.shape
    packed_rows = math.ceil(rows / per_unit)
    padded = torch.zeros(packed_rows * per_unit, cols, dtype=unit_dtype, device=values.device)
    padded[:rows] = values.to(unit_dtype)
    packed = torch.zeros(packed_rows, cols, dtype=unit_dtype, device=values.device)
    for j in range(per_unit):
        packed |= padded[j * packed_rows : (j + 1) * packed_rows] << (bits * (per_unit - 1 - j))
    return packed


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
