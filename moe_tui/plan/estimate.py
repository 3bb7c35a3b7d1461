"""Memory and decode speed of one configuration, which ones fit a machine, and the best per precision."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

from moe_tui import fit
from moe_tui.fit import FastTierNeed
from moe_tui.plan.copies import CopyModel, spread_slots
from moe_tui.plan.facts import ModelFacts
from moe_tui.precision import format_bytes, precision_for_bits

EXPERT_BITS: tuple[int | None, ...] = (2, 3, 4, None)
ATTN_BITS: tuple[int | None, ...] = (4, 8, None)


@dataclass(frozen=True)
class Machine:
    """The budget: fast-tier bytes (None on a CPU-only machine: the fast tier is host RAM) and host bytes."""

    host_bytes: int
    fast_bytes: int | None = None
    transfer_bandwidth: float | None = None  # bytes/s from the slow tier into a slot (None: unknown)
    compute_bandwidth: float | None = None  # bytes/s at which decoding reads weights in the fast tier
    context: int = 4096
    overhead_s: float = 0.0  # seconds per token independent of weight size
    # packed bytes/s at which HQQ's layout unpacks, per precision of the non-expert weights (HQQLinear)
    dequant_bandwidth: dict[str, float] = field(default_factory=dict)
    # packed bytes/s at which computing one token through one expert reads it, per expert precision, in the
    # format the engine uses (its unpacking included); a precision left out is read at compute_bandwidth
    expert_bandwidth: dict[str, float] = field(default_factory=dict)
    # the engine's expert format per expert precision on this machine, as bench and the panels name it
    # (int4, int2 (unfused), int3 (unfused), bf16 on a CPU; hqq3 (unfused) on CUDA)
    formats: dict[str, str] = field(default_factory=dict)
    # the workspace the engine's expert format takes per expert precision on this machine (0 for a fused
    # kernel, a chunk for int2); a precision left out takes HQQ's, a whole dequantized expert
    workspace_bytes: dict[str, int] = field(default_factory=dict)

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
    miss: str = "copy"  # what a miss does: copied into a slot, or computed on the host from the store (CPU only)

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


def per_layer_candidate(
    facts: ModelFacts,
    machine: Machine,
    expert_precision: str,
    attn_precision: str,
    layer_misses: Sequence[Sequence[float]],
) -> Candidate | None:
    """The configuration that spends every slot the budget allows, spread over layers by their trace
    replays; None when it misses no less than the best uniform k or not even k=1 fits."""
    base = _need(facts, machine, expert_precision, attn_precision, 0).total
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
    workspace: Mapping[str, int] | None = None,
    device: str = "cpu",
) -> FastTierNeed:
    """What the fast tier holds, part by part (:mod:`moe_tui.fit`): non-expert weights, k slots per MoE
    layer (or ``layer_sizes``), the expert format's workspace (``workspace`` by precision, else HQQ's), the
    KV cache, a prefill chunk's activations and the margin of ``device``."""
    slots = (sum(layer_sizes) if layer_sizes else k * facts.moe_layers) * facts.expert_bytes[expert_precision]
    hqq = facts.workspace_bytes.get(expert_precision, 0)
    unpacked = (workspace or {}).get(expert_precision, hqq)
    return fit.fast_tier_need(facts.dense_bytes[attn_precision], slots, unpacked, facts.costs, context, device)


def _need(
    facts: ModelFacts,
    machine: Machine,
    expert_precision: str,
    attn_precision: str,
    k: int,
    layer_sizes: Sequence[int] = (),
) -> FastTierNeed:
    """:func:`fast_tier_need` on ``machine``: its context, its formats' workspaces, its device."""
    return fast_tier_need(
        facts,
        expert_precision,
        attn_precision,
        k,
        machine.context,
        layer_sizes,
        machine.workspace_bytes,
        machine.device,
    )


def store_bytes(facts: ModelFacts, expert_precision: str) -> int:
    """Bytes of the expert store: every routed expert of every MoE layer at ``expert_precision``."""
    return facts.moe_layers * facts.num_experts * facts.expert_bytes[expert_precision]


def estimate(
    facts: ModelFacts,
    machine: Machine,
    expert_precision: str,
    attn_precision: str,
    k: int,
    prefetch: int,
    copies: tuple[float, float, float],
    layer_sizes: Sequence[int] = (),
    miss: str = "copy",
) -> Candidate:
    """Memory and decode estimate of one configuration (see the module docstring for the formula); ``miss``
    names what a miss does (``copies`` give the copies either way: none for ``host``)."""
    misses, prefetched, hit_rate = copies
    fast = _need(facts, machine, expert_precision, attn_precision, k, layer_sizes).total
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
        miss=miss,
    )
    if not machine.transfer_bandwidth or not machine.compute_bandwidth:
        return memory
    expert = facts.expert_bytes[expert_precision]
    dense = facts.dense_active_bytes[attn_precision]
    experts = facts.top_k * facts.moe_layers * expert
    compute_s = (
        dense / machine.compute_bandwidth
        + experts / machine.expert_bandwidth.get(expert_precision, machine.compute_bandwidth)
        + machine.overhead_s
    )
    quantized = dense - facts.rest_active_bytes
    if quantized and attn_precision in machine.dequant_bandwidth:
        compute_s += quantized / machine.dequant_bandwidth[attn_precision]
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
    """Every configuration the copy model can estimate, fitting or not, best first (see :meth:`Candidate.rank`).

    On a CPU-only machine each precision pair also gets ``--miss host`` at k=1: every miss is computed from the
    store, which is host RAM read at the same expert bandwidth as a slot, so nothing is copied and the slots
    never fill (one per layer is the least the engine takes).
    """
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
            if machine.device == "cpu":
                result.append(estimate(facts, machine, e_prec, a_prec, 1, 0, (0.0, 0.0, 0.0), miss="host"))
    return sorted(result, key=Candidate.rank)


def smallest(facts: ModelFacts, machine: Machine) -> Candidate:
    """The least memory any configuration needs: k=1, 2-bit experts, 4-bit non-expert weights, no prefetch."""
    return estimate(facts, machine, "hqq2", "hqq4", 1, 0, (0.0, 0.0, 0.0))


def nothing_fits_message(facts: ModelFacts, machine: Machine) -> str:
    """Why no configuration fits, in the user's terms: the smallest one's needs against the budget."""
    least = smallest(facts, machine)
    setup = "k=1 at 2 bits (4-bit attention)"
    if machine.fast_bytes is not None and least.fast_bytes > machine.fast_bytes:
        need = _need(facts, machine, "hqq2", "hqq4", 1)
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
    """For each (expert precision, attention precision, prefetch, miss), the best fitting configuration."""
    best: dict[tuple[str, str, int, str], Candidate] = {}
    for candidate in fitting:
        key = (candidate.expert_precision, candidate.attn_precision, candidate.prefetch, candidate.miss)
        if key not in best or candidate.rank() < best[key].rank():
            best[key] = candidate
    return sorted(best.values(), key=Candidate.rank)
