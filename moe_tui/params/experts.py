"""The size of one routed expert: the figure the offloading engine's buffers and the planner are built on."""

from __future__ import annotations

from typing import TYPE_CHECKING

from moe_tui import precision as prec
from moe_tui.errors import UserError
from moe_tui.params.build import build_tree
from moe_tui.params.tree import ParamNode

if TYPE_CHECKING:
    from transformers import PretrainedConfig


def routed_experts_node(config: PretrainedConfig) -> ParamNode:
    """The routed-experts node of the first MoE layer of ``config``'s model; UserError for a dense model."""
    node = build_tree(config).find("experts")
    if node is None:
        raise UserError(f"a {config.model_type!r} model has no routed experts")
    return node


def expert_weight_shapes(config: PretrainedConfig) -> list[tuple[int, ...]]:
    """Shapes of the tensors of ONE routed expert, in the order the engine quantizes them.

    Fused layouts give ``[gate (I, H), up (I, H), down (H, I)]`` (gpt-oss: stored transposed, each matrix
    followed by its bias vector); per-expert module lists give their parameters in module order.
    """
    return routed_experts_node(config).tensor_shapes()


def routed_expert_bytes(config: PretrainedConfig, precision: str, group_size: int = prec.DEFAULT_GROUP_SIZE) -> int:
    """Bytes of one routed expert at ``precision``, each tensor stored (and quantized) on its own.

    Equals ``precision.tensors_bytes(expert_weight_shapes(config), precision, group_size)`` whenever the
    expert is matrices only (every supported family but gpt-oss, whose bias vectors stay 16-bit).
    """
    node = routed_experts_node(config)
    return node.bytes(precision, group_size) // node.copies
