"""Expert activations: a layers x experts heatmap of the last pass's picks and the rolling selection frequency.

Three layouts, chosen by the space the panel has:

* ``detailed`` (big terminals): a row per layer, a 4-character cell per expert coloured by how often the
  expert was picked over the rolling window, with the router weight written in the cells picked by the last
  forward pass;
* ``rows`` (compact glyph mode, 80x24): a row per layer, one character per expert, ``●`` for a current pick
  and a bar glyph ``·▂▃▅▇█`` as high as the rolling frequency (so it reads without colour too);
* ``columns``: the compact mode transposed (a row per expert), for models with more layers than rows;
* ``folded`` (models of 64-256 experts and dozens of layers, on any terminal): like ``rows``, but each cell
  stands for a group of neighbouring experts and, when the layers do not fit either, each row for a group of
  layers. A cell is as hot as the picks per token its experts took over the window (averaged over its
  layers); ``●`` marks a current pick only while rows are single layers (with several, nearly every cell
  would hold one).

Shared experts (used by every token, resident) are named on the first line, apart from the routed ones.
"""

from __future__ import annotations

from rich.style import Style
from rich.text import Text

from moe_tui.telemetry import Snapshot, TraceHeader
from moe_tui.themes import HEAT_LEVELS
from moe_tui.tui.widgets.colours import Colours
from moe_tui.tui.widgets.panel import Panel, SnapshotView
from moe_tui.tui.widgets.text import MANY_LAYERS, fold

SHADES = "·▂▃▅▇█"
PICK = "●"
CELL = 4
LABEL = 4
FRAME_ROWS = 3  # token line, column header, legend
# A folded heatmap fits its layers in the rows its panel has, unless that is fewer than FEWEST_ROWS (a
# stacked dashboard that scrolls): then it draws SCROLLED_ROWS rows of layers.
FEWEST_ROWS, SCROLLED_ROWS = 6, 12


def heat_level(frequency: float) -> int:
    """Heat level 0 (never picked in the window) .. HEAT_LEVELS-1 (picked for every token)."""
    if frequency <= 0:
        return 0
    return min(HEAT_LEVELS - 1, 1 + int(frequency * (HEAT_LEVELS - 1)))


def choose_layout(header: TraceHeader, width: int, height: int) -> str:
    """``detailed`` when every layer and a weight per expert fit, else ``rows`` (a character per expert; a few
    layers more than the height are left to the dashboard's scrolling) or, when that is too tall, ``columns``
    (transposed); ``folded`` when neither fits."""
    layers, experts = header.num_layers, header.num_experts
    if LABEL + (CELL + 1) * experts <= width and layers + FRAME_ROWS <= height:
        return "detailed"
    if LABEL + experts <= width and (layers + FRAME_ROWS <= height or layers <= MANY_LAYERS):
        return "rows"
    if LABEL + layers <= width and experts + FRAME_ROWS <= height:
        return "columns"
    return "folded"


def token_line(snapshot: Snapshot, colours: Colours) -> Text:
    """The token whose routing the picks show, and the shared experts it also used."""
    line = Text("last token ", style=colours.muted)
    if snapshot.last_token:
        line.append(repr(snapshot.last_token.replace("\n", "⏎")), style=colours.highlight)
    else:
        line.append("(end of answer)" if snapshot.tokens else "–", style=colours.highlight)
    line.append(f"  pass {snapshot.steps}", style=colours.muted)
    shared = snapshot.header.shared_experts
    if shared:
        line.append(f"  +{shared} shared", style=colours.label)
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
    elif layout == "columns":
        _columns(snapshot, colours, text, _spacing(width, snapshot.header.num_layers, 2))
    picks = True
    if layout == "folded":
        picks = _folded(snapshot, colours, text, width, height)
    text.append("\n")
    text.append_text(legend(layout, colours, picks))
    return text


def _folded(snapshot: Snapshot, colours: Colours, text: Text, width: int, height: int) -> bool:
    """Groups of experts across, groups of layers down (when needed): every layer and expert inside the panel;
    returns whether current picks are marked (rows of one layer)."""
    header = snapshot.header
    layers, experts = header.num_layers, header.num_experts
    label = len(f"L{layers - 1}-{layers - 1}") + 1
    per_expert = fold(experts, width - label)
    rows = height - FRAME_ROWS - 1
    per_layer = fold(layers, rows if rows >= FEWEST_ROWS else SCROLLED_ROWS)
    cells = -(-experts // per_expert)
    what = f"cell: {per_expert} experts" + (f" x {per_layer} layers" if per_layer > 1 else "")
    text.append(what[:width], style=colours.muted)
    text.append("\n")
    text.append(" " * label)
    text.append(_index_ruler(cells, 1, per_expert), style=colours.label)
    states = snapshot.layers
    palette: dict[tuple[int, bool], tuple[str, Style]] = {}
    for start in range(0, len(states), per_layer):
        group = states[start : start + per_layer]
        first, last = group[0].layer, group[-1].layer
        text.append("\n")
        text.append((f"L{first}" if first == last else f"L{first}-{last}").ljust(label), style=colours.label)
        picked = {e // per_expert for e in group[0].last_experts} if per_layer == 1 else set()
        shares = [0.0] * cells
        for state in group:
            window = state.window_frequency
            for cell in range(cells):
                shares[cell] += sum(window[cell * per_expert : (cell + 1) * per_expert])
        run, run_style = "", None  # glyphs of one style are appended together: a few appends per row
        for cell, share in enumerate(shares):
            key = (heat_level(min(share / len(group), 1.0)), cell in picked)
            if key not in palette:  # a style per heat level, made once per drawing
                palette[key] = _glyph_style(key[0], key[1], colours)
            glyph, style = palette[key]
            if style is not run_style and run:
                text.append(run, style=run_style)
                run = ""
            run, run_style = run + glyph, style
        text.append(run, style=run_style)
    return per_layer == 1


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
    return Text(*_glyph_style(heat_level(frequency), picked, colours))


def _glyph_style(level: int, picked: bool, colours: Colours) -> tuple[str, Style]:
    """A cell's character and style: ``●`` for a current pick, else a bar as high as its heat ``level``."""
    if picked:
        return PICK, colours.heat_cell(level, bold=True)
    return SHADES[level], colours.heat_fg(level)


def _frequency(window: tuple[float, ...], expert: int) -> float:
    return window[expert] if expert < len(window) else 0.0


def _index_ruler(count: int, spacing: int = 1, step: int = 1) -> str:
    """Indices over ``count`` cells ``spacing`` wide, cell ``i`` labelled ``i * step`` (its first expert when
    folded): every label where they fit, else every 2nd, 5th, 10th or 20th."""
    digits = len(str((count - 1) * step))
    every = 1 if digits == 1 or digits < spacing else next(n for n in (2, 5, 10, 20) if n * spacing > digits)
    ruler = [" "] * (count * spacing)
    for index in range(0, count, every):
        label = str(index * step)
        if index * spacing + len(label) > len(ruler):  # no label cut short at the right edge
            break
        for offset, digit in enumerate(label):
            ruler[index * spacing + offset] = digit
    return "".join(ruler)


def legend(layout: str, colours: Colours, picks: bool = True) -> Text:
    """What the cells mean, with the heat ramp itself as the key (``picks``: whether current picks are marked)."""
    text = Text()
    if layout == "detailed":
        text.append("0.62", style=colours.heat_cell(HEAT_LEVELS - 2, bold=True))
        text.append(" router weight now  ", style=colours.muted)
    elif not picks:
        text.append("picks/token ", style=colours.muted)
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
