"""Where a transformers-5 MoE model keeps its experts and routers.

The engine supports the families whose MoE block calls a fused experts module as
``experts(hidden_states, top_k_index, top_k_weights)`` with ``gate_up_proj`` [E, 2I, H] (gate rows first) and
``down_proj`` [E, H, I]; each is one adapter in :mod:`moe_tui.offload.families` (Mixtral, Phi-3.5-MoE,
Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V2, DeepSeek-V3, GLM-4.5, GraniteMoE). Everything else is refused with a
:class:`~moe_tui.errors.UserError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from moe_tui.errors import UserError
from moe_tui.offload.families import FAMILIES, Family


@dataclass(frozen=True)
class MoELayer:
    """One MoE block: its index among MoE layers, its decoder layer, and its modules."""

    index: int
    decoder_index: int
    block: nn.Module
    router: nn.Module

    @property
    def experts(self) -> nn.Module:
        """The block's current experts module (the original one until it is replaced)."""
        return self.block.experts


@dataclass(frozen=True)
class MoEModel:
    """The MoE structure of a model: family, decoder stack and MoE layers with their shared shape."""

    family: Family
    decoder: nn.Module
    layers: tuple[MoELayer, ...]
    num_experts: int
    top_k: int
    hidden_size: int
    intermediate_size: int
    shared_experts: int = 0  # experts every token uses besides the routed ones (part of the resident block)

    @property
    def expert_shapes(self) -> list[tuple[int, int]]:
        """One expert's weight shapes in packing order: gate (I, H), up (I, H), down (H, I)."""
        i, h = self.intermediate_size, self.hidden_size
        return [(i, h), (i, h), (h, i)]


def family_of(config: object) -> Family:
    """The supported family of a transformers config (its settings checked), or a UserError saying why the model
    cannot be offloaded."""
    model_type = getattr(config, "model_type", None)
    if model_type in FAMILIES:
        family = FAMILIES[model_type]
        family.check(config)
        return family
    experts = getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None)
    if not experts:
        raise UserError(f"model type {model_type!r} is not a Mixture-of-Experts model: there are no experts to offload")
    raise UserError(f"MoE model type {model_type!r} is not supported yet; supported: {', '.join(FAMILIES)}")


def find_moe(model: nn.Module) -> MoEModel:
    """Locate the decoder stack and every MoE block of ``model`` (a ``*ForCausalLM``); UserError if none."""
    family = family_of(getattr(model, "config", None))
    decoder = getattr(model, "model", None)
    decoder_layers = getattr(decoder, "layers", None)
    if decoder is None or decoder_layers is None:
        raise UserError(f"cannot find the decoder layers of this {family.name} model (expected model.model.layers)")
    layers: list[MoELayer] = []
    for decoder_index, layer in enumerate(decoder_layers):
        block = getattr(layer, family.layer_block, None)
        experts = getattr(block, "experts", None)
        router = getattr(block, family.router, None)
        if experts is None or router is None:
            continue
        if not family.layout_ok(experts):
            raise UserError(
                f"the experts of decoder layer {decoder_index} ({type(experts).__name__}) are not in the fused "
                f"gate_up_proj/down_proj layout this engine supports for {family.name}"
            )
        layers.append(MoELayer(len(layers), decoder_index, block, router))
    if not layers:
        raise UserError(f"this {family.name} model has no MoE layers to offload")
    num_experts, intermediate, hidden = family.dims(layers[0].experts)
    for moe in layers:
        if family.dims(moe.experts) != (num_experts, intermediate, hidden):
            raise UserError(f"MoE layer {moe.decoder_index} has a different expert shape from layer 0")
    return MoEModel(
        family=family,
        decoder=decoder,
        layers=tuple(layers),
        num_experts=int(num_experts),
        top_k=int(model.config.num_experts_per_tok),
        hidden_size=hidden,
        intermediate_size=intermediate,
        shared_experts=_shared_experts(model.config, layers[0].block),
    )


def _shared_experts(config: object, block: nn.Module) -> int:
    """How many shared experts each MoE block runs for every token (DeepSeek's ``n_shared_experts``, Qwen2-MoE's
    one ``shared_expert``)."""
    count = getattr(config, "n_shared_experts", None)
    if isinstance(count, int) and count > 0 and getattr(block, "shared_experts", None) is not None:
        return count
    return 1 if getattr(block, "shared_expert", None) is not None else 0
