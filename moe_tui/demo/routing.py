"""What a trained router does: expert choices, usage entropy, and the LRU hit rate its choices would give.

These numbers go into the demo model's card and its tests. They read the router's own decisions
(``output_router_logits=True``), so they need no offloading engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from moe_tui.sim.cache import simulate_layer
from moe_tui.sim.passes import LayerPass
from moe_tui.telemetry import Counters


@dataclass(frozen=True)
class LayerRouting:
    """One MoE layer over a set of tokens.

    ``usage`` is the share of top-k slots each expert received; ``usage_entropy_bits`` its entropy
    (``log2(num_experts)`` when perfectly balanced, 0 when collapsed onto one expert);
    ``router_entropy_bits`` the mean entropy of the router's softmax per token (how sure each decision is).
    """

    layer: int
    usage: tuple[float, ...]
    usage_entropy_bits: float
    router_entropy_bits: float


def router_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
    """Per-layer router logits ``[tokens, num_experts]`` for the real (unpadded) tokens of a batch."""
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_router_logits=True, use_cache=False)
    keep = attention_mask.reshape(-1).bool() if attention_mask is not None else None
    layers = []
    for logits in out.router_logits:
        flat = logits.reshape(-1, logits.shape[-1]).float()
        layers.append(flat[keep] if keep is not None else flat)
    return layers


def top_k_choices(logits: torch.Tensor, top_k: int) -> list[tuple[int, ...]]:
    """The experts each token is routed to (ascending ids), from one layer's router logits."""
    indices = torch.topk(logits, top_k, dim=-1).indices.sort(dim=-1).values
    return [tuple(row) for row in indices.tolist()]


def layer_routing(layer: int, logits: torch.Tensor, top_k: int) -> LayerRouting:
    """Usage shares and entropies of one layer's routing over its tokens."""
    num_experts = logits.shape[-1]
    chosen = torch.topk(logits, top_k, dim=-1).indices.reshape(-1)
    counts = torch.bincount(chosen, minlength=num_experts).double()
    usage = counts / counts.sum()
    usage_entropy = -sum(p * math.log2(p) for p in usage.tolist() if p > 0)
    probs = torch.softmax(logits.double(), dim=-1)
    router_entropy = float(-(probs * torch.log2(probs.clamp_min(1e-30))).sum(-1).mean())
    return LayerRouting(layer, tuple(usage.tolist()), usage_entropy, router_entropy)


def lru_counters(choices: list[tuple[int, ...]], cache_size: int) -> Counters:
    """Hits and misses of a ``cache_size``-slot LRU cache serving one layer's expert choices token by token: the
    cache simulator's model of a pass (a token's experts are never evicted while it is served)."""
    return simulate_layer([LayerPass(experts=tuple(dict.fromkeys(c))) for c in choices], cache_size, "lru")


def model_lru_hit_rate(layer_logits: list[torch.Tensor], top_k: int, cache_size: int) -> float:
    """LRU hit rate over all layers (each layer its own cache) for a token sequence's router logits."""
    total = Counters()
    for logits in layer_logits:
        total = total + lru_counters(top_k_choices(logits, top_k), cache_size)
    return total.hit_rate
