"""The module that takes the place of a MoE block's ``experts``: same call, weights served by the engine."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

if TYPE_CHECKING:
    from moe_tui.offload.engine import Engine


class OffloadedExperts(nn.Module):
    """``experts(hidden_states, top_k_index, top_k_weights)`` computed from the expert cache.

    Holds no parameters: the experts live in the engine's store and slots, so ``state_dict()`` and
    ``parameters()`` of the model list only the resident (non-expert) weights.
    """

    def __init__(self, layer: int, num_experts: int, act_fn: nn.Module):
        super().__init__()
        self.layer = layer
        self.num_experts = num_experts
        self.act_fn = act_fn
        self.engine: Engine | None = None

    def forward(self, hidden_states: Tensor, top_k_index: Tensor, top_k_weights: Tensor) -> Tensor:
        """Weighted sum of the selected experts' outputs for each token, like the fused experts module."""
        if self.engine is None:
            raise RuntimeError("this offloaded model was closed")
        return self.engine.run_layer(self.layer, hidden_states, top_k_index, top_k_weights)

    def extra_repr(self) -> str:
        """Shown by ``print(model)``."""
        return f"layer={self.layer}, num_experts={self.num_experts}, offloaded"
