"""The memory planner: which offloading configurations fit a machine, and how fast each should decode.

For every expert precision (2, 3, 4 bits or unquantized), non-expert precision (4, 8 bits or unquantized),
cache size k (the same for every MoE layer) and prefetch depth, the planner adds up:

* fast tier: non-expert weights + k x MoE layers x one expert's packed buffer + the engine's
  dequantization workspace (unfused quantized experts) + the KV cache for the context length + one prefill
  chunk's activations + a margin, added up by :mod:`moe_tui.fit` exactly as the engine checks them
  before it loads (on a CPU-only machine the fast tier is host RAM too);
* host: the expert store, every routed expert of every MoE layer packed at its precision.

and keeps the configurations that fit. Its decode estimate (one token at a time, batch 1) is:

    C = bytes a token reads (non-expert weights + top_k x MoE layers x one expert) / compute bandwidth
        + quantized bytes a token reads / dequantization bandwidth (unfused HQQ weights are unpacked each
          use; experts that a fused kernel computes (4 bits where PyTorch's int4 kernel fits) skip this term)
        + O, the per-token overhead that does not depend on weight size (decoder and engine bookkeeping)
    M = demand misses per token x expert bytes / transfer bandwidth      (copies the layer waits for)
    P = prefetch copies per token x expert bytes / transfer bandwidth    (copies started ahead of use)
    seconds per token = C + M + P            on a CPU (copies and computation share the cores)
                      = max(C, P) + M        on CUDA (prefetch copies overlap computation on a side stream)
    tokens/s = 1 / seconds per token; the bound is "transfer" when M + P > C, "compute" otherwise.

Misses and prefetch copies per token come from replaying a routing trace (LRU, or LRU with the trace's
prefetch guesses) at each k, counting decode passes only; without a trace they assume uniform routing
(hit rate k / num_experts, no prefetch). C treats decoding as reading every active weight once, which is
what bounds batch-1 decoding; attention over a long context adds time it ignores.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from moe_tui import fit
from moe_tui.errors import UserError
from moe_tui.fit import FastTierNeed, TokenCosts
from moe_tui.precision import FLOAT_BYTES, format_bytes, precision_for_bits

if TYPE_CHECKING:
    from moe_tui.telemetry import TraceEvent, TraceHeader

EXPERT_BITS: tuple[int | None, ...] = (2, 3, 4, None)
ATTN_BITS: tuple[int | None, ...] = (4, 8, None)
# Parts outside the routed experts that --attn-bits quantizes; embeddings, norms, routers and lm_head stay as is.
QUANTIZED_KINDS = ("attention", "mlp", "shared_experts")
DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}

# (k, prefetch) -> (demand misses per token, prefetch copies per token, hit rate); None when not estimable.
CopyModel = Callable[[int, int], tuple[float, float, float] | None]


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
    decoder_layers: int = 0  # all decoder layers, MoE or dense (0: as many as MoE layers)
    rest_active_bytes: int = 0  # of dense_active_bytes, what is never quantized (embedding row, norms, routers, head)
    expert_shapes: tuple[tuple[int, ...], ...] = ()  # one routed expert's tensors, in the engine's packing order
    context_limit: int | None = None  # the most tokens the model reads (max_position_embeddings)


@dataclass(frozen=True)
class Machine:
    """The budget: fast-tier bytes (None on a CPU-only machine: the fast tier is host RAM) and host bytes."""

    host_bytes: int
    fast_bytes: int | None = None
    transfer_bandwidth: float | None = None  # bytes/s from the slow tier into a slot (None: unknown)
    compute_bandwidth: float | None = None  # bytes/s at which decoding reads weights in the fast tier
    context: int = 4096
    overhead_s: float = 0.0  # seconds per token independent of weight size
    dequant_bandwidth: dict[str, float] = field(default_factory=dict)  # packed bytes/s per HQQ precision
    # expert precisions a fused kernel computes on this machine: no dequantization time, no workspace
    fused: frozenset[str] = frozenset()

    @property
    def can_estimate(self) -> bool:
        """Whether both bandwidths are known, so that tokens/s can be estimated."""
        return bool(self.transfer_bandwidth and self.compute_bandwidth)

    @property
    def device(self) -> str:
        """``cuda`` when a separate fast tier is given, else ``cpu``."""
        return "cpu" if self.fast_bytes is None else "cuda"


@dataclass(frozen=True)
class Candidate:
    """One configuration with its memory and, when the bandwidths are known, its decode estimate."""

    expert_precision: str
    attn_precision: str
    cache_size: int
    prefetch: int
    fast_bytes: int
    host_bytes: int
    hit_rate: float
    misses_per_token: float
    prefetch_per_token: float
    compute_s: float | None = None
    miss_s: float | None = None
    prefetch_s: float | None = None
    seconds_per_token: float | None = None
    bound: str = ""
    layer_sizes: tuple[int, ...] = ()  # k of each MoE layer when they differ (cache_size is then their mean)

    @property
    def tokens_per_s(self) -> float | None:
        """The decode estimate (None without bandwidths)."""
        if self.seconds_per_token is None:
            return None
        return 1.0 / self.seconds_per_token if self.seconds_per_token > 0 else math.inf

    def rank(self) -> tuple[float, float, int]:
        """Sort key, best first: fastest estimate, then highest hit rate, then most slots."""
        seconds = self.seconds_per_token if self.seconds_per_token is not None else 0.0
        return (seconds, -self.hit_rate, -self.cache_size)

    def to_dict(self) -> dict[str, object]:
        """Plain data for ``--json``."""
        return {**asdict(self), "tokens_per_s": self.tokens_per_s}


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
    shapes = [tuple(shape) for shape in expert_weight_shapes(config)]
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
        kv_bytes_per_token=costs.kv_bytes_per_token,
        workspace_bytes={p: _workspace_bytes(shapes, dtype, p) for p in precisions},
        activation_bytes_per_token=costs.activation_bytes_per_token,
        logits_bytes=costs.logits_bytes,
        decoder_layers=config.num_hidden_layers,
        rest_active_bytes=rest_active,
        expert_shapes=tuple(shapes),
        context_limit=getattr(config, "max_position_embeddings", None),
    )


def _workspace_bytes(shapes: list[tuple[int, ...]], dtype: str, expert_precision: str) -> int:
    """The engine's dequantization workspace for experts of ``shapes`` at ``expert_precision`` (no allocation)."""
    from moe_tui.offload.config import DTYPES
    from moe_tui.offload.formats import HqqFormat
    from moe_tui.precision import HQQ_BITS

    bits = HQQ_BITS.get(expert_precision)
    if bits is None:
        return 0
    return HqqFormat(list(shapes), DTYPES[dtype], bits).workspace_bytes


