"""What the fast tier must hold for one configuration, and the one check that refuses what would not fit.

The planner (``moe-tui plan``), the engine (``chat``, ``bench`` and the Python API) and their messages all add
up the same parts:

* ``weights``: the resident, non-expert weights (attention, embeddings, norms, routers, shared experts);
* ``slots``: k expert slots per MoE layer at the expert format's packed size;
* ``workspace``: the dequantization workspace of an unfused quantized format (one expert at compute dtype), or
  of int8 on CUDA (gate-up at compute dtype);
* ``kv_cache``: keys and values of every decoder layer for ``context`` tokens rounded up to whole blocks of
  ``KV_BLOCK`` (MLA models cache the decompressed per-head keys and values, as transformers' implementation does);
* ``activations``: the hidden states of one prefill chunk of ``PREFILL_CHUNK`` tokens (answers prefill in
  chunks of that size, so a long prompt never needs more) plus one position's logits;
* ``margin``: what the process needs beyond tensors: ``MARGIN["cuda"]`` covers the CUDA context (the planner
  counts a GPU's whole memory), cuBLAS workspaces and the caching allocator's fragmentation; ``MARGIN["cpu"]``
  the interpreter's, the libraries' and the C allocator's own growth, among them oneDNN's compiled CPU matmul
  kernels, which the engine bounds to about 32 MiB (``offload.memory.bound_kernel_caches``).

The activation figure is an estimate: per token, the residual stream and norms (6 hidden vectors), the attention
projections, one expert's (or dense MLP's) intermediate activations for every token of the chunk, and float32
router scores and accumulators. A model that computes attention eagerly (gpt-oss: transformers has no fused
kernel for its attention sinks) also writes out every head's scores for the chunk against the whole context: the
scores, their masked copy and the probabilities at the compute dtype, and one float32 copy (transformers' eager
attention takes its softmax in float32, or in the scores' dtype with sinks); fused attention (SDPA, flash) never
holds them. A layer's KV cache that outgrows its blocks is copied into a larger buffer
(:mod:`moe_tui.chat.kv_blocks`; transformers' own dynamic cache copies on every append), so for a moment one
layer's keys and values exist twice: one layer's KV cache at the context is counted with the activations.
Measured on a CPU (``benchmarks/fit_check.py``, oneDNN's kernel caches bounded as the engine sets them), an
answer's peak was 0.75-0.90x the KV cache and activations counted for it at Mixtral-8x7B's shapes and
0.59-0.84x at gpt-oss-20b's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from moe_tui.errors import UserError
from moe_tui.precision import format_bytes

PREFILL_CHUNK = 512
KV_BLOCK = 256  # the chat's KV cache grows by this many tokens at a time (moe_tui.chat.kv_blocks)
DEFAULT_CONTEXT = 4096
MARGIN = {"cuda": 1024**3, "cpu": 256 * 1024**2}
FLOAT32 = 4


@dataclass(frozen=True)
class TokenCosts:
    """Per-token memory of a model's state, from its config: KV cache, prefill activations, and its logits."""

    kv_bytes_per_token: int
    activation_bytes_per_token: int
    logits_bytes: int
    score_bytes_per_pair: int = 0  # eager attention's scores per (chunk token, context token), all heads
    kv_layer_bytes_per_token: int = 0  # one decoder layer's keys and values (appending copies them)

    @classmethod
    def of(cls, config: object, dtype_bytes: int, expert_intermediate: int) -> TokenCosts:
        """The costs of the model a transformers ``config`` describes, computing in ``dtype_bytes`` per value."""
        hidden = int(config.hidden_size)
        heads = int(config.num_attention_heads)
        head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        nope = getattr(config, "qk_nope_head_dim", None)
        if nope is not None:  # multi-head latent attention: keys of nope + rope dims and values per head
            kv_per_layer = heads * (int(nope) + int(config.qk_rope_head_dim) + int(config.v_head_dim))
            query = heads * (int(nope) + int(config.qk_rope_head_dim))
        else:
            kv_per_layer = 2 * kv_heads * head_dim
            query = heads * head_dim
        experts = int(getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None) or 0)
        intermediate = max(int(getattr(config, "intermediate_size", None) or 0), expert_intermediate)
        per_token = dtype_bytes * (6 * hidden + 2 * query + kv_per_layer + 3 * intermediate)
        per_token += FLOAT32 * (experts + 3 * hidden)
        return cls(
            kv_bytes_per_token=int(config.num_hidden_layers) * kv_per_layer * dtype_bytes,
            activation_bytes_per_token=per_token,
            logits_bytes=2 * FLOAT32 * int(getattr(config, "vocab_size", 0) or 0),
            score_bytes_per_pair=heads * (3 * dtype_bytes + FLOAT32) if attends_eagerly(config) else 0,
            kv_layer_bytes_per_token=kv_per_layer * dtype_bytes,
        )


