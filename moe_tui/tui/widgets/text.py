"""Small text helpers shared by the panels: bars, sparklines, percentages, rates."""

from __future__ import annotations

from moe_tui.precision import format_bytes

SPARK = "▁▂▃▄▅▆▇█"
BAR_FULL = "█"
BAR_EMPTY = "░"


def sparkline(values: tuple[float, ...] | list[float], width: int, low: float = 0.0, high: float = 1.0) -> str:
    """The last ``width`` values as block glyphs on a fixed scale (so hit rates compare across layers)."""
    if width <= 0 or not values:
        return ""
    span = high - low or 1.0
    glyphs = []
    for value in list(values)[-width:]:
        share = min(max((value - low) / span, 0.0), 1.0)
        glyphs.append(SPARK[min(len(SPARK) - 1, int(share * len(SPARK)))])
    return "".join(glyphs)


def bar(fraction: float | None, width: int) -> str:
    """A horizontal bar ``width`` cells wide filled to ``fraction`` (blank-filled when unknown)."""
    if width <= 0:
        return ""
    if fraction is None:
        return BAR_EMPTY * width
    filled = round(min(max(fraction, 0.0), 1.0) * width)
    return BAR_FULL * filled + BAR_EMPTY * (width - filled)


def percent(value: float | None) -> str:
    """A share as ``73%`` (``N/A`` when unknown)."""
    return "N/A" if value is None else f"{value * 100:.0f}%"


def size(value: float | None) -> str:
    """Bytes in binary units (``N/A`` when unknown)."""
    return "N/A" if value is None else format_bytes(value)


def rate(value: float | None) -> str:
    """Bytes per second (``N/A`` when unknown)."""
    return "N/A" if value is None else f"{format_bytes(value)}/s"


# Up to this many layers a panel lists every one (the dashboard scrolls); beyond it, panels fold or pick layers
# to stay inside their height (48-61 layers of today's large MoE models).
MANY_LAYERS = 16


def fold(count: int, room: int) -> int:
    """How many items one cell stands for so that ``count`` items fit in ``room`` cells (1 when they fit)."""
    return max(1, -(-count // max(room, 1)))