def trace_copy_model(header: TraceHeader, events: list[TraceEvent]) -> CopyModel:
    """Copies per decoded token from replaying a trace: LRU at k, or LRU with the trace's prefetch guesses.

    The trace's own prefetch depth is the only depth it can replay; other depths are not estimated.
    """
    from moe_tui.sim import simulate
    from moe_tui.sim.passes import has_prefetch, layer_passes

    passes = layer_passes(header, events)
    tokens = sum(p.n_tokens == 1 for p in passes[0])
    if tokens == 0:
        raise UserError("the trace holds no decoded tokens (only prefills): it cannot estimate decode copies")
    replayable = header.prefetch if has_prefetch(passes) else 0

    @functools.cache
    def model(k: int, prefetch: int) -> tuple[float, float, float] | None:
        if prefetch not in (0, replayable):
            return None
        policy = "lru+prefetch" if prefetch else "lru"
        total = simulate(header, events, k, policy, decode_only=True).total
        return total.misses / tokens, total.prefetch_issued / tokens, total.hit_rate

    return model


def trace_layer_misses(header: TraceHeader, events: list[TraceEvent]) -> list[list[float]]:
    """Demand misses per decoded token of each MoE layer under LRU at every k: ``result[layer][k - 1]``."""
    from moe_tui.sim.cache import simulate_layer
    from moe_tui.sim.passes import layer_passes

    passes = layer_passes(header, events)
    tokens = sum(p.n_tokens == 1 for p in passes[0]) or 1
    return [
        [simulate_layer(layer, k, "lru", decode_only=True).misses / tokens for k in range(1, header.num_experts + 1)]
        for layer in passes
    ]


def spread_slots(layer_misses: Sequence[Sequence[float]], slots: int) -> list[int]:
    """Share ``slots`` among MoE layers (at least one each): repeatedly give the layer with the steepest drop
    in misses per token per added slot (looking past flat stretches of its curve) the slots that drop takes;
    stops early when no layer gains from more slots."""
    sizes = [1] * len(layer_misses)
    remaining = slots - len(sizes)
    while remaining > 0:
        best: tuple[float, int, int] | None = None
        for layer, (curve, k) in enumerate(zip(layer_misses, sizes, strict=True)):
            for extra in range(1, min(remaining, len(curve) - k) + 1):
                rate = (curve[k - 1] - curve[k - 1 + extra]) / extra
                if rate > 0 and (best is None or rate > best[0]):
                    best = (rate, layer, extra)
        if best is None:
            break
        _, layer, extra = best
        sizes[layer] += extra
        remaining -= extra
    return sizes


