"""Expert cache: each layer's k slots in eviction order, how the last pass used them, and hit rates over time.

A slot is drawn as the expert id and a mark (``+`` hit, ``!`` miss: loaded, ``^`` hit thanks to a prefetch,
``~`` prefetched but not used, ``·`` empty), coloured by the same status, the next victim leftmost.
"""

from __future__ import annotations

from rich.text import Text

from moe_tui.telemetry import LayerState, Snapshot
from moe_tui.tui.widgets.colours import STATUS_MARKS, Colours
from moe_tui.tui.widgets.panel import Panel, SnapshotView
from moe_tui.tui.widgets.text import sparkline

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
    """The panel: a summary line, one row per layer, a legend."""
    header = snapshot.header
    digits = len(str(header.num_experts - 1))
    text = summary_line(snapshot, colours, width)
    text.append("\n")
    text.append("     next out → newest", style=colours.muted)
    for state in snapshot.layers:
        text.append("\n")
        text.append_text(layer_row(state, digits, colours, width))
    text.append("\n")
    for status, label in LEGEND:
        text.append(STATUS_MARKS[status], style=colours.slot(status))
        text.append(f"{label} ", style=colours.muted)
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
