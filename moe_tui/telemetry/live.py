"""The live aggregate: :class:`Telemetry` folds the engine's steps and tokens into counters, per-layer state and
a versioned, immutable :class:`Snapshot` a UI thread reads at any rate, keeps a journal of recent passes for
the cache lab, and writes each record to a trace file when given one."""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from typing import IO, Any

from moe_tui.telemetry.counters import Counters
from moe_tui.telemetry.events import SCHEMA_VERSION, ConfigEvent, LayerStep, TokenEvent, TraceHeader
from moe_tui.telemetry.trace import _jsonable

# Passes behind the heatmap's shading and behind each point of the hit-rate sparklines: a cumulative rate
# flattens within a few dozen tokens, a rate over the last passes shows a topic change or a cold cache.
WINDOW_STEPS = 32
HISTORY_POINTS = 120
# Forward passes whose routing is kept in memory for the cache lab when no trace file is written.
JOURNAL_PASSES = 1024
# Snapshot versions, unique across every Telemetry in the process: a reader that moves from one model's
# telemetry to another's (the app loading a new model) never mistakes the new snapshot for one it drew.
_VERSIONS = itertools.count(1)


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
    counters: Counters = field(default_factory=Counters)
    hit_rate_history: tuple[float, ...] = ()  # per pass: the hit rate over the last WINDOW_STEPS passes


@dataclass(frozen=True)
class Snapshot:
    """An immutable picture of the engine at one moment; ``version`` grows with every change and is never shared
    with another Telemetry's snapshot."""

    version: int
    header: TraceHeader
    layers: tuple[LayerState, ...]
    totals: Counters
    steps: int = 0
    tokens: int = 0
    last_token: str = ""
    tokens_per_s: float = 0.0
    bytes_per_token: float = 0.0
    hit_rate_history: tuple[float, ...] = ()  # per pass: the hit rate over the last WINDOW_STEPS passes
    recording_stopped: str = ""  # why the trace being recorded could not be written on ("" while it can)

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
        self._recording_stopped = ""
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
            # Hits and fetches of the steps in ``_recent``, kept as running sums.
            self._window_hits = [0] * header.num_layers
            self._window_fetches = [0] * header.num_layers
            self._layer_history: list[deque[float]] = [deque(maxlen=HISTORY_POINTS) for _ in range(header.num_layers)]
            self._history: deque[float] = deque(maxlen=HISTORY_POINTS)
            self._totals = Counters()
            self._steps = 0
            self._last_step: int | None = None
            self._tokens = 0
            self._last_token = ""
            self._token_times: deque[float] = deque(maxlen=64)
            self._journal: deque[LayerStep | TokenEvent] = deque(maxlen=JOURNAL_PASSES * (header.num_layers + 1))
            self._version = next(_VERSIONS)
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
            self._slide_window(layer, step)
            self._journal.append(step)
            if step.is_prefill:  # a new answer: its rate starts afresh
                self._token_times.clear()
            self._layer_history[layer].append(_share(self._window_hits[layer], self._window_fetches[layer]))
            if step.step != self._last_step:
                self._last_step = step.step
                self._steps += 1
                self._history.append(_share(sum(self._window_hits), sum(self._window_fetches)))
            self._version = next(_VERSIONS)
            if self._trace is not None:  # vars(), not asdict(): asdict deep-copies and costs ~50 us per step
                self._write({"type": "step", **_jsonable(vars(step))})

    def _slide_window(self, layer: int, step: LayerStep) -> None:
        """Add ``step`` to the layer's recent steps and their running hit and fetch sums, dropping the oldest."""
        recent = self._recent[layer]
        if len(recent) == recent.maxlen:
            oldest = recent[0]
            self._window_hits[layer] -= sum(oldest.hits)
            self._window_fetches[layer] -= len(oldest.hits)
        recent.append(step)
        self._window_hits[layer] += sum(step.hits)
        self._window_fetches[layer] += len(step.hits)

    def record_token(self, event: TokenEvent) -> None:
        """Count one generated token and remember its text."""
        with self._lock:
            self._tokens += 1
            self._last_token = event.text
            if event.first:  # a new answer: its rate starts afresh even when no prefill pass came before it
                self._token_times.clear()
            self._token_times.append(event.time)
            self._journal.append(event)
            self._version = next(_VERSIONS)
            record = asdict(event)
            if not record["first"]:
                del record["first"]  # only an answer's first token says so (the reader's default is False)
            self._write({"type": "token", **_jsonable(record)})

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
            self._version = next(_VERSIONS)
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
        """Grows with every recorded event (unique in the process); cheap to poll."""
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

    def flush(self) -> None:
        """Write out the trace's buffered records (a failure stops the recording, as a failed write does)."""
        with self._lock:
            if self._trace is not None:
                try:
                    self._trace.flush()
                except OSError as error:
                    self._stop_recording(self._trace, error)

    def close(self) -> None:
        """Flush and close the trace file, if any (a failure to write its last records stops the recording,
        as during a run)."""
        with self._lock:
            trace, self._trace = self._trace, None
            if trace is None:
                return
            try:
                trace.close()
            except OSError as error:
                self._stop_recording(trace, error)

    def _stop_recording(self, trace: IO[str], error: OSError) -> None:
        """The trace cannot be written (a full disk, a removed drive): the engine goes on without it."""
        name = getattr(trace, "name", "the trace")
        self._recording_stopped = f"recording stopped: cannot write {name} ({error.strerror or error})"
        self._version = next(_VERSIONS)
        self._trace = None
        with contextlib.suppress(OSError):  # its buffered records may fail again; it is closed all the same
            trace.close()

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
            recording_stopped=self._recording_stopped,
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
            try:
                self._trace.write(json.dumps(record, separators=(",", ":")) + "\n")
            except OSError as error:
                self._stop_recording(self._trace, error)


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


def _share(hits: int, fetches: int) -> float:
    """Hits as a share of fetches; 0 before any fetch (as :attr:`Counters.hit_rate`)."""
    return hits / fetches if fetches else 0.0
