"""GraniteMoE: a softmax over the top-k logits (so the logits' top-k is its choice); its block is the decoder
layer's ``block_sparse_moe``, and original checkpoints keep each layer's experts fused as ``input_linear``
(gate rows first) and ``output_linear``, with the router's weight under ``router.layer``."""

from __future__ import annotations

from functools import partial

from moe_tui.offload.families.base import Family, check_top_k

GRANITEMOE = Family(
    "granitemoe",
    partial(check_top_k, experts_field="num_local_experts"),
    block="block_sparse_moe",
    layer_block="block_sparse_moe",
    router="router",
    fused_names=("input_linear.weight", "output_linear.weight"),
    renames=((".router.weight", ".router.layer.weight"),),
)
