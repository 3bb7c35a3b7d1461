"""Theme files become Textual themes that read on 256-colour terminals; the settings file round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.color import Color as RichColor
from rich.color import ColorSystem

from moe_tui import config, themes
from moe_tui.errors import UserError

THEME_NAMES = {"moe-dark", "moe-light", "moe-contrast"}


def _index_256(colour: str) -> int:
    downgraded = RichColor.parse(colour).downgrade(ColorSystem.EIGHT_BIT)
    return downgraded.number if downgraded.number is not None else -1


def test_bundled_themes_load() -> None:
    loaded = themes.load_themes()
    assert set(loaded) >= THEME_NAMES
    assert loaded["moe-light"].dark is False
    for theme in loaded.values():
        assert set(themes.DEFAULT_VARIABLES) <= set(theme.variables)


@pytest.mark.parametrize("name", sorted(THEME_NAMES))
def test_heat_ramp_and_statuses_stay_distinct_in_256_colours(name: str) -> None:
    theme = themes.load_themes()[name]
    ramp = [theme.variables[themes.heat_variable(level)] for level in range(themes.HEAT_LEVELS)]
    statuses = [theme.variables[f"status-{status}"] for status in themes.STATUSES]
    assert len({_index_256(colour) for colour in ramp}) == themes.HEAT_LEVELS
    assert len({_index_256(colour) for colour in statuses}) == len(statuses)
    for colour in [*ramp, *statuses, theme.background, theme.foreground]:
        rgb = RichColor.parse(colour).get_truecolor()
        shown = RichColor.from_ansi(_index_256(colour)).get_truecolor()
        drift = max(abs(a - b) for a, b in zip(rgb, shown, strict=True))
        assert drift <= 10, f"{colour} in {name} changes by {drift} on a 256-colour terminal"


@pytest.mark.parametrize("name", sorted(THEME_NAMES))
def test_heat_ramp_grows_in_contrast_with_the_background(name: str) -> None:
    from textual.color import Color

    theme = themes.load_themes()[name]
    background = Color.parse(theme.background)
    ramp = [Color.parse(theme.variables[themes.heat_variable(level)]) for level in range(themes.HEAT_LEVELS)]
    distances = [abs(colour.brightness - background.brightness) for colour in ramp]
    assert distances == sorted(distances), f"{name}: heat levels must move steadily away from the background"


def test_bad_theme_files_name_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\nprimary = "#123456"\n[heatmap]\nramp = ["#000000"]\n')
    with pytest.raises(UserError, match="ramp must list 6"):
        themes.load_theme(path)
    path.write_text('name = "x"\nprimary = "not-a-colour"\n')
    with pytest.raises(UserError, match="not a colour"):
        themes.load_theme(path)
    path.write_text("name = [")
    with pytest.raises(UserError, match="not valid TOML"):
        themes.load_theme(path)
    with pytest.raises(UserError, match="no theme files"):
        themes.load_themes(tmp_path / "empty")


def test_settings_round_trip(tmp_path: Path) -> None:
    settings = config.Settings(
        theme="moe-light",
        panel_order=("cache", "heatmap"),
        hidden_panels=("params",),
        generation={"temperature": 0.2, "top_p": 1.0, "max_new_tokens": 64, "system_prompt": 'say "hi"\n'},
        engine={"cache_size": [3, 2, 2], "expert_bits": 4, "quant_optimize": False, "store": "mmap"},
        keymap={"chat.stop": "ctrl+x", "app.help": "f1,question_mark"},
    )
    path = tmp_path / "settings.toml"
    config.save_settings(settings, path)
    loaded, warning = config.load_settings(path)
    assert warning == ""
    assert loaded == settings


def test_missing_settings_give_defaults_without_a_warning(tmp_path: Path) -> None:
    assert config.load_settings(tmp_path / "none.toml") == (config.Settings(), "")


def test_default_path_is_under_the_user_config_dir() -> None:
    config.save_settings(config.Settings(theme="moe-contrast"))
    assert config.load_settings()[0].theme == "moe-contrast"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("theme = [", "not valid TOML"),
        ("theme = 3", "line 1: theme must be a string"),
        (
            "[generation]\nmax_new_tokens = 'many'",
            "line 2: generation.max_new_tokens must be a whole number from 1 to 1000000 (using the model's or the "
            "default)",
        ),
        ("[layout]\norder = 'cache'", "line 2: layout.order must be a list of panel names"),
        ("[keymap]\n'chat.stop' = 3", "line 2: keymap.chat.stop must be a string of keys"),
    ],
)
def test_broken_settings_fall_back_to_defaults_with_a_warning(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    settings, warning = config.load_settings(path)
    assert settings == config.Settings()
    assert fragment in warning and "using the defaults" in warning and str(path) in warning
    assert path.read_text() == text  # loading never touches the file


def test_only_the_broken_values_fall_back_and_a_save_keeps_the_users_file(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    text = (
        'theme = "moe-light"\n[generation]\ntemperature = 7\ntop_p = 0.5\ntemprature = 0.2\n'
        '[keymap]\n"chat.stop" = "ctrl+x"\n'
    )
    path.write_text(text)
    settings, warning = config.load_settings(path)
    assert settings.theme == "moe-light" and settings.keymap == {"chat.stop": "ctrl+x"}
    # temperature is left to the model; top_p is the user's
    assert (settings.generation.get("temperature"), settings.generation.get("top_p")) == (None, 0.5)
    assert "line 3: generation.temperature must be a number from 0 to 2 (using the model's or the default)" in warning
    assert "line 5: unknown setting generation.temprature (ignored)" in warning
    assert warning.count("\n") == 0
    kept = config.save_settings(settings, path)
    assert kept is not None and kept.name.startswith("settings.toml.broken-") and kept.read_text() == text
    assert config.load_settings(path) == (settings, "")
    assert config.save_settings(settings, path) is None  # a clean file is not copied again
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["settings.toml", kept.name])


def test_engine_settings_are_checked_by_the_engines_own_rules(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text("[engine]\nexpert_bits = 4\ncache_size = 0\nprefetch = 1\nsize = 3\n")
    settings, warning = config.load_settings(path)
    assert settings.engine == {"expert_bits": 4, "prefetch": 1}
    assert "line 3: engine.cache_size: cache size must be a whole number >= 1" in warning
    assert "line 5: unknown setting engine.size (ignored)" in warning


def test_a_settings_write_on_a_full_disk_leaves_the_file_as_it_was_and_nothing_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failed write used to leave an empty settings.toml.tmp beside the settings."""
    import errno
    import os

    path = tmp_path / "settings.toml"
    config.save_settings(config.Settings(theme="moe-light"), path)
    before = path.read_bytes()

    def disk_full(descriptor: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        config.save_settings(config.Settings(theme="moe-dark"), path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["settings.toml"]
