"""Expert cache: each layer's k slots in eviction order, how the last pass used them, and hit rates over time.

A slot is drawn as the expert id and a mark (``+`` hit, ``!`` miss: loaded, ``^`` hit thanks to a prefetch,
``~`` prefetched but not used, ``·`` empty), coloured by the same status, the next victim leftmost. When a
layer's slots do not fit the width (k of 16 or more on a narrow panel) a layer's row counts its slots by mark
instead; when the layers do not fit the height, the rows shown are the layers with the lowest hit rate (in
layer order), and one line sums up the others.
"""

from __future__ import annotations

from rich.text import Text

from moe_tui.telemetry import LayerState, Snapshot
from moe_tui.tui.widgets.colours import STATUS_MARKS, Colours
from moe_tui.tui.widgets.panel import Panel, SnapshotView
from moe_tui.tui.widgets.text import MANY_LAYERS, sparkline

LEGEND = (("hit", "hit"), ("miss", "miss"), ("prefetch", "prefetched"), ("prefetched", "unused guess"))


def slot_cells(state: LayerState, digits: int, colours: Colours) -> Text:
    """The layer's slots, next victim first, each ``<id><mark>`` and a space."""
    text = Text()
    for expert, status in zip(state.slots, state.slot_status, strict=True):
        if expert is None:
            text.append("·" * digits + " ", style=colours.slot("empty"))
        else:
            text.append(f"{expert:>{digits}}{STATUS_MARKS.get(status, ' ')}", style=colours.slot(status))
        text.append(" ")
    return text


def summary_line(snapshot: Snapshot, colours: Colours, width: int) -> Text:
    """Overall hit rate, counts (with misses computed on the host when there are any), settings and the overall
    hit-rate sparkline."""
    totals = snapshot.totals
    header = snapshot.header
    sizes = set(header.cache_size)
    k = str(sizes.pop()) if len(sizes) == 1 else "/".join(str(size) for size in header.cache_size)
    text = Text("hit ", style=colours.muted)
    text.append(f"{totals.hit_rate * 100:5.1f}%", style=colours.highlight)
    counts, settings = f" {totals.hits}/{totals.accesses}", f"  k={k} {header.policy}  "
    if totals.host or header.miss != "copy":
        text.append(counts, style=colours.muted)
        text.append(f" host {totals.host}", style=colours.label)
        text.append(settings, style=colours.muted)
    else:
        text.append(counts + settings, style=colours.muted)
    room = width - text.cell_len
    if room >= 8:
        text.append(sparkline(snapshot.hit_rate_history, room), style=colours.slot("hit"))
    return text


def render_cache(snapshot: Snapshot, colours: Colours, width: int, height: int) -> Text:
    """The panel: a summary line, one row per layer (or per worst layer), a legend."""
    header = snapshot.header
    digits = len(str(header.num_experts - 1))
    widest = max(header.cache_size)
    listed = 5 + widest * (digits + 2) + 5 <= width
    text = summary_line(snapshot, colours, width)
    text.append("\n")
    shown, others = layers_shown(snapshot.layers, height - 3)
    heading = "     next out → newest" if listed else "     slots by state"
    text.append(heading + (" · worst layers" if others else ""), style=colours.muted)
    for state in shown:
        text.append("\n")
        text.append_text(layer_row(state, digits, colours, width) if listed else counted_row(state, colours, width))
    if others:
        rates = [state.counters.hit_rate for state in others if state.counters.accesses]
        spread = f", hit {min(rates) * 100:.0f}-{max(rates) * 100:.0f}%" if rates else ""
        text.append("\n")
        text.append(f"… {len(others)} more layers{spread}", style=colours.muted)
    text.append("\n")
    for status, label in LEGEND:
        text.append(STATUS_MARKS[status], style=colours.slot(status))
        text.append(f"{label} ", style=colours.muted)
    return text


def layers_shown(states: list[LayerState], rows: int) -> tuple[list[LayerState], list[LayerState]]:
    """All layers when they fit in ``rows`` (or are few: the dashboard scrolls), else the ``rows - 1`` with the
    lowest hit rate (in layer order) and the rest."""
    if len(states) <= max(rows, MANY_LAYERS):
        return list(states), []
    keep = max(rows - 1, 1)
    worst = sorted(states, key=lambda state: state.counters.hit_rate if state.counters.accesses else 2.0)[:keep]
    chosen = {state.layer for state in worst}
    return [s for s in states if s.layer in chosen], [s for s in states if s.layer not in chosen]


def counted_row(state: LayerState, colours: Colours, width: int) -> Text:
    """``L3   k=16 9+ 4! 2^ 1 idle  82% ▃▅▆▇``: the layer's slots counted by state (idle: held, unused by the
    last pass), its hit rate and sparkline."""
    text = Text(f"L{state.layer:<3} ", style=colours.label)
    text.append(f"k={state.cache_size:<3}", style=colours.muted)
    statuses = [
        status if expert is not None else "empty" for expert, status in zip(state.slots, state.slot_status, strict=True)
    ]
    for status in ("hit", "miss", "prefetch", "prefetched", "empty"):
        count = statuses.count(status)
        if count:
            text.append(f"{count}{STATUS_MARKS[status]} ", style=colours.slot(status))
    idle = statuses.count("idle")
    if idle:
        text.append(f"{idle} idle ", style=colours.slot("idle"))
    counters = state.counters
    text.append(f"{counters.hit_rate * 100:3.0f}%" if counters.accesses else "  – ", style=colours.label)
    room = width - text.cell_len - 1
    if room >= 6 and state.hit_rate_history:
        text.append(" ")
        text.append(sparkline(state.hit_rate_history, room), style=colours.slot("hit"))
    return text


def layer_row(state: LayerState, digits: int, colours: Colours, width: int) -> Text:
    """``L3  4+ 1! ·· | 82% ▃▅▆▇`` with a per-layer sparkline where there is room."""
    text = Text(f"L{state.layer:<3} ", style=colours.label)
    text.append_text(slot_cells(state, digits, colours))
    if len(state.slots) != state.cache_size:
        text.append(f"→k={state.cache_size} ", style=colours.highlight)
    counters = state.counters
    rate = f"{counters.hit_rate * 100:3.0f}%" if counters.accesses else "  – "
    text.append(rate, style=colours.label)
    room = width - text.cell_len - 1
    if room >= 6 and state.hit_rate_history:
        text.append(" ")
        text.append(sparkline(state.hit_rate_history, room), style=colours.slot("hit"))
    return text


class CacheView(SnapshotView):
    """The cache text."""

    def draw(self, snapshot: Snapshot, colours: Colours, width: int, height: int) -> Text:
        """Render the cache table for this width."""
        return render_cache(snapshot, colours, width, height)


class CachePanel(Panel):
    """What sits in each layer's expert slots and how often they are hit."""

    PANEL_ID = "cache"
    TITLE = "Expert cache"

    def compose(self):
        """One cache view."""
        yield CacheView()
