"""What moe-tui knows about each model family, checked against the modules of transformers 5.23.

A family says which config fields hold the number of routed experts and how many of them each token uses,
and what the children of a decoder layer's feed-forward block are called. Every family here uses the same
outer layout (``model.embed_tokens``, ``model.layers[i].self_attn``, ``model.layers[i].mlp``, ``model.norm``,
``lm_head``); the routed experts are one ``experts`` module holding fused 3-D tensors (``gate_up_proj``
[E, 2I, H] and ``down_proj`` [E, H, I]; gpt-oss stores them transposed, with biases). The tree builder also
accepts an ``experts`` module that is a list of per-expert modules, the layout of transformers 4 and of
custom models.

Only these families get an active-parameter count: for any other ``model_type`` moe-tui reports the exact
total and says that it cannot tell which parameters a token uses, rather than guessing from module names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """Routing facts about one model family; ``experts_field is None`` means a dense model (active == total)."""

    name: str
    model_types: tuple[str, ...]
    experts_field: str | None = None
    top_k_field: str | None = None
    routers: tuple[str, ...] = ()
    shared: tuple[str, ...] = ()
    attention_label: str = "attention"

    @property
    def is_moe(self) -> bool:
        """Whether the family routes tokens to a subset of experts."""
        return self.experts_field is not None


FAMILIES: tuple[Family, ...] = (
    Family("Mixtral", ("mixtral",), "num_local_experts", "num_experts_per_tok", routers=("gate",)),
    Family(
        "Qwen2-MoE",
        ("qwen2_moe",),
        "num_experts",
        "num_experts_per_tok",
        routers=("gate",),
        shared=("shared_expert", "shared_expert_gate"),
    ),
    Family("Qwen3-MoE", ("qwen3_moe",), "num_experts", "num_experts_per_tok", routers=("gate",)),
    Family("OLMoE", ("olmoe",), "num_experts", "num_experts_per_tok", routers=("gate",)),
    Family(
        "DeepSeek-V2",
        ("deepseek_v2",),
        "n_routed_experts",
        "num_experts_per_tok",
        routers=("gate",),
        shared=("shared_experts",),
        attention_label="attention (MLA)",
    ),
    Family(
        "DeepSeek-V3",
        ("deepseek_v3",),
        "n_routed_experts",
        "num_experts_per_tok",
        routers=("gate",),
        shared=("shared_experts",),
        attention_label="attention (MLA)",
    ),
    Family(
        "GLM-4.5",
        ("glm4_moe",),
        "n_routed_experts",
        "num_experts_per_tok",
        routers=("gate",),
        shared=("shared_experts",),
    ),
    Family("GraniteMoE", ("granitemoe", "granitemoeshared"), "num_local_experts", "num_experts_per_tok", ("router",)),
    Family("Phi-3.5-MoE", ("phimoe",), "num_local_experts", "num_experts_per_tok", routers=("router",)),
    Family("gpt-oss", ("gpt_oss",), "num_local_experts", "num_experts_per_tok", routers=("router",)),
    Family("Llama", ("llama",)),
    Family("Mistral", ("mistral",)),
    Family("Qwen2", ("qwen2",)),
    Family("Qwen3", ("qwen3",)),
)

# Field names that other MoE families use for the expert count and for top-k: a model of a family not listed
# above whose config has both, and whose modules hold routed ``experts``, is read as a generic MoE.
EXPERT_COUNT_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts")
TOP_K_FIELDS = ("num_experts_per_tok", "moe_top_k", "num_selected_experts", "top_k", "moe_k")


def family_for(model_type: str) -> Family | None:
    """The family that covers ``model_type``, or None when moe-tui has no routing knowledge for it."""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    return None


def generic_family(config: object) -> Family | None:
    """A family for a MoE model moe-tui has no table entry for, from its config's expert-count and top-k fields
    (None when it has not both, as whole numbers with 1 <= top-k <= experts): routers are the MoE blocks'
    ``gate`` or ``router``, shared experts their children named ``shared...``."""
    experts_field = next((f for f in EXPERT_COUNT_FIELDS if isinstance(getattr(config, f, None), int)), None)
    top_k_field = next((f for f in TOP_K_FIELDS if isinstance(getattr(config, f, None), int)), None)
    if experts_field is None or top_k_field is None:
        return None
    if not 1 <= getattr(config, top_k_field) <= getattr(config, experts_field):
        return None
    name = f"{getattr(config, 'model_type', 'MoE')} (generic MoE)"
    return Family(name, (), experts_field, top_k_field, routers=("gate", "router"), shared=("shared_experts",))


def known_model_types() -> tuple[str, ...]:
    """Every model_type that moe-tui can give an active-parameter count for."""
    return tuple(model_type for family in FAMILIES for model_type in family.model_types)
