"""The user's settings file: remembered theme, panel layout, generation settings and key overrides.

It lives at ``moe_tui.paths.user_config_dir() / "settings.toml"``::

    theme = "moe-dark"

    [layout]
    order = ["heatmap", "cache", "prefetch", "memory", "params"]
    hidden = ["params"]

    [generation]
    temperature = 0.7
    top_p = 0.9
    max_new_tokens = 256
    system_prompt = ""

    [keymap]            # binding id = key(s), comma separated; ids are listed on the help screen (F1)
    "chat.stop" = "ctrl+x"

A file that cannot be read never stops the app: :func:`load_settings` returns the defaults plus a one-line
warning to show in the app. Only this module writes the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from moe_tui.paths import user_config_dir

SETTINGS_FILE = "settings.toml"


@dataclass(frozen=True)
class GenerationDefaults:
    """The generation settings the app starts with (mirrors the chat package's GenerationSettings)."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256
    system_prompt: str = ""


@dataclass(frozen=True)
class Settings:
    """Everything the app remembers between runs."""

    theme: str = ""
    panel_order: tuple[str, ...] = ()
    hidden_panels: tuple[str, ...] = ()
    generation: GenerationDefaults = GenerationDefaults()
    keymap: dict[str, str] = field(default_factory=dict)


def settings_path() -> Path:
    """Where the settings file lives."""
    return user_config_dir() / SETTINGS_FILE


def load_settings(path: Path | None = None) -> tuple[Settings, str]:
    """The saved settings and a warning ("" when none); a missing file gives the defaults silently."""
    path = path or settings_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Settings(), ""
    except (OSError, UnicodeDecodeError) as error:
        return Settings(), f"settings file {path} unreadable ({error}); using defaults"
    try:
        return _from_dict(tomllib.loads(text)), ""
    except tomllib.TOMLDecodeError as error:
        return Settings(), f"settings file {path} is not valid TOML ({error}); using defaults"
    except (TypeError, ValueError) as error:
        return Settings(), f"settings file {path}: {error}; using defaults"


def _from_dict(data: dict[str, Any]) -> Settings:
    theme = data.get("theme", "")
    if not isinstance(theme, str):
        raise ValueError("theme must be a string")
    layout = data.get("layout", {})
    generation = data.get("generation", {})
    keymap = data.get("keymap", {})
    if not all(isinstance(table, dict) for table in (layout, generation, keymap)):
        raise ValueError("layout, generation and keymap must be tables")
    return Settings(
        theme=theme,
        panel_order=_names(layout.get("order", []), "layout.order"),
        hidden_panels=_names(layout.get("hidden", []), "layout.hidden"),
        generation=_generation(generation),
        keymap={str(key): _string(value, f"keymap.{key}") for key, value in keymap.items()},
    )


def _names(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{what} must be a list of panel names")
    return tuple(value)


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string")
    return value


def _generation(table: dict[str, Any]) -> GenerationDefaults:
    defaults = GenerationDefaults()
    values: dict[str, Any] = {}
    for item in fields(GenerationDefaults):
        if item.name not in table:
            continue
        value = table[item.name]
        expected = type(getattr(defaults, item.name))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not expected:
            raise ValueError(f"generation.{item.name} must be a {expected.__name__}")
        values[item.name] = value
    return replace(defaults, **values)


def save_settings(settings: Settings, path: Path | None = None) -> None:
    """Write the settings atomically (a crash mid-write leaves the old file); raises OSError on failure."""
    path = path or settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(to_toml(settings), encoding="utf-8")
    os.replace(temporary, path)


def to_toml(settings: Settings) -> str:
    """The settings as TOML text (only strings, numbers and lists of strings, so a tiny writer suffices)."""
    generation = settings.generation
    lines = [
        "# moe-tui settings; written by the app, safe to edit. Key ids: press F1 in the app.",
        f"theme = {_quote(settings.theme)}",
        "",
        "[layout]",
        f"order = [{', '.join(_quote(name) for name in settings.panel_order)}]",
        f"hidden = [{', '.join(_quote(name) for name in settings.hidden_panels)}]",
        "",
        "[generation]",
        f"temperature = {float(generation.temperature)!r}",
        f"top_p = {float(generation.top_p)!r}",
        f"max_new_tokens = {int(generation.max_new_tokens)}",
        f"system_prompt = {_quote(generation.system_prompt)}",
        "",
        "[keymap]",
        *(f"{_quote(key)} = {_quote(value)}" for key, value in sorted(settings.keymap.items())),
    ]
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    """A TOML basic string (JSON's escapes are a subset of TOML's)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")
