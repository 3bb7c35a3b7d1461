"""What a model is made of: total and active parameters, where they sit, and bytes at each precision.

``load_config`` finds and checks a config, ``build_tree`` builds the model on the meta device and returns a
plain :class:`ParamNode` tree, and ``expert_weight_shapes`` / ``routed_expert_bytes`` give the size of one
routed expert that the offloading engine and the planner use. Nothing here imports torch or transformers
until a function needs them.
"""

from moe_tui.params.build import build_tree, tree_from_model
from moe_tui.params.config import load_config
from moe_tui.params.experts import expert_weight_shapes, routed_expert_bytes
from moe_tui.params.tree import ParamNode

__all__ = [
    "ParamNode",
    "build_tree",
    "expert_weight_shapes",
    "load_config",
    "routed_expert_bytes",
    "tree_from_model",
]
