"""Routing forced from a recorded trace (``--routing``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from moe_tui.errors import UserError


# ----------------------------------------------------------------------------------------------- routing
class ForcedRouting:
    """Make every router pick the experts a recorded trace's decoded tokens picked, in order, cyclically.

    Each MoE layer walks its own list of decode-step routings; a forward pass of T tokens takes the next T
    entries (so a prefill touches as many experts as T decoded tokens would). Prefetch guesses still come
    from the model's own routers, so under forced routing the prefetch recall says nothing.
    """

    def __init__(self, header: Any, events: Sequence[Any]):
        from moe_tui.telemetry import LayerStep

        self.routes: list[list[tuple[tuple[int, ...], tuple[float, ...]]]] = [[] for _ in range(header.num_layers)]
        for event in events:
            if isinstance(event, LayerStep) and event.n_tokens == 1 and len(event.experts) == header.top_k:
                total = sum(event.weights) or 1.0
                self.routes[event.layer].append((event.experts, tuple(w / total for w in event.weights)))
        if not all(self.routes):
            raise UserError("the routing trace has MoE layers without any decoded token to replay")
        self.cursor = [0] * header.num_layers
        self._hooks: list[Any] = []

    def install(self, model: Any) -> None:
        """Hook the router of every MoE layer of ``model`` (a transformers MoE model)."""
        gates = [layer.mlp.gate for layer in model.model.layers if hasattr(getattr(layer, "mlp", None), "gate")]
        if len(gates) != len(self.routes):
            raise UserError(f"the routing trace has {len(self.routes)} MoE layers, the model {len(gates)}")
        for index, gate in enumerate(gates):
            self._hooks.append(gate.register_forward_hook(self._hook(index)))

    def remove(self) -> None:
        """Take the hooks off again."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _hook(self, layer: int) -> Callable[..., Any]:
        import torch

        def forced(module: Any, args: Any, output: Any) -> Any:
            logits, weights, index = output
            routes = self.routes[layer]
            picks = [routes[(self.cursor[layer] + t) % len(routes)] for t in range(index.shape[0])]
            self.cursor[layer] += index.shape[0]
            new_index = torch.tensor([p[0] for p in picks], dtype=index.dtype, device=index.device)
            new_weights = torch.tensor([p[1] for p in picks], dtype=weights.dtype, device=weights.device)
            return logits, new_weights, new_index

        return forced
