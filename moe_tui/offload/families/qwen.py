"""Qwen2-MoE, Qwen3-MoE and OLMoE: softmax top-k routers called ``gate``, experts named
``mlp.experts.E.gate_proj/up_proj/down_proj`` in original checkpoints (Qwen2-MoE's shared expert stays
resident with the rest of the block)."""

from __future__ import annotations

from functools import partial

from moe_tui.offload.families.base import Family, check_top_k

QWEN_NAMES = ("gate_proj", "up_proj", "down_proj")
_check = partial(check_top_k, experts_field="num_experts")

QWEN2_MOE = Family("qwen2_moe", _check, expert_names=QWEN_NAMES)
QWEN3_MOE = Family("qwen3_moe", _check, expert_names=QWEN_NAMES)
OLMOE = Family("olmoe", _check, expert_names=QWEN_NAMES)
