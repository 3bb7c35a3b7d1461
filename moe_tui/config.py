"""The user's settings file: remembered theme, panel layout, generation and engine settings, key overrides.

It lives at ``moe_tui.paths.user_config_dir() / "settings.toml"``::

    theme = "moe-dark"
    recent_models = ["/models/Mixtral-8x7B-Instruct-v0.1"]   # directories loaded before (the model picker)

    [layout]
    order = ["heatmap", "cache", "prefetch", "memory", "params"]
    hidden = ["params"]

    [generation]        # only the values you chose; the others follow the model's generation_config.json
    temperature = 0.2
    thinking = false

    [engine]            # defaults for `chat` and `ask` (OffloadConfig's field names); their flags win
    expert_bits = 4
    cache_size = 3

    [keymap]            # binding id = key(s), comma separated; ids are listed on the help screen (F1)
    "chat.stop" = "ctrl+x"

A file that cannot be read never stops the app and is never lost: :func:`load_settings` keeps every value
it can read, uses the default for each broken one (wrong type, out of range, unknown key, or the whole file
when it is not valid TOML) and returns a warning naming the file, the line and the key. The file itself is
left as it is until the app saves settings again, and :func:`save_settings` first copies a broken file to
``settings.toml.broken-<time>`` beside it. Only this module writes the file, and the app writes it through
:func:`update_settings`: what it changed, over the file as it is at that moment, so that a hand edit made while
the app runs, or another moe-tui's change, is not overwritten by what the app read at its start.
"""

from __future__ import annotations

import datetime
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from moe_tui.chat.generation import check_choices
from moe_tui.engine_config import check_saved_choices
from moe_tui.paths import user_config_dir, write_whole

SETTINGS_FILE = "settings.toml"


@dataclass(frozen=True)
class Settings:
    """Everything the app remembers between runs."""

    theme: str = ""
    panel_order: tuple[str, ...] = ()
    hidden_panels: tuple[str, ...] = ()
    # The generation settings the user chose, by GenerationSettings field name; the others follow the model's
    # generation_config.json or moe-tui's default (see moe_tui.chat.defaults).
    generation: dict[str, Any] = field(default_factory=dict)
    # Engine settings for chat and ask when no flag gives them, by OffloadConfig field name (see SAVED_FIELDS).
    engine: dict[str, Any] = field(default_factory=dict)
    keymap: dict[str, str] = field(default_factory=dict)
    recent_models: tuple[str, ...] = ()  # model directories loaded before, newest first


def settings_path() -> Path:
    """Where the settings file lives."""
    return user_config_dir() / SETTINGS_FILE


def load_settings(path: Path | None = None) -> tuple[Settings, str]:
    """The saved settings and a one-line warning ("" when the file is fine or missing; see the module docstring)."""
    path = path or settings_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Settings(), ""
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        return Settings(), f"settings file {path} cannot be read ({reason}); using the defaults"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        return Settings(), f"settings file {path} is not valid TOML ({error}); using the defaults, the file is kept"
    problems: list[str] = []
    settings = _from_dict(data, _Locator(text), problems)
    if not problems:
        return settings, ""
    return settings, f"settings file {path}: {'; '.join(problems)}; using the defaults for these, the file is kept"


