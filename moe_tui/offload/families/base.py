"""What the engine needs to know about one model family, as one small adapter.

A family says where its MoE blocks and routers are in the transformers-5 model, how its router picks
experts (for the prefetch guess: the next layer's router applied early must pick what the family itself would
pick), which configs it refuses, and how its original checkpoints name the experts and the other tensors.
Everything else (the experts' call ``experts(hidden, top_k_index, top_k_weights)`` with fused ``gate_up_proj``
[E, 2I, H] and ``down_proj`` [E, H, I], and the routing inside the block's own forward) is transformers' own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moe_tui.errors import UserError

Choice = Callable[[nn.Module, Tensor], Tensor]
GatedUnit = Callable[[Tensor, Tensor], Tensor]  # (gate projection, up projection) -> the down projection's input


def silu_glu(experts: nn.Module) -> GatedUnit:
    """The usual gated unit ``act(gate) * up`` with the experts module's own activation."""
    act = experts.act_fn.forward  # called without nn.Module's hook machinery: ~4 us per expert saved

    def unit(gate: Tensor, up: Tensor) -> Tensor:
        return act(gate) * up

    return unit


def logits_choice(router: nn.Module, hidden: Tensor) -> Tensor:
    """Experts ranked by their router logits (softmax top-k, and every family that picks the largest logits)."""
    return F.linear(hidden, router.weight, getattr(router, "bias", None))