def per_layer_candidate(
    facts: ModelFacts,
    machine: Machine,
    expert_precision: str,
    attn_precision: str,
    layer_misses: Sequence[Sequence[float]],
) -> Candidate | None:
    """The configuration that spends every slot the budget allows, spread over layers by their trace
    replays; None when it misses no less than the best uniform k or not even k=1 fits."""
    base = fast_tier_bytes(
        facts, expert_precision, attn_precision, 0, machine.context, fused=machine.fused, device=machine.device
    )
    if machine.fast_bytes is not None:
        room = machine.fast_bytes - base
    else:
        room = machine.host_bytes - base - store_bytes(facts, expert_precision)
    slots = min(room // facts.expert_bytes[expert_precision], facts.moe_layers * facts.num_experts)
    if slots < facts.moe_layers:
        return None
    sizes = spread_slots(layer_misses, int(slots))
    misses = sum(curve[k - 1] for curve, k in zip(layer_misses, sizes, strict=True))
    uniform = sum(curve[int(slots) // facts.moe_layers - 1] for curve in layer_misses)
    if misses >= uniform or len(set(sizes)) == 1:
        return None
    hit_rate = 1 - misses / (facts.moe_layers * facts.top_k)
    k = sum(sizes) // len(sizes)
    return estimate(facts, machine, expert_precision, attn_precision, k, 0, (misses, 0.0, hit_rate), sizes)


def fast_tier_need(
    facts: ModelFacts,
    expert_precision: str,
    attn_precision: str,
    k: int,
    context: int,
    layer_sizes: Sequence[int] = (),
    fused: Collection[str] = (),
    device: str = "cpu",
) -> FastTierNeed:
    """What the fast tier holds, part by part (:mod:`moe_tui.fit`): non-expert weights, k slots per MoE
    layer (or ``layer_sizes``), the dequantization workspace (none for the precisions in ``fused``), the KV cache,
    a prefill chunk's activations and the margin of ``device``."""
    slots = (sum(layer_sizes) if layer_sizes else k * facts.moe_layers) * facts.expert_bytes[expert_precision]
    workspace = 0 if expert_precision in fused else facts.workspace_bytes.get(expert_precision, 0)
    costs = TokenCosts(facts.kv_bytes_per_token, facts.activation_bytes_per_token, facts.logits_bytes)
    return fit.fast_tier_need(facts.dense_bytes[attn_precision], slots, workspace, costs, context, device)


def fast_tier_bytes(
    facts: ModelFacts,
    expert_precision: str,
    attn_precision: str,
    k: int,
    context: int,
    layer_sizes: Sequence[int] = (),
    fused: Collection[str] = (),
    device: str = "cpu",
) -> int:
    """The total of :func:`fast_tier_need`."""
    return fast_tier_need(facts, expert_precision, attn_precision, k, context, layer_sizes, fused, device).total


def store_bytes(facts: ModelFacts, expert_precision: str) -> int:
    """Bytes of the expert store: every routed expert of every MoE layer at ``expert_precision``."""
    return facts.moe_layers * facts.num_experts * facts.expert_bytes[expert_precision]


def uniform_copy_model(facts: ModelFacts) -> CopyModel:
    """Copies per token under uniform routing: each selected expert is held with probability k / E; no prefetch."""

    def model(k: int, prefetch: int) -> tuple[float, float, float] | None:
        if prefetch:
            return None
        hit_rate = min(k, facts.num_experts) / facts.num_experts
        return facts.moe_layers * facts.top_k * (1 - hit_rate), 0.0, hit_rate

    return model


def estimate(
    facts: ModelFacts,
    machine: Machine,
    expert_precision: str,
    attn_precision: str,
    k: int,
    prefetch: int,
    copies: tuple[float, float, float],
    layer_sizes: Sequence[int] = (),
) -> Candidate:
    """Memory and decode estimate of one configuration (see the module docstring for the formula)."""
    misses, prefetched, hit_rate = copies
    fast = fast_tier_bytes(
        facts, expert_precision, attn_precision, k, machine.context, layer_sizes, machine.fused, machine.device
    )
    memory = Candidate(
        expert_precision=expert_precision,
        attn_precision=attn_precision,
        cache_size=k,
        prefetch=prefetch,
        fast_bytes=fast,
        host_bytes=store_bytes(facts, expert_precision) + (fast if machine.device == "cpu" else 0),
        hit_rate=hit_rate,
        misses_per_token=misses,
        prefetch_per_token=prefetched,
        layer_sizes=tuple(layer_sizes),
    )
    if not machine.transfer_bandwidth or not machine.compute_bandwidth:
        return memory
    expert = facts.expert_bytes[expert_precision]
    active = facts.dense_active_bytes[attn_precision] + facts.top_k * facts.moe_layers * expert
    compute_s = active / machine.compute_bandwidth + machine.overhead_s
    unpacked = (
        (expert_precision, 0 if expert_precision in machine.fused else facts.top_k * facts.moe_layers * expert),
        (attn_precision, facts.dense_active_bytes[attn_precision] - facts.rest_active_bytes),
    )
    for precision, nbytes in unpacked:
        if nbytes and precision in machine.dequant_bandwidth:
            compute_s += nbytes / machine.dequant_bandwidth[precision]
    miss_s = misses * expert / machine.transfer_bandwidth
    prefetch_s = prefetched * expert / machine.transfer_bandwidth
    overlapped = machine.device == "cuda"
    seconds = max(compute_s, prefetch_s) + miss_s if overlapped else compute_s + miss_s + prefetch_s
    return replace(
        memory,
        compute_s=compute_s,
        miss_s=miss_s,
        prefetch_s=prefetch_s,
        seconds_per_token=seconds,
        bound="transfer" if miss_s + prefetch_s > compute_s else "compute",
    )


def fits(candidate: Candidate, machine: Machine) -> bool:
    """Whether a configuration fits the fast tier (when separate) and host RAM."""
    fast_ok = machine.fast_bytes is None or candidate.fast_bytes <= machine.fast_bytes
    return fast_ok and candidate.host_bytes <= machine.host_bytes


def candidates(
    facts: ModelFacts,
    machine: Machine,
    copy_model: CopyModel,
    prefetch_depths: Sequence[int] = (0, 1),
    expert_bits: Sequence[int | None] = EXPERT_BITS,
    attn_bits: Sequence[int | None] = ATTN_BITS,
) -> list[Candidate]:
    """Every configuration the copy model can estimate, fitting or not, best first (see :meth:`Candidate.rank`)."""
    result = []
    for e_bits in expert_bits:
        for a_bits in attn_bits:
            e_prec = precision_for_bits(e_bits, facts.dtype)
            a_prec = precision_for_bits(a_bits, facts.dtype)
            for k in range(1, facts.num_experts + 1):
                for prefetch in prefetch_depths:
                    copies = copy_model(k, prefetch)
                    if copies is not None:
                        result.append(estimate(facts, machine, e_prec, a_prec, k, prefetch, copies))
    return sorted(result, key=Candidate.rank)


def smallest(facts: ModelFacts, machine: Machine) -> Candidate:
    """The least memory any configuration needs: k=1, 2-bit experts, 4-bit non-expert weights, no prefetch."""
    return estimate(facts, machine, "hqq2", "hqq4", 1, 0, (0.0, 0.0, 0.0))


def nothing_fits_message(facts: ModelFacts, machine: Machine) -> str:
    """Why no configuration fits, in the user's terms: the smallest one's needs against the budget."""
    least = smallest(facts, machine)
    setup = "k=1 at 2 bits (4-bit attention)"
    if machine.fast_bytes is not None and least.fast_bytes > machine.fast_bytes:
        need = fast_tier_need(facts, "hqq2", "hqq4", 1, machine.context, (), machine.fused, machine.device)
        return (
            f"{facts.name} does not fit: even {setup} needs {format_bytes(least.fast_bytes)} of fast-tier memory "
            f"({need.parts()}); you have {format_bytes(machine.fast_bytes)}"
        )
    what = "its expert store" if machine.fast_bytes is not None else "its expert store, slots and other weights"
    return (
        f"{facts.name} does not fit: even {setup} needs {format_bytes(least.host_bytes)} of host memory "
        f"for {what}; you have {format_bytes(machine.host_bytes)}"
    )


def best_per_precision(fitting: Sequence[Candidate]) -> list[Candidate]:
    """For each (expert precision, attention precision, prefetch), the best fitting configuration."""
    best: dict[tuple[str, str, int], Candidate] = {}
    for candidate in fitting:
        key = (candidate.expert_precision, candidate.attn_precision, candidate.prefetch)
        if key not in best or candidate.rank() < best[key].rank():
            best[key] = candidate
    return sorted(best.values(), key=Candidate.rank)
