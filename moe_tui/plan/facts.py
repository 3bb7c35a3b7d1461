"""What the planner knows about a model, from its parameter tree on the meta device (no weights)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from moe_tui.errors import UserError
from moe_tui.fit import TokenCosts
from moe_tui.precision import FLOAT_BYTES

QUANTIZED_KINDS = ("attention", "mlp", "shared_experts")
DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


@dataclass(frozen=True)
class ModelFacts:
    """What the planner needs to know about a model, computed from its parameter tree (no weights).

    ``expert_bytes[p]`` is one routed expert's packed buffer at precision ``p``; ``dense_bytes[p]`` is the
    non-expert weights when the quantizable ones (attention and other linear layers outside the experts) are
    at ``p`` and the rest (embeddings, norms, routers) stay unquantized; ``dense_active_bytes[p]`` is the
    part of them one token reads (the embedding contributes one row); ``workspace_bytes[p]`` is the engine's
    dequantization workspace for experts at ``p`` (one expert at the compute dtype; 0 unquantized).
    """

    name: str
    dtype: str
    moe_layers: int
    num_experts: int
    top_k: int
    expert_bytes: dict[str, int]
    dense_bytes: dict[str, int]
    dense_active_bytes: dict[str, int]
    kv_bytes_per_token: int
    workspace_bytes: dict[str, int] = field(default_factory=dict)
    activation_bytes_per_token: int = 0  # one prefill token's activations (see moe_tui.fit)
    logits_bytes: int = 0
    score_bytes_per_pair: int = 0  # eager attention's scores per (chunk token, context token) (see moe_tui.fit)
    kv_layer_bytes_per_token: int = 0  # one decoder layer's keys and values (see moe_tui.fit)
    decoder_layers: int = 0  # all decoder layers, MoE or dense (0: as many as MoE layers)
    rest_active_bytes: int = 0  # of dense_active_bytes, what is never quantized (embedding row, norms, routers, head)
    expert_shapes: tuple[tuple[int, ...], ...] = ()  # one routed expert's tensors, in the engine's packing order
    context_limit: int | None = None  # the most tokens the model reads (max_position_embeddings)

    @property
    def costs(self) -> TokenCosts:
        """The per-token costs above (one field each, so ``plan --json`` lists them), as the fit check takes them."""
        return TokenCosts(**{cost.name: getattr(self, cost.name) for cost in fields(TokenCosts)})


def model_facts(config: Any, name: str | None = None) -> ModelFacts:
    """The planner's facts about the model a transformers config describes (built on the meta device).

    UserError for a model without routed experts, or one whose active parameters the parameter tree cannot
    tell (a family moe-tui has no routing knowledge of).
    """
    from moe_tui.params import build_tree, expert_weight_shapes, routed_expert_bytes

    tree = build_tree(config)
    experts = tree.find_all("experts")
    label = name or getattr(config, "_name_or_path", "") or config.model_type
    if not experts:
        raise UserError(f"{label} has no routed experts: there is nothing to offload or plan")
    first = experts[0]
    top_k = first.active_repeat
    if top_k is None or tree.active is None:
        raise UserError(f"{label}: moe-tui cannot tell which parameters a token uses in a {config.model_type!r} model")
    dtype = DTYPE_NAMES.get(str(getattr(config, "dtype", None) or "bfloat16").removeprefix("torch."), "bf16")
    quantized = [node for kind in QUANTIZED_KINDS for node in tree.find_all(kind)]
    embeddings = tree.find_all("embeddings")
    row = config.hidden_size * FLOAT_BYTES[dtype]  # a token reads one row of the embedding table
    rest = tree.bytes(dtype) - sum(n.bytes(dtype) for n in (*experts, *quantized))
    rest_active = (
        tree.active_bytes(dtype)
        - sum(n.active_bytes(dtype) or 0 for n in (*experts, *quantized, *embeddings))
        + row * len(embeddings)
    )
    precisions = {dtype, "hqq8", "hqq4", "hqq3", "hqq2"}
    # the matrices the expert store packs (gpt-oss's bias vectors stay resident beside the router)
    shapes = [tuple(shape) for shape in expert_weight_shapes(config) if len(shape) == 2]
    costs = TokenCosts.of(config, FLOAT_BYTES[dtype], min(min(shape) for shape in shapes))
    return ModelFacts(
        name=label,
        dtype=dtype,
        moe_layers=sum(node.copies // node.repeat for node in experts),
        num_experts=first.repeat,
        top_k=top_k,
        expert_bytes={p: routed_expert_bytes(config, p) for p in precisions},
        dense_bytes={p: rest + sum(n.bytes(p) for n in quantized) for p in precisions},
        dense_active_bytes={p: rest_active + sum(n.active_bytes(p) or 0 for n in quantized) for p in precisions},
        workspace_bytes={p: _workspace_bytes(shapes, dtype, p) for p in precisions},
        **asdict(costs),
        decoder_layers=config.num_hidden_layers,
        rest_active_bytes=rest_active,
        expert_shapes=tuple(shapes),
        context_limit=getattr(config, "max_position_embeddings", None),
    )


def _workspace_bytes(shapes: list[tuple[int, ...]], dtype: str, expert_precision: str) -> int:
    """The engine's dequantization workspace for experts of ``shapes`` at ``expert_precision`` (no allocation)."""
    from moe_tui.engine_config import dtype_named
    from moe_tui.offload.formats import HqqFormat
    from moe_tui.precision import HQQ_BITS

    bits = HQQ_BITS.get(expert_precision)
    if bits is None:
        return 0
    return HqqFormat(list(shapes), dtype_named(dtype), bits).workspace_bytes
