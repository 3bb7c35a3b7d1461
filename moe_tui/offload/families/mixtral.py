"""Mixtral and Phi-3.5-MoE: eight experts per layer named ``block_sparse_moe.experts.E.w1/w3/w2`` in original
checkpoints; Phi's router (sparsemixer) picks the largest logit, then the largest of the rest, so its top-k is
the logits' top-k."""

from __future__ import annotations

from functools import partial

from moe_tui.offload.families.base import Family, check_top_k

_check = partial(check_top_k, experts_field="num_local_experts")

MIXTRAL = Family("mixtral", _check, block="block_sparse_moe", expert_names=("w1", "w3", "w2"))
PHIMOE = Family(
    "phimoe",
    _check,
    block="block_sparse_moe",
    expert_names=("w1", "w3", "w2"),
    router="router",
    renames=((".block_sparse_moe.router.", ".block_sparse_moe.gate."),),
)
