"""The module that takes the place of a MoE block's ``experts``: same call, weights served by the engine."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import Tensor, nn

from moe_tui.offload.families.base import GatedUnit

if TYPE_CHECKING:
    from moe_tui.offload.engine import Engine

Biases = tuple[Tensor, Tensor, Tensor]  # gate (E, I), up (E, I), down (E, H)


class OffloadedExperts(nn.Module):
    """``experts(hidden_states, top_k_index, top_k_weights)`` computed from the expert cache.

    Holds no expert weights: they live in the engine's store and slots, so ``state_dict()`` and
    ``parameters()`` of the model list only the resident weights, and the experts' biases when the family has
    them (gpt-oss), registered under their original names so that they load, move and count as resident.
    ``glu`` is the family's gated unit; ``split_bias`` cuts a gate-up bias into its gate and up parts.
    """

    def __init__(
        self,
        layer: int,
        num_experts: int,
        glu: GatedUnit,
        biases: dict[str, Tensor] | None = None,
        split_bias: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None,
    ):
        super().__init__()
        self.layer = layer
        self.num_experts = num_experts
        self.glu = glu
        self.engine: Engine | None = None
        self.bias_names = tuple(biases or {})
        self._split_bias = split_bias
        for name, tensor in (biases or {}).items():
            self.register_parameter(name, nn.Parameter(tensor.detach(), requires_grad=False))

    def biases(self) -> Biases | None:
        """Each expert's gate, up and down biases (None for families without)."""
        if not self.bias_names or self._split_bias is None:
            return None
        gate_up, down = (getattr(self, name) for name in self.bias_names)
        gate, up = self._split_bias(gate_up)
        return gate, up, down

    def forward(self, hidden_states: Tensor, top_k_index: Tensor, top_k_weights: Tensor) -> Tensor:
        """Weighted sum of the selected experts' outputs for each token, like the fused experts module."""
        if self.engine is None:
            raise RuntimeError("this offloaded model was closed")
        return self.engine.run_layer(self.layer, hidden_states, top_k_index, top_k_weights, self.biases())

    def extra_repr(self) -> str:
        """Shown by ``print(model)``."""
        return f"layer={self.layer}, num_experts={self.num_experts}, offloaded"
