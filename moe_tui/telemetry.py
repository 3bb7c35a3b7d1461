"""What the engine saw, as events, aggregates and snapshots: the contract between the engine, the UI and the lab.

The engine reports one :class:`LayerStep` per MoE layer per forward pass and one :class:`TokenEvent` per
generated token. :class:`Telemetry` folds them into counters and a versioned, immutable :class:`Snapshot`
that a UI thread can read at any rate without locks held for long. The same events, written as JSON Lines,
form a trace that can be replayed through a fresh :class:`Telemetry` (``moe-tui chat --replay``) or through
the cache simulator (``moe-tui lab``).

Trace schema (version 1), one JSON object per line:

* first line, ``{"type": "header", "schema": 1, "model": str, "num_layers": int, "num_experts": int,
  "top_k": int, "cache_size": [int per layer], "policy": str, "prefetch": int, "expert_bytes": int,
  "fast_tier": str, "slow_tier": str, "miss": str, "expert_format": str, "shared_experts": int}``.
  ``num_layers`` counts MoE layers; layer indices below are 0-based among them. ``miss`` (``copy``, ``host``
  or ``auto``), ``expert_format`` (``bf16``, ``int4``, ``hqq2 (unfused)``, ...) and ``shared_experts``
  (experts every token uses besides the routed ones) are optional.
* ``{"type": "step", "step": int, "layer": int, "n_tokens": int, "experts": [int], "counts": [int],
  "weights": [float], "hits": [bool], "prefetch_hits": [bool], "prefetch_issued": [int],
  "slots": [int | null], "bytes_loaded": int, "load_s": float, "compute_s": float, "time": float,
  "prefetch_guesses": [int], "host": [bool]}``.
  ``step`` numbers forward passes (a prefill is one step of ``n_tokens`` tokens, each decoded token one
  step of 1). ``experts`` are the distinct experts this pass used, in the order the engine fetched them;
  ``counts[i]`` tokens went to ``experts[i]`` with mean router weight ``weights[i]``. ``hits[i]`` says
  whether ``experts[i]`` was already in a slot when fetched, ``prefetch_hits[i]`` whether it was there
  because a prefetch put it there (a subset of hits). ``prefetch_issued`` lists the experts whose copy a
  prefetch started for this layer ahead of this pass; ``prefetch_guesses`` (optional, may be absent) every
  expert the prefetch guessed for it, held already or not, in guess order (the cache lab needs the held
  ones too: a prefetch never evicts a guess). ``slots`` is the slot content after the pass in eviction
  order (next victim first; ``null`` is an empty slot). ``host`` (optional, empty or absent when none) marks
  the misses computed on the host straight from the store, without a copy and without entering a slot.
* ``{"type": "token", "step": int, "text": str, "time": float}``: the text of the token a step produced.
* ``{"type": "config", "step": int, "cache_size": [int], "policy": str, "prefetch": int, "miss": str}``:
  settings changed between tokens (``miss`` optional).
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import IO, Any

SCHEMA_VERSION = 1
WINDOW_STEPS = 32
HISTORY_POINTS = 120
# Forward passes whose routing is kept in memory for the cache lab when no trace file is written.
JOURNAL_PASSES = 1024


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
    def host_computed(self) -> int:
        """Missed experts of this pass computed on the host from the store, without a copy."""
        return sum(self.host)


@dataclass(frozen=True)
class TokenEvent:
    """The text of the token that step ``step`` produced."""

    step: int
    text: str
    time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class ConfigEvent:
    """Engine settings changed between tokens (cache size per layer, policy, prefetch depth)."""

    step: int
    cache_size: tuple[int, ...]
    policy: str
    prefetch: int
    miss: str = "copy"


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


@dataclass(frozen=True)
class LayerState:
    """One MoE layer as the UI shows it: slots, last routing, rolling usage and counters."""

    layer: int
    cache_size: int
    slots: tuple[int | None, ...] = ()
    slot_status: tuple[str, ...] = ()
    last_experts: tuple[int, ...] = ()
    last_weights: tuple[float, ...] = ()
    window_frequency: tuple[float, ...] = ()
    counters: Counters = Counters()
    hit_rate_history: tuple[float, ...] = ()


@dataclass(frozen=True)
class Snapshot:
    """An immutable picture of the engine at one moment; ``version`` grows with every change."""

    version: int
    header: TraceHeader
    layers: tuple[LayerState, ...]
    totals: Counters
    steps: int = 0
    tokens: int = 0
    last_token: str = ""
    tokens_per_s: float = 0.0
    bytes_per_token: float = 0.0
    hit_rate_history: tuple[float, ...] = ()

    @property
    def stall_share(self) -> float:
        """Share of expert time spent waiting for copies rather than computing."""
        busy = self.totals.load_s + self.totals.compute_s
        return self.totals.load_s / busy if busy else 0.0


class Telemetry:
    """Thread-safe aggregate of engine events with a cheap versioned snapshot and an optional trace writer.

    The generating thread calls :meth:`record_step` / :meth:`record_token`; a UI thread calls
    :meth:`snapshot` (which builds a new snapshot only when something changed since the last call).
    """

    def __init__(self, header: TraceHeader, trace: IO[str] | None = None, window: int = WINDOW_STEPS):
        self._lock = threading.Lock()
        self._trace = trace
        self._window = window
        self._version = 0
        self._cached: Snapshot | None = None
        self.reset(header)

    def reset(self, header: TraceHeader) -> None:
        """Start over with a new header (a new model or a cleared session); keeps the trace writer."""
        with self._lock:
            self._header = header
            self._layer_counters = [Counters() for _ in range(header.num_layers)]
            self._last: list[LayerStep | None] = [None] * header.num_layers
            self._recent: list[deque[LayerStep]] = [deque(maxlen=self._window) for _ in range(header.num_layers)]
            self._layer_history: list[deque[float]] = [deque(maxlen=HISTORY_POINTS) for _ in range(header.num_layers)]
            self._history: deque[float] = deque(maxlen=HISTORY_POINTS)
            self._totals = Counters()
            self._steps = 0
            self._last_step: int | None = None
            self._tokens = 0
            self._last_token = ""
            self._token_times: deque[float] = deque(maxlen=64)
            self._journal: deque[LayerStep | TokenEvent] = deque(maxlen=JOURNAL_PASSES * (header.num_layers + 1))
            self._version += 1
            self._write({"type": "header", "schema": SCHEMA_VERSION, **_jsonable(asdict(header))})

    @property
    def header(self) -> TraceHeader:
        """The current model shape and settings."""
        return self._header

    def record_step(self, step: LayerStep) -> None:
        """Fold one layer's pass into the counters (and the trace, when one is open)."""
        with self._lock:
            layer = step.layer
            self._layer_counters[layer] = self._layer_counters[layer].add(step)
            self._totals = self._totals.add(step)
            self._last[layer] = step
            self._recent[layer].append(step)
            self._journal.append(step)
            if layer == 0 and step.n_tokens > 1:  # a prefill starts a new answer: its rate starts afresh
                self._token_times.clear()
            self._layer_history[layer].append(self._layer_counters[layer].hit_rate)
            if step.step != self._last_step:
                self._last_step = step.step
                self._steps += 1
                self._history.append(self._totals.hit_rate)
            self._version += 1
            if self._trace is not None:  # vars(), not asdict(): asdict deep-copies and costs ~50 us per step
                self._write({"type": "step", **_jsonable(vars(step))})

    def record_token(self, event: TokenEvent) -> None:
        """Count one generated token and remember its text."""
        with self._lock:
            self._tokens += 1
            self._last_token = event.text
            self._token_times.append(event.time)
            self._journal.append(event)
            self._version += 1
            self._write({"type": "token", **_jsonable(asdict(event))})

    def record_config(self, event: ConfigEvent) -> None:
        """Apply changed settings (cache sizes, policy, prefetch) to the header shown from now on."""
        with self._lock:
            self._header = replace(
                self._header,
                cache_size=tuple(event.cache_size),
                policy=event.policy,
                prefetch=event.prefetch,
                miss=event.miss,
            )
            self._version += 1
            self._write({"type": "config", **_jsonable(asdict(event))})

    def journal(self) -> tuple[TraceHeader, list[LayerStep | TokenEvent]]:
        """The header, layer steps and tokens of about the last ``JOURNAL_PASSES`` forward passes, kept in memory.

        It is a trace the cache lab can replay without a trace file: the events are the objects already built for
        the counters, so keeping them costs a deque append per event.
        """
        with self._lock:
            return self._header, list(self._journal)

    @property
    def version(self) -> int:
        """Grows by one with every recorded event; cheap to poll."""
        return self._version

    def counters(self) -> Counters:
        """Cumulative counters over all layers."""
        with self._lock:
            return self._totals

    def layer_counters(self) -> list[Counters]:
        """Cumulative counters per MoE layer."""
        with self._lock:
            return list(self._layer_counters)

    def snapshot(self) -> Snapshot:
        """The current state; the same object is returned again while nothing has changed."""
        with self._lock:
            if self._cached is not None and self._cached.version == self._version:
                return self._cached
            self._cached = self._build_snapshot()
            return self._cached

    def close(self) -> None:
        """Flush and close the trace file, if any."""
        with self._lock:
            if self._trace is not None:
                self._trace.close()
                self._trace = None

    def _build_snapshot(self) -> Snapshot:
        header = self._header
        layers = tuple(self._layer_state(layer, header.cache_size[layer]) for layer in range(header.num_layers))
        totals = self._totals
        return Snapshot(
            version=self._version,
            header=header,
            layers=layers,
            totals=totals,
            steps=self._steps,
            tokens=self._tokens,
            last_token=self._last_token,
            tokens_per_s=self._tokens_per_s(),
            bytes_per_token=totals.bytes_loaded / self._tokens if self._tokens else 0.0,
            hit_rate_history=tuple(self._history),
        )

    def _layer_state(self, layer: int, cache_size: int) -> LayerState:
        last = self._last[layer]
        frequency = [0.0] * self._header.num_experts
        recent = self._recent[layer]
        for step in recent:
            tokens = max(step.n_tokens, 1)
            for expert, count in zip(step.experts, step.counts, strict=True):
                frequency[expert] += count / tokens
        if recent:
            frequency = [value / len(recent) for value in frequency]
        if last is None:
            return LayerState(
                layer=layer,
                cache_size=cache_size,
                slots=(None,) * cache_size,
                slot_status=("empty",) * cache_size,
                window_frequency=tuple(frequency),
                counters=self._layer_counters[layer],
            )
        return LayerState(
            layer=layer,
            cache_size=cache_size,
            slots=last.slots,
            slot_status=tuple(_slot_status(last, expert) for expert in last.slots),
            last_experts=last.experts,
            last_weights=last.weights,
            window_frequency=tuple(frequency),
            counters=self._layer_counters[layer],
            hit_rate_history=tuple(self._layer_history[layer]),
        )

    def _tokens_per_s(self) -> float:
        """Decode rate of the current (or last) answer: its tokens since the prefill, not the pauses between."""
        times = self._token_times
        if len(times) < 2 or times[-1] <= times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def _write(self, record: dict[str, Any]) -> None:
        if self._trace is not None:
            self._trace.write(json.dumps(record, separators=(",", ":")) + "\n")


