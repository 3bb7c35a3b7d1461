"""gpt-oss: experts stored transposed with gate and up columns interleaved, biases on both projections, and a
clamped SwiGLU (``(up + 1) * gate * sigmoid(alpha * gate)`` after clamping both to ``swiglu_limit``); its
router adds a bias to the logits and picks their top-k. Published checkpoints hold the experts as MXFP4
(``*_blocks`` and ``*_scales``), dequantized while loading (see :mod:`moe_tui.offload.checkpoint`); the
attention sinks are transformers' own.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from moe_tui.offload.families.base import Family, GatedUnit, check_top_k


def clamped_swiglu(experts: nn.Module) -> GatedUnit:
    """gpt-oss's gated unit with the experts module's ``alpha`` and ``limit``."""
    alpha, limit = float(experts.alpha), float(experts.limit)

    def unit(gate: Tensor, up: Tensor) -> Tensor:
        gate = gate.clamp(max=limit)
        up = up.clamp(min=-limit, max=limit)
        return (up + 1) * (gate * torch.sigmoid(gate * alpha))

    return unit


GPT_OSS = Family(
    "gpt_oss",
    partial(check_top_k, experts_field="num_local_experts"),
    router="router",
    glu=clamped_swiglu,
    interleaved=True,
    bias_names=("gate_up_proj_bias", "down_proj_bias"),
)