def mask_groups(scores: Tensor, groups: int, keep: int, group_score: Callable[[Tensor], Tensor]) -> Tensor:
    """``scores`` (T, E) with every expert outside each token's ``keep`` best groups (of ``groups`` equal groups,
    ranked by ``group_score`` of a (T, G, E/G) view) set to -inf: group-limited routing."""
    tokens, experts = scores.shape
    grouped = scores.view(tokens, groups, experts // groups)
    best = torch.topk(group_score(grouped), k=keep, dim=-1).indices
    allowed = torch.zeros(tokens, groups, dtype=torch.bool, device=scores.device).scatter_(1, best, True)
    return scores.masked_fill(~allowed.repeat_interleave(experts // groups, dim=1), float("-inf"))


def check_top_k(config: object, experts_field: str, top_k_field: str = "num_experts_per_tok") -> None:
    """Refuse a top-k that is not between 1 and the number of experts."""
    experts, top_k = getattr(config, experts_field, None), getattr(config, top_k_field, None)
    if not isinstance(experts, int) or experts < 1:
        raise UserError(f"{experts_field} must be a whole number of experts >= 1, not {experts!r}")
    if not isinstance(top_k, int) or not 1 <= top_k <= experts:
        raise UserError(f"{top_k_field} {top_k!r} must be between 1 and the {experts} experts of a layer")


def check_groups(config: object, experts: int) -> None:
    """Refuse group-limited routing settings that cannot work: no groups, groups that do not divide the experts,
    more groups kept than there are, or fewer experts in the kept groups than top-k."""
    groups, keep, top_k = config.n_group, config.topk_group, config.num_experts_per_tok
    if not isinstance(groups, int) or groups < 1:
        raise UserError(f"n_group must be a whole number of groups >= 1, not {groups!r}")
    if experts % groups:
        raise UserError(f"n_group {groups} does not divide the {experts} experts of a layer")
    if not isinstance(keep, int) or not 1 <= keep <= groups:
        raise UserError(f"topk_group {keep!r} must be between 1 and n_group {groups}")
    if keep * (experts // groups) < top_k:
        raise UserError(f"topk_group {keep} keeps {keep * (experts // groups)} experts, fewer than top-k {top_k}")


@dataclass(frozen=True)
class Family:
    """One model family's adapter (see the module docstring).

    ``layer_block``: the decoder layer's attribute holding the MoE block; ``router``: the block's attribute
    holding the router; ``choice(router, hidden)``: per-token scores (T, E) whose top-k is the family's own
    selection (-inf for experts its routing excludes); ``check(config)``: refuse impossible settings.
    Checkpoints: ``block`` names the MoE block in original checkpoints, ``expert_names`` one expert's gate, up
    and down tensors there (or ``fused_names``: the original's own fused gate-up and down tensors);
    ``renames`` maps other tensors' names from the model to the original checkpoint.
    """

    name: str
    check: Callable[[object], None]
    block: str = "mlp"
    expert_names: tuple[str, str, str] | None = None
    layer_block: str = "mlp"
    router: str = "gate"
    choice: Choice = logits_choice
    fused_names: tuple[str, str] | None = None
    renames: tuple[tuple[str, str], ...] = ()
    glu: Callable[[nn.Module], GatedUnit] = silu_glu
    interleaved: bool = False  # gate_up_proj [E, H, 2I] with gate and up columns alternating, down [E, I, H]
    bias_names: tuple[str, str] | None = None  # the experts' gate-up and down bias tensors (kept resident)

    def dims(self, experts: nn.Module) -> tuple[int, int, int]:
        """(experts, intermediate size, hidden size) of a fused experts module."""
        num, first, second = experts.gate_up_proj.shape
        return (
            (int(num), int(second) // 2, int(first)) if self.interleaved else (int(num), int(first) // 2, int(second))
        )

    def fused_shapes(self, num: int, intermediate: int, hidden: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The shapes of one layer's fused gate-up and down tensors."""
        if self.interleaved:
            return (num, hidden, 2 * intermediate), (num, intermediate, hidden)
        return (num, 2 * intermediate, hidden), (num, hidden, intermediate)

    def split(self, gate_up: Tensor, down: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One expert's gate (I, H), up (I, H) and down (H, I) from its rows of the fused tensors."""
        if self.interleaved:
            return gate_up[:, 0::2].t(), gate_up[:, 1::2].t(), down.t()
        half = gate_up.shape[0] // 2
        return gate_up[:half], gate_up[half:], down

    def split_bias(self, gate_up_bias: Tensor) -> tuple[Tensor, Tensor]:
        """The gate and up halves of a gate-up bias (..., 2I)."""
        if self.interleaved:
            return gate_up_bias[..., 0::2], gate_up_bias[..., 1::2]
        half = gate_up_bias.shape[-1] // 2
        return gate_up_bias[..., :half], gate_up_bias[..., half:]

    def layout_ok(self, experts: nn.Module) -> bool:
        """Whether an experts module holds fused 3-D weights in this family's layout."""
        gate_up, down = getattr(experts, "gate_up_proj", None), getattr(experts, "down_proj", None)
        if not (isinstance(gate_up, nn.Parameter) and isinstance(down, nn.Parameter)):
            return False
        if gate_up.dim() != 3 or down.dim() != 3:
            return False
        if self.bias_names is not None:
            return all(isinstance(getattr(experts, name, None), nn.Parameter) for name in self.bias_names)
        return (
            not getattr(experts, "is_transposed", False)
            and not getattr(experts, "has_bias", False)
            and getattr(experts, "is_concatenated", True)
            and getattr(experts, "has_gate", True)
            and hasattr(experts, "act_fn")
        )

    def original_keys(self, decoder_index: int, expert: int) -> tuple[str, str, str] | None:
        """Checkpoint keys of one expert's gate, up and down weights in the original layout (None: the original
        checkpoints keep experts fused)."""
        if self.expert_names is None:
            return None
        base = f"model.layers.{decoder_index}.{self.block}.experts.{expert}"
        return tuple(f"{base}.{name}.weight" for name in self.expert_names)  # type: ignore[return-value]

    def fused_keys(self, decoder_index: int) -> tuple[str, str]:
        """Checkpoint keys of one layer's fused ``gate_up_proj`` and ``down_proj`` (transformers-5 layout)."""
        base = f"model.layers.{decoder_index}.{self.layer_block}.experts"
        return f"{base}.gate_up_proj", f"{base}.down_proj"

    def original_fused_keys(self, decoder_index: int) -> tuple[str, str] | None:
        """Checkpoint keys of an original checkpoint's own fused gate-up and down tensors (None: not this one's)."""
        if self.fused_names is None:
            return None
        base = f"model.layers.{decoder_index}.{self.block}"
        return f"{base}.{self.fused_names[0]}", f"{base}.{self.fused_names[1]}"

    def checkpoint_name(self, model_key: str) -> str:
        """The name a non-expert model tensor has in an original checkpoint."""
        name = model_key.replace(f".{self.layer_block}.", f".{self.block}.")
        for model_part, checkpoint_part in self.renames:
            name = name.replace(model_part, checkpoint_part)
        return name