def _slot_status(step: LayerStep, expert: int | None) -> str:
    """How the last pass touched the expert in a slot: hit, prefetch (hit thanks to prefetch), miss, or idle."""
    if expert is None:
        return "empty"
    if expert in step.experts:
        index = step.experts.index(expert)
        if step.prefetch_hits[index]:
            return "prefetch"
        return "hit" if step.hits[index] else "miss"
    if expert in step.prefetch_issued:
        return "prefetched"
    return "idle"


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, tuple) else value for key, value in record.items()}


TraceEvent = LayerStep | TokenEvent | ConfigEvent


def read_trace(path: str | Path, notes: list[str] | None = None) -> tuple[TraceHeader, list[TraceEvent]]:
    """Read a whole trace file (``-``: standard input); raises :class:`TraceError` naming the file and line on any
    problem.

    Every record is checked against the header and the records before it (see :func:`_check_step`). A last
    line cut off in the middle (a recording killed mid-write: no newline, not valid JSON) is left out and the
    rest is read; a sentence saying so is appended to ``notes`` when given.
    """
    if str(path) == "-":
        try:
            header, events = _parse_trace(sys.stdin, "stdin", notes if notes is not None else [])
            return header, list(events)
        except UnicodeDecodeError:
            raise TraceError("stdin is not a text trace") from None
    path = Path(path)
    try:
        if path.is_dir():
            raise TraceError(f"{path} is a directory, not a trace file")
        with path.open(encoding="utf-8") as handle:
            header, events = _parse_trace(handle, str(path), notes if notes is not None else [])
            return header, list(events)
    except OSError as error:
        raise TraceError(f"cannot read trace {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise TraceError(f"{path} is not a text trace file") from None


def parse_trace_lines(
    lines: Iterable[str], name: str, notes: list[str] | None = None
) -> tuple[TraceHeader, Iterator[TraceEvent]]:
    """The header and a lazy iterator of checked events of trace ``lines`` (each with its newline); ``name``
    names the source in errors. A cut-off last line is skipped with a note (see :func:`read_trace`)."""
    return _parse_trace(lines, name, notes if notes is not None else [])


def _parse_trace(lines: Iterable[str], name: str, notes: list[str]) -> tuple[TraceHeader, Iterator[TraceEvent]]:
    iterator = iter(enumerate(lines, start=1))
    header: TraceHeader | None = None
    for number, line in iterator:
        if line.strip():
            header = _parse_header(_load_line(line, name, number), name, number)
            break
    if header is None:
        raise TraceError(f"{name} is empty: a trace starts with a header line")
    return header, _parse_events(iterator, header, name, notes)


def _parse_events(
    iterator: Iterator[tuple[int, str]], header: TraceHeader, name: str, notes: list[str]
) -> Iterator[TraceEvent]:
    order = _StepOrder(header)
    for number, line in iterator:
        if not line.strip():
            continue
        try:
            record = _load_line(line, name, number)
        except TraceError:
            if line.endswith("\n"):
                raise
            notes.append(
                f"{name}: line {number} is cut off (a recording stopped mid-line); read up to line {number - 1}"
            )
            return
        kind = record.pop("type", None)
        try:
            if kind == "step":
                event: TraceEvent = _parse_step(record, header)
                order.check(event)
            elif kind == "token":
                event = TokenEvent(step=int(record["step"]), text=str(record["text"]), time=float(record["time"]))
            elif kind == "config":
                event = ConfigEvent(
                    step=int(record["step"]),
                    cache_size=tuple(int(k) for k in record["cache_size"]),
                    policy=str(record["policy"]),
                    prefetch=int(record["prefetch"]),
                    miss=str(record.get("miss", "copy")),
                )
                order.configure(event)
            elif kind == "header":
                raise ValueError("a second header (traces cannot be concatenated)")
            else:
                raise ValueError(f"unknown record type {kind!r}")
        except (KeyError, TypeError, ValueError) as error:
            detail = f"missing field {error}" if isinstance(error, KeyError) else str(error)
            raise TraceError(f"{name}, line {number}: {detail}") from None
        yield event


def _parse_step(record: dict[str, Any], header: TraceHeader) -> LayerStep:
    step = LayerStep(
        step=int(record["step"]),
        layer=int(record["layer"]),
        n_tokens=int(record["n_tokens"]),
        experts=tuple(int(e) for e in record["experts"]),
        counts=tuple(int(c) for c in record["counts"]),
        weights=tuple(float(w) for w in record["weights"]),
        hits=tuple(bool(h) for h in record["hits"]),
        prefetch_hits=tuple(bool(h) for h in record["prefetch_hits"]),
        prefetch_issued=tuple(int(e) for e in record["prefetch_issued"]),
        slots=tuple(None if s is None else int(s) for s in record["slots"]),
        bytes_loaded=int(record.get("bytes_loaded", 0)),
        load_s=float(record.get("load_s", 0.0)),
        compute_s=float(record.get("compute_s", 0.0)),
        time=float(record.get("time", 0.0)),
        prefetch_guesses=tuple(int(e) for e in record.get("prefetch_guesses", ())),
        host=tuple(bool(h) for h in record.get("host", ())),
    )
    if not 0 <= step.layer < header.num_layers:
        raise ValueError(f"layer {step.layer} is outside this model's {header.num_layers} MoE layers")
    lengths = {len(step.experts), len(step.counts), len(step.weights), len(step.hits), len(step.prefetch_hits)}
    if len(lengths) != 1:
        raise ValueError("experts, counts, weights, hits and prefetch_hits must have the same length")
    if step.host and (
        len(step.host) != len(step.experts) or any(h and hit for h, hit in zip(step.host, step.hits, strict=True))
    ):
        raise ValueError("host must be empty or one flag per expert, set only where hits is false")
    held = [s for s in step.slots if s is not None]
    for expert in (*step.experts, *step.prefetch_issued, *step.prefetch_guesses, *held):
        if not 0 <= expert < header.num_experts:
            raise ValueError(f"expert {expert} is outside this model's {header.num_experts} experts")
    _check_step(step, header, held)
    return step


def _check_step(step: LayerStep, header: TraceHeader, held: list[int]) -> None:
    """The rules one step must follow by itself (its order among the others: :class:`_StepOrder`)."""
    if step.n_tokens < 1:
        raise ValueError(f"n_tokens must be at least 1, not {step.n_tokens}")
    if len(set(step.experts)) != len(step.experts) or len(set(held)) != len(held):
        raise ValueError("an expert is listed twice (in experts or in slots)")
    picks = step.n_tokens * header.top_k
    if len(step.experts) > picks:
        raise ValueError(f"{len(step.experts)} experts for {step.n_tokens} token(s) at top-{header.top_k}")
    if any(count < 1 for count in step.counts) or sum(step.counts) > picks:
        raise ValueError(f"counts must be >= 1 and add up to at most n_tokens x top_k = {picks}")
    if any(used and not hit for used, hit in zip(step.prefetch_hits, step.hits, strict=True)):
        raise ValueError("a prefetch hit must also be a hit")
    if any(not math.isfinite(w) or w < 0 for w in step.weights):
        raise ValueError("weights must be finite and not negative")
    if step.bytes_loaded < 0 or step.load_s < 0 or step.compute_s < 0:
        raise ValueError("bytes_loaded, load_s and compute_s cannot be negative")


class _StepOrder:
    """Steps must come in order: step numbers never go back, each layer at most once per step, and a layer
    never holds more slots than its cache size at the time (from the header and config records)."""

    def __init__(self, header: TraceHeader):
        self.sizes = list(header.cache_size)
        self.step = 0
        self.layers: set[int] = set()

    def configure(self, event: ConfigEvent) -> None:
        """Cache sizes change from here on."""
        if len(event.cache_size) != len(self.sizes):
            raise ValueError(f"cache_size has {len(event.cache_size)} entries for {len(self.sizes)} layers")
        self.sizes = list(event.cache_size)

    def check(self, step: LayerStep) -> None:
        """Raise ValueError when ``step`` is out of order or overfills its layer's slots."""
        if step.step < self.step:
            raise ValueError(f"step {step.step} comes after step {self.step}: steps must not go back")
        if step.step > self.step:
            self.step, self.layers = step.step, set()
        if step.layer in self.layers:
            raise ValueError(f"layer {step.layer} appears twice in step {step.step}")
        self.layers.add(step.layer)
        if len(step.slots) > self.sizes[step.layer]:
            raise ValueError(
                f"{len(step.slots)} slots listed for layer {step.layer}, whose cache holds {self.sizes[step.layer]}"
            )


def _parse_header(record: dict[str, Any], name: str, number: int) -> TraceHeader:
    if record.get("type") != "header":
        raise TraceError(f"{name}, line {number}: a trace starts with a header line, found {record.get('type')!r}")
    if record.get("schema") != SCHEMA_VERSION:
        raise TraceError(f"{name}: trace schema {record.get('schema')!r} is not supported (expected {SCHEMA_VERSION})")
    try:
        return TraceHeader(
            model=str(record["model"]),
            num_layers=int(record["num_layers"]),
            num_experts=int(record["num_experts"]),
            top_k=int(record["top_k"]),
            cache_size=tuple(int(k) for k in record["cache_size"]),
            policy=str(record.get("policy", "lru")),
            prefetch=int(record.get("prefetch", 0)),
            expert_bytes=int(record.get("expert_bytes", 0)),
            fast_tier=str(record.get("fast_tier", "cpu")),
            slow_tier=str(record.get("slow_tier", "ram")),
            miss=str(record.get("miss", "copy")),
            expert_format=str(record.get("expert_format", "")),
            shared_experts=int(record.get("shared_experts", 0)),
        )
    except KeyError as error:
        raise TraceError(f"{name}, line {number}: header is missing field {error}") from None
    except (TypeError, ValueError) as error:
        raise TraceError(f"{name}, line {number}: {error}") from None


def _load_line(line: str, name: str, number: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise TraceError(f"{name}, line {number}: not valid JSON ({error.msg})") from None
    if not isinstance(record, dict):
        raise TraceError(f"{name}, line {number}: expected a JSON object")
    return record
