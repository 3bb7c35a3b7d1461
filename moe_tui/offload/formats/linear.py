"""Matrix products of half-precision weights on a CPU without native half-precision matmul.

On a CPU without AVX512-BF16 or AMX (oneDNN says so), PyTorch multiplies bf16 and fp16 matrices at a cost that
grows with every token: one bf16 Mixtral-8x7B expert took 20 ms for one token, 133 for 8, 262 for 16 and 2075
for 128 on the 2-core AVX2 machine of RESULTS.md. Converting the weights to fp32 a slab of rows at a time
(slabs small enough to stay in cache) and multiplying in fp32 took 35, 95, 117 and 465 ms: the fixed cost of
the conversion, then little per token. So a prompt's prefill, where an expert sees many tokens, takes the
converted product (1.3x faster at 8 tokens, 4.5x at 128, the same error against an fp32 product), and a decode
step, one token, keeps the plain one.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

CONVERT_FROM_TOKENS = 8  # from this many tokens the converted product is faster (even at about 6 there)
SLAB_BYTES = 4 << 20  # fp32 bytes of one converted slab of weight rows


@functools.cache
def slow_half_matmul(dtype: torch.dtype) -> bool:
    """Whether this CPU has no native matmul for ``dtype`` (bf16 or fp16), as oneDNN reports it."""
    checks = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}
    try:
        return not bool(getattr(torch.ops.mkldnn, checks[dtype])())
    except (KeyError, AttributeError, RuntimeError):  # fp32, or a PyTorch without the check: the plain product
        return False


def linear(x: Tensor, weight: Tensor) -> Tensor:
    """``F.linear(x, weight)``; for many tokens in a half dtype on a CPU without native support for it, the same
    product computed in fp32 a slab of weight rows at a time and rounded to the dtype (see the module
    docstring)."""
    tokens = x.numel() // x.shape[-1] if x.numel() else 0
    if x.device.type != "cpu" or tokens < CONVERT_FROM_TOKENS or not slow_half_matmul(x.dtype):
        return F.linear(x, weight)
    rows, columns = weight.shape
    flat = x.reshape(tokens, columns).float()
    out = torch.empty(tokens, rows, dtype=x.dtype)
    step = max(1, SLAB_BYTES // (4 * columns))
    slab = torch.empty(min(step, rows), columns, dtype=torch.float32)
    for start in range(0, rows, step):
        part = weight[start : start + step]
        converted = slab[: part.shape[0]]
        converted.copy_(part)
        out[:, start : start + part.shape[0]] = flat @ converted.t()
    return out.view(*x.shape[:-1], rows)