def attends_eagerly(config: object) -> bool:
    """Whether the model ``config`` describes computes attention eagerly, writing out its score matrices: the
    implementation a built model chose, else what transformers picks for its class (eager when the class
    supports no fused kernel)."""
    chosen = getattr(config, "_attn_implementation", None)
    if chosen:
        return chosen == "eager"
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(getattr(config, "model_type", ""))
    model_class = getattr(transformers, name, None) if isinstance(name, str) else None
    return model_class is not None and not model_class._supports_sdpa


@dataclass(frozen=True)
class FastTierNeed:
    """The bytes one configuration needs in the fast tier, part by part (see the module docstring)."""

    weights: int
    slots: int
    workspace: int
    kv_cache: int
    activations: int
    margin: int
    context: int
    store: int = 0  # the expert store and quantizing's temporaries, when they share this memory (CPU only)

    @property
    def total(self) -> int:
        """All parts together."""
        parts = (self.weights, self.store, self.slots, self.workspace, self.kv_cache, self.activations)
        return sum(parts) + self.margin

    def parts(self) -> str:
        """The parts in words, for messages: ``weights 1.0 GiB, slots 2.0 GiB, ...`` (zero parts left out)."""
        named = (
            ("weights", self.weights),
            ("expert store", self.store),
            ("expert slots", self.slots),
            ("dequantization workspace", self.workspace),
            (f"KV cache for {self.context} tokens", self.kv_cache),
            ("activations", self.activations),
            ("margin", self.margin),
        )
        return ", ".join(f"{name} {format_bytes(value)}" for name, value in named if value)


def kv_block_tokens(tokens: int) -> int:
    """The tokens a layer's KV cache makes room for to hold ``tokens``: whole blocks of ``KV_BLOCK``."""
    return -(-tokens // KV_BLOCK) * KV_BLOCK


def fast_tier_need(
    weights: int,
    slots: int,
    workspace: int,
    costs: TokenCosts,
    context: int,
    device_type: str,
    store: int = 0,
) -> FastTierNeed:
    """What the fast tier must hold: ``slots`` is the bytes of every slot of every layer together, ``store`` the
    expert store's when it lives in the same memory. The KV cache is counted in whole blocks of ``KV_BLOCK``."""
    blocks = kv_block_tokens(context)
    return FastTierNeed(
        weights=weights,
        slots=slots,
        workspace=workspace,
        kv_cache=costs.kv_bytes_per_token * blocks,
        activations=(
            min(PREFILL_CHUNK, context) * (costs.activation_bytes_per_token + context * costs.score_bytes_per_pair)
            + blocks * costs.kv_layer_bytes_per_token
            + costs.logits_bytes
        ),
        margin=MARGIN.get(device_type, MARGIN["cpu"]),
        context=context,
        store=store,
    )


def check_need(need: FastTierNeed, available: int, tier: str, alternatives: Callable[[], list[str]]) -> None:
    """Refuse (UserError) when ``need`` exceeds ``available``: the message says what the parts are, how much is
    missing, and what would fit (``alternatives()``, computed only when needed; the first is the closest)."""
    if need.total <= available:
        return
    ways = alternatives()
    fits = ("what would fit: " + ", or ".join(ways)) if ways else "nothing smaller fits either"
    raise UserError(
        f"the {tier} needs {format_bytes(need.total)} ({need.parts()}) but only {format_bytes(available)} is "
        f"free, {format_bytes(need.total - available)} short; {fits}"
    )


def largest_fitting(limit: int, fits: Callable[[int], bool]) -> int:
    """The largest n in 1..limit with ``fits(n)`` (``fits`` must be monotone: true up to some n); 0 if none."""
    low, high = 0, limit
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def context_tokens(asked: int | None, model_limit: int | None) -> int:
    """The context the KV cache is sized for: ``asked``, else ``DEFAULT_CONTEXT``, within the model's limit."""
    if asked is not None and model_limit and asked > model_limit:
        raise UserError(f"a context of {asked} tokens is more than this model reads ({model_limit})")
    if asked is not None:
        return asked
    return min(DEFAULT_CONTEXT, model_limit) if model_limit else DEFAULT_CONTEXT
