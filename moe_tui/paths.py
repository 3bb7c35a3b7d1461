"""Where moe-tui finds its bundled files and keeps the user's own (XDG directories via platformdirs)."""

from __future__ import annotations

import contextlib
import os
from importlib.resources import files
from pathlib import Path

import platformdirs

# The samples and themes ship inside the package (``moe_tui/bundled/`` links to the repository's top-level
# ``samples/`` and ``themes/``, and a wheel carries copies), so every kind of install finds them.
BUNDLED = Path(str(files("moe_tui").joinpath("bundled")))
SAMPLES_DIR = BUNDLED / "samples"
CONFIGS_DIR = SAMPLES_DIR / "configs"
TRACES_DIR = SAMPLES_DIR / "traces"
THEMES_DIR = BUNDLED / "themes"
DEMO_MODEL_NAME = "demo-mixtral"  # what the app calls the demo, and a model spec every command accepts for it
DEMO_MODEL_DIR = SAMPLES_DIR / DEMO_MODEL_NAME

APP_NAME = "moe-tui"


def user_data_dir() -> Path:
    """Directory for the chat history database; ``MOE_TUI_DATA_DIR`` overrides it (tests use this)."""
    override = os.environ.get("MOE_TUI_DATA_DIR")
    return Path(override) if override else Path(platformdirs.user_data_dir(APP_NAME))


def user_config_dir() -> Path:
    """Directory for the settings file (theme, keymap); ``MOE_TUI_CONFIG_DIR`` overrides it."""
    override = os.environ.get("MOE_TUI_CONFIG_DIR")
    return Path(override) if override else Path(platformdirs.user_config_dir(APP_NAME))


def user_cache_dir() -> Path:
    """Directory for caches (quantized expert stores); ``MOE_TUI_CACHE_DIR`` overrides it."""
    override = os.environ.get("MOE_TUI_CACHE_DIR")
    return Path(override) if override else Path(platformdirs.user_cache_dir(APP_NAME))


def quant_cache_dir() -> Path:
    """Where quantized expert stores are kept by default, one directory per model and format."""
    return user_cache_dir() / "quantized"


def user_themes_dir() -> Path:
    """Directory for the user's own theme files (``*.toml``, loaded after the bundled ones)."""
    return user_config_dir() / "themes"


def write_whole(path: Path, text: str, temporary_suffix: str) -> None:
    """Write ``text`` to ``path`` whole or not at all: into ``path`` + ``temporary_suffix`` beside it, synced, then
    renamed over ``path``. On an OSError (a full disk) the temporary file is removed and the error raised, and
    a file already at ``path`` is as it was."""
    temporary = path.with_name(path.name + temporary_suffix)
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise
