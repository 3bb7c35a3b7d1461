"""What a trained router does: expert choices, usage entropy, and the LRU hit rate its choices would give.

These numbers go into the demo model's card and its tests. They read the router's own decisions
(``output_router_logits=True``), so they need no offloading engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from moe_tui.policies import LRUPolicy


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


def lru_hit_rate(choices: list[tuple[int, ...]], cache_size: int) -> tuple[int, int]:
    """(hits, accesses) of a ``cache_size``-slot LRU cache serving one layer's expert choices token by token.

    The experts of the current token are protected from eviction while it is being served, as in the engine.
    """
    policy = LRUPolicy()
    resident: set[int] = set()
    hits = accesses = 0
    for experts in choices:
        for expert in experts:
            accesses += 1
            if expert in resident:
                hits += 1
                policy.access(expert)
                continue
            if len(resident) >= cache_size:
                victim = policy.victim(resident, protected=experts)
                if victim is None:
                    continue
                resident.discard(victim)
                policy.evict(victim)
            resident.add(expert)
            policy.insert(expert)
    return hits, accesses


def model_lru_hit_rate(layer_logits: list[torch.Tensor], top_k: int, cache_size: int) -> float:
    """LRU hit rate over all layers (each layer its own cache) for a token sequence's router logits."""
    hits = accesses = 0
    for logits in layer_logits:
        layer_hits, layer_accesses = lru_hit_rate(top_k_choices(logits, top_k), cache_size)
        hits += layer_hits
        accesses += layer_accesses
    return hits / accesses if accesses else 0.0