class _Locator:
    """Finds the line of ``key`` in ``[table]`` of a TOML text (for messages)."""

    def __init__(self, text: str):
        self.lines = text.splitlines()

    def line(self, table: str, key: str) -> str:
        """``"line N: "`` for the first ``key =`` inside ``[table]`` ("" for the top level), or "" if absent."""
        current = ""
        for number, line in enumerate(self.lines, start=1):
            header = re.match(r"^\s*\[([^\]]+)\]", line)
            if header:
                current = header.group(1).strip()
            elif current == table and re.match(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=", line):
                return f"line {number}: "
        return ""


_TABLES = ("layout", "generation", "engine", "keymap")
_TOP_KEYS = ("theme", "recent_models", *_TABLES)
RECENT_MODELS = 10


def _from_dict(data: dict[str, Any], where: _Locator, problems: list[str]) -> Settings:
    """Settings from parsed TOML, each broken value replaced by its default and described in ``problems``."""
    for key in data:
        if key not in _TOP_KEYS:
            problems.append(f"{where.line('', key)}unknown setting {key!r} (ignored)")
    theme = data.get("theme", "")
    if not isinstance(theme, str):
        problems.append(f"{where.line('', 'theme')}theme must be a string")
        theme = ""
    tables = {}
    for name in _TABLES:
        table = data.get(name, {})
        if not isinstance(table, dict):
            problems.append(f"{where.line('', name)}{name} must be a table ([{name}])")
            table = {}
        tables[name] = table
    layout = tables["layout"]
    for key in layout:
        if key not in ("order", "hidden"):
            problems.append(f"{where.line('layout', key)}unknown setting layout.{key} (ignored)")
    keymap = {}
    for key, value in tables["keymap"].items():
        if isinstance(value, str):
            keymap[str(key)] = value
        else:
            problems.append(f"{where.line('keymap', key)}keymap.{key} must be a string of keys")
    return Settings(
        theme=theme,
        panel_order=_names(layout, "order", where, problems),
        hidden_panels=_names(layout, "hidden", where, problems),
        generation=_checked("generation", tables["generation"], where, problems),
        engine=_checked("engine", tables["engine"], where, problems),
        keymap=keymap,
        recent_models=_recent(data.get("recent_models", []), where, problems),
    )


def _recent(value: Any, where: _Locator, problems: list[str]) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        problems.append(f"{where.line('', 'recent_models')}recent_models must be a list of model directories")
        return ()
    return tuple(value[:RECENT_MODELS])


def _names(layout: dict[str, Any], key: str, where: _Locator, problems: list[str]) -> tuple[str, ...]:
    value = layout.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        problems.append(f"{where.line('layout', key)}layout.{key} must be a list of panel names")
        return ()
    return tuple(value)


# Each checked table: the check of its values, how a refusal joins the setting's name, and what is used instead.
_TABLE_CHECKS = {
    "generation": (check_choices, " ", "using the model's or the default"),
    "engine": (check_saved_choices, ": ", "using the default"),
}


def _checked(name: str, table: dict[str, Any], where: _Locator, problems: list[str]) -> dict[str, Any]:
    check, joiner, instead = _TABLE_CHECKS[name]
    chosen, refused = check(table)
    for key, why in refused.items():
        if why == "unknown setting":
            problems.append(f"{where.line(name, key)}unknown setting {name}.{key} (ignored)")
        else:
            problems.append(f"{where.line(name, key)}{name}.{key}{joiner}{why} ({instead})")
    return chosen


def apply_changes(settings: Settings, changes: dict[str, Any]) -> Settings:
    """``settings`` with ``changes`` (by Settings field name) applied; a change may be a function of the field's
    value there (as :func:`with_recent_model` is), so that a list is added to rather than replaced."""
    resolved = {
        name: change(getattr(settings, name)) if callable(change) else change for name, change in changes.items()
    }
    return replace(settings, **resolved)


def with_recent_model(directory: str) -> Callable[[tuple[str, ...]], tuple[str, ...]]:
    """A change of ``recent_models`` that puts ``directory`` first (moved there if listed), keeping the others in
    order up to :data:`RECENT_MODELS`."""
    return lambda names: (directory, *(name for name in names if name != directory))[:RECENT_MODELS]


def update_settings(changes: dict[str, Any], path: Path | None = None) -> tuple[Settings, Path | None]:
    """Apply ``changes`` (see :func:`apply_changes`) to the settings file as it is now and write it atomically;
    every value it holds that is not changed stays, whoever wrote it. Returns the settings written and the copy
    of a broken file kept beside it (see :func:`save_settings`); raises OSError when the file cannot be
    written."""
    path = path or settings_path()
    current, warning = load_settings(path)
    updated = apply_changes(current, changes)
    return updated, _write(updated, path, broken=path.is_file() and bool(warning))


def save_settings(settings: Settings, path: Path | None = None) -> Path | None:
    """Write the settings atomically (a crash mid-write leaves the old file); raises OSError on failure.

    A file on disk that does not load cleanly is first copied to ``<name>.broken-<time>`` beside it, so a hand
    edit gone wrong is never lost; returns that copy's path (None when there was nothing to keep).
    """
    path = path or settings_path()
    return _write(settings, path, broken=path.is_file() and bool(load_settings(path)[1]))


def _write(settings: Settings, path: Path, broken: bool) -> Path | None:
    """Write ``settings`` to ``path`` atomically, first copying the file there aside when it is ``broken``;
    returns that copy's path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = None
    if broken:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        kept = path.with_name(f"{path.name}.broken-{stamp}")
        counter = 1
        while kept.exists():
            counter += 1
            kept = path.with_name(f"{path.name}.broken-{stamp}-{counter}")
        shutil.copy2(path, kept)
    write_whole(path, to_toml(settings), ".tmp")  # a full disk leaves no half-written file beside the settings
    return kept


def to_toml(settings: Settings) -> str:
    """The settings as TOML text (only strings, numbers and lists of strings, so a tiny writer suffices)."""
    generation = settings.generation
    lines = [
        "# moe-tui settings; written by the app, safe to edit. Key ids: press F1 in the app.",
        f"theme = {_quote(settings.theme)}",
        f"recent_models = [{', '.join(_quote(name) for name in settings.recent_models)}]",
        "",
        "[layout]",
        f"order = [{', '.join(_quote(name) for name in settings.panel_order)}]",
        f"hidden = [{', '.join(_quote(name) for name in settings.hidden_panels)}]",
        "",
        "[generation]  # only what you chose; the rest follows the model's generation_config.json",
        *(f"{key} = {_toml_value(value)}" for key, value in generation.items()),
        "",
        "[engine]  # defaults for chat and ask (cache_size, expert_bits, prefetch, ...); their flags win",
        *(f"{key} = {_toml_value(value)}" for key, value in settings.engine.items()),
        "",
        "[keymap]",
        *(f"{_quote(key)} = {_quote(value)}" for key, value in sorted(settings.keymap.items())),
    ]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    """A generation or engine setting as TOML: a boolean, a number, a string or a list of whole numbers."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return _quote(value)


def _quote(text: str) -> str:
    """A TOML basic string (JSON's escapes are a subset of TOML's)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")
