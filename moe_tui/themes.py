"""Theme files (``themes/*.toml``) turned into Textual :class:`~textual.theme.Theme` objects.

A theme file gives Textual's base colours (``primary``, ``background``, ...) at the top level, a ``[heatmap]``
table with a ``ramp`` of :data:`HEAT_LEVELS` colours from rarely to often selected, and a ``[status]`` table with
one colour per cache-slot status. These become the theme variables ``$heat-0`` .. ``$heat-5`` and
``$status-hit`` etc. that ``app.tcss`` and the panels use, so a panel never names a colour itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from textual.color import Color, ColorParseError
from textual.theme import Theme

from moe_tui.errors import UserError
from moe_tui.paths import THEMES_DIR

HEAT_LEVELS = 6
STATUSES = ("hit", "miss", "prefetch", "wasted", "idle")
BASE_COLOURS = (
    "primary",
    "secondary",
    "accent",
    "warning",
    "error",
    "success",
    "foreground",
    "background",
    "surface",
    "panel",
)
DEFAULT_THEME = "moe-dark"

# Fallbacks so Textual's own built-in themes (also selectable) still define every variable the app uses.
DEFAULT_VARIABLES: dict[str, str] = {
    **{
        f"heat-{level}": colour
        for level, colour in enumerate(("#303030", "#005f87", "#008787", "#00af87", "#87d75f", "#ffff5f"))
    },
    "status-hit": "#5faf5f",
    "status-miss": "#d75f5f",
    "status-prefetch": "#5fafff",
    "status-wasted": "#af87d7",
    "status-idle": "#808080",
}


def heat_variable(level: int) -> str:
    """The theme variable name of heat level ``level`` (0 = never selected .. HEAT_LEVELS-1 = always)."""
    return f"heat-{level}"


def load_theme(path: Path) -> Theme:
    """Read one theme file; a missing field or a bad colour raises :class:`UserError` naming the file."""
    if path.is_dir():
        raise UserError(f"theme {path} is a directory, not a theme file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UserError(f"cannot read theme {path}: {error.strerror or error}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"theme {path} is not valid TOML: {error}") from None
    return theme_from_dict(data, str(path))


def theme_from_dict(data: dict[str, Any], source: str) -> Theme:
    """Build a Theme from a parsed theme file (``source`` names it in error messages)."""
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise UserError(f"theme {source} has no name")
    colours = {key: _colour(data, key, source) for key in BASE_COLOURS if key in data}
    if "primary" not in colours:
        raise UserError(f"theme {source} has no primary colour")
    ramp = data.get("heatmap", {}).get("ramp")
    if not isinstance(ramp, list) or len(ramp) != HEAT_LEVELS:
        raise UserError(f"theme {source}: [heatmap] ramp must list {HEAT_LEVELS} colours, low to high")
    variables = {
        heat_variable(level): _check_colour(value, f"heatmap ramp[{level}]", source) for level, value in enumerate(ramp)
    }
    status = data.get("status", {})
    for key in STATUSES:
        if key not in status:
            raise UserError(f"theme {source}: [status] has no {key} colour")
        variables[f"status-{key}"] = _check_colour(status[key], f"status {key}", source)
    dark = data.get("dark", True)
    if not isinstance(dark, bool):
        raise UserError(f"theme {source}: dark must be true or false")
    return Theme(name=name, dark=dark, variables=variables, **colours)


def _colour(data: dict[str, Any], key: str, source: str) -> str:
    return _check_colour(data[key], key, source)


def _check_colour(value: Any, what: str, source: str) -> str:
    if not isinstance(value, str):
        raise UserError(f'theme {source}: {what} must be a colour string like "#5f87d7"')
    try:
        Color.parse(value)
    except ColorParseError:
        raise UserError(f"theme {source}: {what} = {value!r} is not a colour") from None
    return value


def load_themes(directory: Path = THEMES_DIR) -> dict[str, Theme]:
    """Every ``*.toml`` theme in ``directory``, by theme name, in file-name order."""
    themes: dict[str, Theme] = {}
    for path in sorted(directory.glob("*.toml")):
        theme = load_theme(path)
        themes[theme.name] = theme
    if not themes:
        raise UserError(f"no theme files (*.toml) in {directory}")
    return themes
