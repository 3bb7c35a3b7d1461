"""The colours panels draw with, read from the current theme's variables (never named in a panel)."""

from __future__ import annotations

from dataclasses import dataclass

from rich.style import Style
from textual.color import Color

from moe_tui.themes import DEFAULT_VARIABLES, HEAT_LEVELS, STATUSES, heat_variable

# How each cache-slot status is marked, so that no fact depends on colour alone.
STATUS_MARKS = {"hit": "+", "miss": "!", "prefetch": "^", "prefetched": "~", "idle": " ", "empty": "·"}
STATUS_VARIABLE = {"hit": "hit", "miss": "miss", "prefetch": "prefetch", "prefetched": "wasted", "idle": "idle"}


@dataclass(frozen=True)
class Colours:
    """Rich styles for heat levels and slot statuses, derived from one theme's variables."""

    heat: tuple[Color, ...]
    status: dict[str, Color]
    foreground: Color
    accent: Color

    @classmethod
    def from_variables(cls, variables: dict[str, str]) -> Colours:
        """Read the heat ramp and status colours (falling back to the defaults for foreign themes)."""

        def colour(name: str) -> Color:
            return Color.parse(variables.get(name) or DEFAULT_VARIABLES.get(name, "#808080"))

        return cls(
            heat=tuple(colour(heat_variable(level)) for level in range(HEAT_LEVELS)),
            status={name: colour(f"status-{name}") for name in STATUSES},
            foreground=_solid(variables.get("foreground", "#d0d0d0")),
            accent=_solid(variables.get("accent", "#ffaf00")),
        )

    def heat_fg(self, level: int) -> Style:
        """Text drawn in heat colour ``level`` (for glyphs on the panel background)."""
        return Style(color=self.heat[level].rich_color)

    def heat_cell(self, level: int, bold: bool = False) -> Style:
        """A cell filled with heat colour ``level`` and text that stays readable on it."""
        background = self.heat[level]
        text = Color(0, 0, 0) if background.brightness > 0.5 else Color(255, 255, 255)
        return Style(color=text.rich_color, bgcolor=background.rich_color, bold=bold)

    def slot(self, status: str) -> Style:
        """The style of a cache slot with this status (hit, miss, prefetch, prefetched, idle, empty)."""
        if status == "empty":
            return self.muted
        return Style(color=self.status[STATUS_VARIABLE.get(status, "idle")].rich_color, bold=status != "idle")

    @property
    def muted(self) -> Style:
        """Secondary text."""
        return Style(color=self.status["idle"].rich_color)

    @property
    def label(self) -> Style:
        """Row and column labels."""
        return Style(color=self.foreground.rich_color, bold=True)

    @property
    def highlight(self) -> Style:
        """A value to notice (the current token, an overall figure)."""
        return Style(color=self.accent.rich_color, bold=True)


def _solid(value: str) -> Color:
    try:
        return Color.parse(value).with_alpha(1.0)
    except Exception:
        return Color(208, 208, 208)


_last: tuple[int, Colours] | None = None


def colours_for(variables: dict[str, str]) -> Colours:
    """Colours for a theme's variables; rebuilt only when the app hands over a new variables dict (new theme)."""
    global _last
    if _last is None or _last[0] != id(variables):
        _last = (id(variables), Colours.from_variables(variables))
    return _last[1]
