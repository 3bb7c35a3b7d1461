"""Turn a trace's events into what a cache simulation needs: per MoE layer, the experts each pass used."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from moe_tui.telemetry import LayerStep, TraceEvent, TraceHeader


@dataclass(frozen=True)
class LayerPass:
    """One forward pass through one MoE layer: the distinct experts it used and the prefetch guesses before it.

    ``experts`` keeps the trace's order; ``prefetch`` lists the recording engine's prefetch guesses for the
    pass: all of them when the trace records ``prefetch_guesses``, otherwise only those whose copy it started
    (older traces leave out the guesses it already held, so replays of prefetch depth > 1 are approximate);
    ``n_tokens`` is 1 for a decoded token and the prompt length for a prefill.
    """

    experts: tuple[int, ...]
    prefetch: tuple[int, ...] = ()
    n_tokens: int = 1


def layer_passes(header: TraceHeader, events: Iterable[TraceEvent]) -> list[list[LayerPass]]:
    """The passes of every MoE layer in trace order (index = layer); tokens and config changes are skipped."""
    passes: list[list[LayerPass]] = [[] for _ in range(header.num_layers)]
    for event in events:
        if isinstance(event, LayerStep) and event.experts:
            passes[event.layer].append(
                LayerPass(_distinct(event.experts), event.prefetch_guesses or event.prefetch_issued, event.n_tokens)
            )
    return passes


def has_prefetch(passes: list[list[LayerPass]]) -> bool:
    """Whether the recording engine issued any prefetch (so ``lru+prefetch`` can be replayed)."""
    return any(p.prefetch for layer in passes for p in layer)


def _distinct(experts: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(dict.fromkeys(experts))
