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
* ``{"type": "token", "step": int, "text": str, "time": float, "first": true}``: the text of the token a step
  produced; ``first`` (optional, written only when true) marks the first token of an answer.
* ``{"type": "config", "step": int, "cache_size": [int], "policy": str, "prefetch": int, "miss": str}``:
  settings changed between tokens (``miss`` optional).

The package keeps one job per module: :mod:`~moe_tui.telemetry.events` (the schema's records),
:mod:`~moe_tui.telemetry.counters` (the arithmetic of hits, misses and prefetch), :mod:`~moe_tui.telemetry.live`
(the live aggregate and its snapshots) and :mod:`~moe_tui.telemetry.trace` (the trace file's reader, with
the writer's record format).
"""

from moe_tui.telemetry.counters import Counters
from moe_tui.telemetry.events import (
    SCHEMA_VERSION,
    ConfigEvent,
    LayerStep,
    TokenEvent,
    TraceError,
    TraceEvent,
    TraceHeader,
)
from moe_tui.telemetry.live import LayerState, Snapshot, Telemetry
from moe_tui.telemetry.trace import parse_trace_lines, read_trace

__all__ = [
    "SCHEMA_VERSION",
    "ConfigEvent",
    "Counters",
    "LayerState",
    "LayerStep",
    "Snapshot",
    "Telemetry",
    "TokenEvent",
    "TraceError",
    "TraceEvent",
    "TraceHeader",
    "parse_trace_lines",
    "read_trace",
]
