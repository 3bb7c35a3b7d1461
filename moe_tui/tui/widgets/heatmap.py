"""Expert activations: a layers x experts heatmap of the last pass's picks and the rolling selection frequency.

Three layouts, chosen by the space the panel has:

* ``detailed`` (big terminals): a row per layer, a 4-character cell per expert coloured by how often the
  expert was picked over the rolling window, with the router weight written in the cells picked by the last
  forward pass;
* ``rows`` (compact glyph mode, 80x24): a row per layer, one character per expert, ``●`` for a current pick
  and a bar glyph ``·▂▃▅▇█`` as high as the rolling frequency (so it reads without colour too);
* ``columns``: the compact mode transposed (a row per expert), for models with more layers than rows.
"""

from __future__ import annotations

from rich.text import Text

from moe_tui.telemetry import Snapshot, TraceHeader
from moe_tui.themes import HEAT_LEVELS
from moe_tui.tui.widgets.colours import Colours
from moe_tui.tui.widgets.panel import Panel, SnapshotView

SHADES = "·▂▃▅▇█"
PICK = "●"
CELL = 4
LABEL = 4
FRAME_ROWS = 3  # token line, column header, legend


def heat_level(frequency: float) -> int:
    """Heat level 0 (never picked in the window) .. HEAT_LEVELS-1 (picked for every token)."""
    if frequency <= 0:
        return 0
    return min(HEAT_LEVELS - 1, 1 + int(frequency * (HEAT_LEVELS - 1)))


def choose_layout(header: TraceHeader, width: int, height: int) -> str:
    """``detailed`` when every layer and a weight per expert fit, else ``rows`` or, if that is too tall,
    ``columns``."""
    layers, experts = header.num_layers, header.num_experts
    if LABEL + (CELL + 1) * experts <= width and layers + FRAME_ROWS <= height:
        return "detailed"
    if layers + FRAME_ROWS <= height or LABEL + layers > width or experts + FRAME_ROWS > height:
        return "rows"
    return "columns"


def token_line(snapshot: Snapshot, colours: Colours) -> Text:
    """The token whose routing the picks show."""
    line = Text("last token ", style=colours.muted)
    if snapshot.last_token:
        line.append(repr(snapshot.last_token.replace("\n", "⏎")), style=colours.highlight)
    else:
        line.append("(end of answer)" if snapshot.tokens else "–", style=colours.highlight)
    line.append(f"  pass {snapshot.steps}", style=colours.muted)
    return line


def render_heatmap(snapshot: Snapshot, colours: Colours, width: int, height: int) -> Text:
    """The whole panel as text for a ``width`` x ``height`` area."""
    layout = choose_layout(snapshot.header, width, height)
    text = token_line(snapshot, colours)
    text.append("\n")
    if layout == "detailed":
        _detailed(snapshot, colours, text)
    elif layout == "rows":
        _rows(snapshot, colours, text, _spacing(width, snapshot.header.num_experts, 3))
    else:
        _columns(snapshot, colours, text, _spacing(width, snapshot.header.num_layers, 2))
    text.append("\n")
    text.append_text(legend(layout, colours))
    return text


def _detailed(snapshot: Snapshot, colours: Colours, text: Text) -> None:
    experts = snapshot.header.num_experts
    text.append(" " * LABEL)
    for expert in range(experts):
        text.append(f"e{expert}".center(CELL) + " ", style=colours.label)
    for state in snapshot.layers:
        text.append("\n")
        text.append(f"L{state.layer:<{LABEL - 1}}", style=colours.label)
        weights = dict(zip(state.last_experts, state.last_weights, strict=True))
        for expert in range(experts):
            level = heat_level(_frequency(state.window_frequency, expert))
            if expert in weights:
                cell = f"{weights[expert]:.2f}"[:CELL].rjust(CELL)
                text.append(cell, style=colours.heat_cell(level, bold=True))
            else:
                text.append(" " * CELL, style=colours.heat_cell(level))
            text.append(" ")


def _spacing(width: int, cells: int, widest: int) -> int:
    """Columns per cell in the compact modes: spread the glyphs out when there is room (at most ``widest``)."""
    return max(1, min(widest, (width - LABEL) // max(cells, 1)))


def _rows(snapshot: Snapshot, colours: Colours, text: Text, spacing: int) -> None:
    experts = snapshot.header.num_experts
    text.append(" " * LABEL)
    text.append(_index_ruler(experts, spacing), style=colours.label)
    for state in snapshot.layers:
        text.append("\n")
        text.append(f"L{state.layer:<{LABEL - 1}}", style=colours.label)
        picked = set(state.last_experts)
        for expert in range(experts):
            text.append_text(_glyph(_frequency(state.window_frequency, expert), expert in picked, colours))
            text.append(" " * (spacing - 1))


def _columns(snapshot: Snapshot, colours: Colours, text: Text, spacing: int) -> None:
    layers = snapshot.layers
    text.append(" " * LABEL)
    text.append(_index_ruler(len(layers), spacing), style=colours.label)
    for expert in range(snapshot.header.num_experts):
        text.append("\n")
        text.append(f"e{expert:<{LABEL - 1}}", style=colours.label)
        for state in layers:
            picked = expert in state.last_experts
            text.append_text(_glyph(_frequency(state.window_frequency, expert), picked, colours))
            text.append(" " * (spacing - 1))


def _glyph(frequency: float, picked: bool, colours: Colours) -> Text:
    level = heat_level(frequency)
    if picked:
        return Text(PICK, style=colours.heat_cell(level, bold=True))
    return Text(SHADES[level], style=colours.heat_fg(level))


def _frequency(window: tuple[float, ...], expert: int) -> float:
    return window[expert] if expert < len(window) else 0.0


def _index_ruler(count: int, spacing: int = 1) -> str:
    """Column indices over cells ``spacing`` wide: every index where they fit, else every 2nd, 5th or 10th."""
    digits = len(str(count - 1))
    every = 1 if digits == 1 or digits < spacing else next(n for n in (2, 5, 10) if n * spacing > digits)
    ruler = [" "] * (count * spacing)
    for index in range(0, count, every):
        for offset, digit in enumerate(str(index)):
            position = index * spacing + offset
            if position < len(ruler):
                ruler[position] = digit
    return "".join(ruler)


def legend(layout: str, colours: Colours) -> Text:
    """What the cells mean, with the heat ramp itself as the key."""
    text = Text()
    if layout == "detailed":
        text.append("0.62", style=colours.heat_cell(HEAT_LEVELS - 2, bold=True))
        text.append(" router weight now  ", style=colours.muted)
    else:
        text.append(PICK, style=colours.heat_cell(HEAT_LEVELS - 2, bold=True))
        text.append(" picked now  ", style=colours.muted)
    text.append("rare ", style=colours.muted)
    for level in range(HEAT_LEVELS):
        if layout == "detailed":
            text.append(" ", style=colours.heat_cell(level))
        else:
            text.append(SHADES[level], style=colours.heat_fg(level))
    text.append(" often", style=colours.muted)
    return text


class HeatmapView(SnapshotView):
    """The heatmap text, laid out for the space the panel has."""

    def draw(self, snapshot: Snapshot, colours: Colours, width: int, height: int) -> Text:
        """Render the heatmap for this size."""
        return render_heatmap(snapshot, colours, width, height)


class HeatmapPanel(Panel):
    """Which experts each layer picks, now and over the last passes."""

    PANEL_ID = "heatmap"
    TITLE = "Experts"

    def compose(self):
        """One heatmap view."""
        yield HeatmapView()
