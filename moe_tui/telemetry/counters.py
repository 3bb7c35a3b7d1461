"""The arithmetic of expert fetches: hits, misses, host computations, prefetch issued and used, bytes and
times, with the rates derived from them; one home for them, read by the live aggregate, the engine's stats and
the benchmarks (which subtract two readings)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from moe_tui.telemetry.events import LayerStep


@dataclass(frozen=True)
class Counters:
    """Cumulative counts over a run, for one layer or for all of them."""

    hits: int = 0
    misses: int = 0  # copied into a slot
    prefetch_issued: int = 0
    prefetch_used: int = 0
    bytes_loaded: int = 0
    load_s: float = 0.0
    compute_s: float = 0.0
    host: int = 0  # misses computed on the host from the store

    @property
    def accesses(self) -> int:
        """Expert fetches: hits, copied misses and misses computed on the host."""
        return self.hits + self.misses + self.host

    @property
    def hit_rate(self) -> float:
        """Share of fetches served from a slot (prefetched ones included); 0 before any fetch."""
        return self.hits / self.accesses if self.accesses else 0.0

    @property
    def prefetch_precision(self) -> float:
        """Share of prefetched experts that the router then used."""
        return self.prefetch_used / self.prefetch_issued if self.prefetch_issued else 0.0

    @property
    def prefetch_recall(self) -> float:
        """Share of the experts that were not cached before prefetch ran that prefetch brought in."""
        needed = self.misses + self.host + self.prefetch_used
        return self.prefetch_used / needed if needed else 0.0

    @property
    def prefetch_wasted(self) -> int:
        """Prefetched experts the router did not use."""
        return self.prefetch_issued - self.prefetch_used

    def __add__(self, other: Counters) -> Counters:
        """Both counts added field by field (layers summed into a total)."""
        return Counters(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(Counters)})

    def __sub__(self, other: Counters) -> Counters:
        """What happened between two readings (``after - before``), field by field."""
        return Counters(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(Counters)})

    @classmethod
    def from_mapping(cls, values: dict) -> Counters:
        """The counters among ``values`` (an engine's ``stats()``, say), ignoring other keys."""
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    def rates(self) -> dict[str, float]:
        """The derived rates by name, for reports and JSON."""
        return {
            "hit_rate": self.hit_rate,
            "prefetch_recall": self.prefetch_recall,
            "prefetch_precision": self.prefetch_precision,
        }

    def add(self, step: LayerStep) -> Counters:
        """These counters with one more layer step folded in."""
        return Counters(
            hits=self.hits + sum(step.hits),
            misses=self.misses + step.misses,
            prefetch_issued=self.prefetch_issued + len(step.prefetch_issued),
            prefetch_used=self.prefetch_used + sum(step.prefetch_hits),
            bytes_loaded=self.bytes_loaded + step.bytes_loaded,
            load_s=self.load_s + step.load_s,
            compute_s=self.compute_s + step.compute_s,
            host=self.host + step.host_computed,
        )
