"""The trace schema's records: the header, a layer's step, a token, a settings change (see the package
docstring for the JSON form of each)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

SCHEMA_VERSION = 1


class TraceError(ValueError):
    """A trace file that cannot be read: says which line and why."""


@dataclass(frozen=True)
class TraceHeader:
    """The model shape and engine settings a trace (or a live engine) starts with."""

    model: str
    num_layers: int
    num_experts: int
    top_k: int
    cache_size: tuple[int, ...]
    policy: str = "lru"
    prefetch: int = 0
    expert_bytes: int = 0
    fast_tier: str = "cpu"
    slow_tier: str = "ram"
    miss: str = "copy"  # what a miss does: copy into a slot, compute on the host, or auto (the cost model)
    expert_format: str = ""  # the experts' format as bench and the panels name it ("int4", "hqq2 (unfused)")
    shared_experts: int = 0  # experts every token uses besides the routed ones (resident, not offloaded)

    def __post_init__(self) -> None:
        if self.num_layers < 1 or self.num_experts < 1 or not 1 <= self.top_k <= self.num_experts:
            raise ValueError(
                f"impossible model shape: {self.num_layers} layers, {self.num_experts} experts, top-{self.top_k}"
            )
        if len(self.cache_size) != self.num_layers:
            raise ValueError(f"cache_size has {len(self.cache_size)} entries for {self.num_layers} layers")


@dataclass(frozen=True)
class LayerStep:
    """What one MoE layer did in one forward pass (see the module docstring for each field)."""

    step: int
    layer: int
    n_tokens: int
    experts: tuple[int, ...]
    counts: tuple[int, ...]
    weights: tuple[float, ...]
    hits: tuple[bool, ...]
    prefetch_hits: tuple[bool, ...]
    prefetch_issued: tuple[int, ...]
    slots: tuple[int | None, ...]
    bytes_loaded: int = 0
    load_s: float = 0.0
    compute_s: float = 0.0
    time: float = field(default_factory=time.time)
    prefetch_guesses: tuple[int, ...] = ()
    host: tuple[bool, ...] = ()  # per expert: a miss computed on the host from the store (empty: none was)

    @property
    def misses(self) -> int:
        """Experts of this pass that had to be copied in before use."""
        return sum(not hit for hit in self.hits) - self.host_computed

    @property
    def is_prefill(self) -> bool:
        """More than one token through the first MoE layer: the prefill that begins an answer (in traces written
        before :attr:`TokenEvent.first` existed, the only sign of one)."""
        return self.layer == 0 and self.n_tokens > 1

    @property
    def host_computed(self) -> int:
        """Missed experts of this pass computed on the host from the store, without a copy."""
        return sum(self.host)


@dataclass(frozen=True)
class TokenEvent:
    """The text of the token that step ``step`` produced; ``first``: it begins an answer (traces written before
    the field existed leave it out, and readers then tell an answer's start by its prefill pass)."""

    step: int
    text: str
    time: float = field(default_factory=time.time)
    first: bool = False


@dataclass(frozen=True)
class ConfigEvent:
    """Engine settings changed between tokens (cache size per layer, policy, prefetch depth)."""

    step: int
    cache_size: tuple[int, ...]
    policy: str
    prefetch: int
    miss: str = "copy"


TraceEvent = LayerStep | TokenEvent | ConfigEvent
