"""The cache lab: replay a trace through every cache size and policy next to Belady's optimum."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from moe_tui.policies import POLICIES
from moe_tui.sim.cache import MIN_POLICY, belady_layer, simulate_layer
from moe_tui.sim.passes import LayerPass, has_prefetch, layer_passes
from moe_tui.telemetry import Counters, LayerStep, TokenEvent, TraceEvent, TraceHeader

EVERY_SIZE_UP_TO = 16  # the lab replays every cache size up to this; above it, only round ones (see lab_sizes)
PREFETCH_SUFFIX = "+prefetch"
HOST_SUFFIX = "+host"  # misses computed on the host from the store (the engine's miss=host)
RECORDED = "recorded"


@dataclass(frozen=True)
class SimResult:
    """One replay: a policy at a cache size, with counters per MoE layer and over all layers.

    ``bytes_loaded`` counts every copy (misses and prefetches) at the trace's expert size.
    """

    policy: str
    cache_size: tuple[int, ...]
    layers: tuple[Counters, ...]
    total: Counters

    @property
    def hit_rate(self) -> float:
        """Share of expert fetches over all layers served from a slot."""
        return self.total.hit_rate

    @property
    def copies(self) -> int:
        """Experts copied into slots: misses plus prefetches."""
        return self.total.misses + self.total.prefetch_issued

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {
            "policy": self.policy,
            "cache_size": list(self.cache_size),
            "total": _counters_dict(self.total),
            "layers": [_counters_dict(c) for c in self.layers],
        }


@dataclass(frozen=True)
class LabReport:
    """Every policy at every cache size on one trace, Belady's MIN, and what the recording engine saw."""

    header: TraceHeader
    passes: int
    tokens: int
    cache_sizes: tuple[int, ...]
    policies: tuple[str, ...]
    results: dict[tuple[str, int], SimResult] = field(repr=False)
    recorded: SimResult

    def result(self, policy: str, cache_size: int) -> SimResult:
        """The replay of ``policy`` at uniform cache size ``cache_size``."""
        try:
            return self.results[(policy, cache_size)]
        except KeyError:
            raise KeyError(f"no replay of {policy!r} at k={cache_size} in this report") from None

    def hit_rate(self, policy: str, cache_size: int, layer: int | None = None) -> float:
        """Hit rate of a policy at a cache size, over all layers or for one MoE layer."""
        result = self.result(policy, cache_size)
        return result.hit_rate if layer is None else result.layers[layer].hit_rate

    def gap(self, policy: str, cache_size: int, layer: int | None = None) -> float:
        """How far a policy's hit rate is below the optimum (MIN) at that cache size; negative only with prefetch."""
        return self.hit_rate(MIN_POLICY, cache_size, layer) - self.hit_rate(policy, cache_size, layer)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``: header, sizes, policies, every replay (with its gap to MIN) and the recording."""
        replays = []
        for (policy, k), result in self.results.items():
            entry = result.to_dict()
            entry["gap_to_min"] = self.gap(policy, k)
            entry["layer_gap_to_min"] = [self.gap(policy, k, layer) for layer in range(self.header.num_layers)]
            entry["bytes_per_token"] = result.total.bytes_loaded / self.tokens if self.tokens else None
            replays.append(entry)
        return {
            "model": self.header.model,
            "num_layers": self.header.num_layers,
            "num_experts": self.header.num_experts,
            "top_k": self.header.top_k,
            "expert_bytes": self.header.expert_bytes,
            "passes": self.passes,
            "tokens": self.tokens,
            "cache_sizes": list(self.cache_sizes),
            "policies": list(self.policies),
            "recorded": self.recorded.to_dict(),
            "replays": replays,
        }


def simulate(
    header: TraceHeader,
    events: Iterable[TraceEvent],
    cache_size: int | Sequence[int],
    policy: str = "lru",
    decode_only: bool = False,
) -> SimResult:
    """Replay a trace through a cache of ``cache_size`` slots per layer (one int, or one per MoE layer).

    ``policy`` is ``lru``, ``lfu``, ``fifo``, any of them followed by ``+prefetch`` (replaying the trace's
    prefetch guesses) and then ``+host`` (misses computed on the host, never copied), or ``min`` (Belady's
    optimum). Config changes recorded in the trace are ignored: the
    replay answers "what if the cache had been this size with this policy". With ``decode_only`` (online
    policies only) prefills are replayed but not counted.
    """
    return simulate_passes(header, layer_passes(header, events), cache_size, policy, decode_only)


def simulate_passes(
    header: TraceHeader,
    passes: list[list[LayerPass]],
    cache_size: int | Sequence[int],
    policy: str = "lru",
    decode_only: bool = False,
) -> SimResult:
    """:func:`simulate` on a trace already split into each layer's passes (:func:`layer_passes`), for a caller
    that replays one trace many times."""
    return _simulate_passes(header, passes, _sizes(header, cache_size), policy, decode_only)


class LabStopped(Exception):
    """``run_lab`` was told to stop (its ``should_stop`` said so) before it had replayed everything."""


def lab_sizes(header: TraceHeader, also: Iterable[int] = ()) -> tuple[int, ...]:
    """The cache sizes the lab replays by default: every k up to 16 (all of them for a model of 16 experts or
    fewer), then the round ones above (24, 32, 48, 64, 96, ...: each a power of two or 1.5 times one) and the
    model's number of experts, plus the sizes the trace was recorded with and ``also``. A 128-expert model
    gets 22 rows, not 128: every k replays the whole trace once per policy (minutes on a long trace), and the
    hit rate changes slowly between those sizes."""
    experts = header.num_experts
    sizes = set(range(1, min(experts, EVERY_SIZE_UP_TO) + 1)) | {experts}
    power = EVERY_SIZE_UP_TO
    while power < experts:
        sizes.update(k for k in (power, power * 3 // 2) if k < experts)
        power *= 2
    sizes.update(k for k in (*header.cache_size, *also) if 1 <= k <= experts)
    return tuple(sorted(sizes))


def run_lab(
    header: TraceHeader,
    events: Iterable[TraceEvent],
    cache_sizes: Sequence[int] | None = None,
    policies: Sequence[str] | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> LabReport:
    """Replay a trace for every cache size (default :func:`lab_sizes`) and policy, plus MIN and the recording.

    The default policies are every online policy, ``lru+prefetch`` and ``lru+prefetch+host`` when the trace
    holds prefetch guesses, and ``min`` (always added, since gaps are measured against it). ``should_stop`` is
    asked before each replay (a long session's trace takes minutes in all); when it answers True, LabStopped.
    ``progress(done, total)`` is told after each replay.
    """
    events = list(events)
    passes = layer_passes(header, events)
    sizes = tuple(cache_sizes) if cache_sizes else lab_sizes(header)
    for k in sizes:
        _sizes(header, k)
    if policies is None:
        chosen = list(POLICIES)
        if has_prefetch(passes):
            chosen += ["lru" + PREFETCH_SUFFIX, "lru" + PREFETCH_SUFFIX + HOST_SUFFIX]
    else:
        chosen = [p for p in policies if p != MIN_POLICY]
    chosen.append(MIN_POLICY)
    results = {}
    for policy in chosen:
        for k in sizes:
            if should_stop is not None and should_stop():
                raise LabStopped
            results[policy, k] = _simulate_passes(header, passes, (k,) * header.num_layers, policy)
            if progress is not None:
                progress(len(results), len(chosen) * len(sizes))
    return LabReport(
        header=header,
        passes=len({e.step for e in events if isinstance(e, LayerStep)}),
        tokens=sum(isinstance(e, TokenEvent) for e in events),
        cache_sizes=sizes,
        policies=tuple(chosen),
        results=results,
        recorded=recorded_result(header, events),
    )


def recorded_result(header: TraceHeader, events: Iterable[TraceEvent]) -> SimResult:
    """The counters the recording engine itself measured, folded from the trace's steps."""
    layers = [Counters() for _ in range(header.num_layers)]
    for event in events:
        if isinstance(event, LayerStep):
            layers[event.layer] = layers[event.layer].add(event)
    return SimResult(policy=RECORDED, cache_size=header.cache_size, layers=tuple(layers), total=_sum_counters(layers))


def _simulate_passes(
    header: TraceHeader, passes: list[list[LayerPass]], sizes: tuple[int, ...], policy: str, decode_only: bool = False
) -> SimResult:
    name = policy.lower()
    host = name.endswith(HOST_SUFFIX)
    prefetch = name.removesuffix(HOST_SUFFIX).endswith(PREFETCH_SUFFIX)
    base = name.removesuffix(HOST_SUFFIX).removesuffix(PREFETCH_SUFFIX)
    if base == MIN_POLICY and (prefetch or host):
        raise ValueError("min is the demand-fetching optimum; it has no prefetch or host variant")
    if base != MIN_POLICY and base not in POLICIES:
        choices = ", ".join([*POLICIES, MIN_POLICY])
        raise ValueError(
            f"unknown cache policy {policy!r}; choose from {choices} (online ones may add +prefetch, then +host)"
        )
    if base == MIN_POLICY and decode_only:
        raise ValueError("min is replayed over whole traces only")
    layers = []
    for layer, k in enumerate(sizes):
        if base == MIN_POLICY:
            counters = belady_layer(passes[layer], k)
        else:
            counters = simulate_layer(passes[layer], k, base, prefetch, decode_only, host)
        copies = counters.misses + counters.prefetch_issued
        layers.append(replace(counters, bytes_loaded=copies * header.expert_bytes))
    return SimResult(policy=name, cache_size=sizes, layers=tuple(layers), total=_sum_counters(layers))


def _sizes(header: TraceHeader, cache_size: int | Sequence[int]) -> tuple[int, ...]:
    sizes = (cache_size,) * header.num_layers if isinstance(cache_size, int) else tuple(cache_size)
    if len(sizes) != header.num_layers:
        raise ValueError(f"{len(sizes)} cache sizes given for {header.num_layers} MoE layers")
    for k in sizes:
        if not 1 <= k <= header.num_experts:
            raise ValueError(f"cache size {k} is outside 1..{header.num_experts} (this model's experts per layer)")
    return sizes


def _sum_counters(layers: Iterable[Counters]) -> Counters:
    total = Counters()
    for c in layers:
        total = total + c
    return total


def _counters_dict(c: Counters) -> dict[str, Any]:
    return {
        **asdict(c),
        "hit_rate": c.hit_rate,
        "prefetch_recall": c.prefetch_recall,
        "prefetch_precision": c.prefetch_precision,
    }
