"""The dashboard driven like a user would: prompts, streaming, stop, chats, export, settings, themes, k, panels.

The app runs headless (``run_test``) on a fake chat session whose engine runs a real eviction policy over
seeded routing, and a fake system probe, so every check is deterministic and fast.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import threading
import time
from pathlib import Path

import pytest
from textual import events
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Label
from tui_fakes import KV_BYTES_PER_WORD, FakeProbe, FakeSession, header
from tui_helpers import (
    cache_slot_counts,
    main_screen,
    make_app,
    messages,
    palette,
    ready,
    run,
    send,
    type_text,
    wait_for,
)

from moe_tui import config, paths
from moe_tui.chat.history import HistoryStore
from moe_tui.chat.session import GenerationResult
from moe_tui.errors import UserError
from moe_tui.tui import keys
from moe_tui.tui.app import MoeTuiApp
from moe_tui.tui.backend import LaunchOptions, LiveBackend
from moe_tui.tui.palette import main_commands
from moe_tui.tui.screens.dialogs import AskScreen, ConfirmScreen
from moe_tui.tui.screens.error import ErrorScreen
from moe_tui.tui.screens.help import HelpScreen
from moe_tui.tui.screens.loading import LoadingScreen, StageRow
from moe_tui.tui.screens.main import MainScreen, answer_note
from moe_tui.tui.screens.models import ModelPickerScreen
from moe_tui.tui.screens.settings import SettingsScreen
from moe_tui.tui.widgets.chat import ChatView, PromptInput
from moe_tui.tui.widgets.conversations import ConversationList


def test_prompt_streams_an_answer_and_saves_it(tmp_path: Path) -> None:
    app, session = make_app(FakeSession(words=12, delay=0.03))

    async def check(pilot: Pilot) -> None:
        screen = main_screen(app)
        await wait_for(pilot, lambda: app.focused is app.screen.query_one(PromptInput))
        await send(pilot, "what is a cache?")
        await wait_for(pilot, lambda: bool(session.prompts) and not screen.generating)
        await pilot.pause(0.1)
        chat = app.screen.query_one(ChatView)
        assert chat.streamed_pieces == 12, "every piece reaches the chat view"
        assert 2 <= chat.stream_writes <= 12, "pieces are written to the Markdown stream as they come, in batches"
        roles = messages(app)
        assert roles[0] == ("user", "what is a cache?")
        assert roles[1][0] == "assistant" and roles[1][1].startswith("The expert cache keeps")
        assert session.prompts[-1] == [{"role": "user", "content": "what is a cache?"}]
        assert "12 tokens" in str(app.screen.query_one("#chat-status").render())
        store = app.store
        conversation = store.list_conversations()[0]
        saved = store.messages(conversation.id)
        assert [(m.role, m.content) for m in saved] == roles
        assert app.screen.query_one(PromptInput).text == ""

    run(check, app)


def test_enter_makes_a_new_line_and_ctrl_j_sends() -> None:
    app, session = make_app()

    async def check(pilot: Pilot) -> None:
        await type_text(pilot, "one")
        await pilot.press("enter")
        await type_text(pilot, "two")
        assert app.screen.query_one(PromptInput).text == "one\ntwo"
        assert not session.prompts
        await pilot.press("alt+enter")
        await wait_for(pilot, lambda: bool(session.prompts) and not main_screen(app).generating)
        assert session.prompts[0][-1]["content"] == "one\ntwo"

    run(check, app)


def test_keys_arriving_in_one_burst_send_the_whole_prompt() -> None:
    """A terminal delivers typed-ahead or pasted text and ctrl+j together: the send must see every key before it."""
    app, session = make_app()
    text = "Explain the with statement."

    async def check(pilot: Pilot) -> None:
        for char in text:
            app.post_message(events.Key("space" if char == " " else char, char))
        app.post_message(events.Key("ctrl+j", "\n"))
        await wait_for(pilot, lambda: bool(session.prompts) and not main_screen(app).generating)
        assert session.prompts[0][-1]["content"] == text
        assert app.screen.query_one(PromptInput).text == ""

    run(check, app)


def test_stop_ends_the_answer_and_the_app_stays_usable() -> None:
    app, session = make_app(FakeSession(words=500, delay=0.02))

    async def check(pilot: Pilot) -> None:
        screen = main_screen(app)
        await send(pilot, "talk")
        await wait_for(pilot, lambda: app.screen.query_one(ChatView).streamed_pieces >= 3)
        await pilot.press("escape")
        await wait_for(pilot, lambda: not screen.generating)
        await pilot.pause(0.1)
        answer = messages(app)[-1][1]
        assert 0 < len(answer.split()) < 500
        assert "stopped" in str(app.screen.query_one("#chat-status").render())
        session.words = 3
        session.delay = 0.0
        await send(pilot, "again")
        await wait_for(pilot, lambda: len(messages(app)) == 4 and not screen.generating)
        assert session.prompts[-1][-1] == {"role": "user", "content": "again"}
        assert session.prompts[-1][1]["role"] == "assistant", "the stopped answer stays in the conversation"

    run(check, app)


def test_new_chat_conversation_list_and_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    app, session = make_app(FakeSession(words=4))

    async def check(pilot: Pilot) -> None:
        screen = main_screen(app)
        await send(pilot, "first question")
        await wait_for(pilot, lambda: len(messages(app)) == 2 and not screen.generating)
        first = screen.conversation_id
        await pilot.press("ctrl+n")
        await pilot.pause(0.1)
        assert messages(app) == []
        await send(pilot, "second question")
        await wait_for(pilot, lambda: len(messages(app)) == 2 and not screen.generating)
        assert screen.conversation_id != first
        assert session.prompts[-1] == [{"role": "user", "content": "second question"}], "a new chat starts empty"
        await pilot.press("f2")
        listing = app.screen.query_one(ConversationList)
        assert listing.display and listing.option_count == 2
        assert "second question" in str(listing.get_option_at_index(0).prompt)
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: screen.conversation_id == first)
        await pilot.pause(0.1)
        assert messages(app)[0] == ("user", "first question")
        await pilot.press("f5")
        await wait_for(pilot, lambda: isinstance(app.screen, AskScreen))
        assert app.screen.query_one(Input).value == f"{tmp_path}{os.sep}"  # the folder it runs in, to type on
        await type_text(pilot, "notes.md")
        await pilot.press("enter")
        await wait_for(pilot, lambda: (tmp_path / "notes.md").exists())
        exported = (tmp_path / "notes.md").read_text()
        assert "first question" in exported and "## Assistant" in exported
        await pilot.press("f5")
        await wait_for(pilot, lambda: isinstance(app.screen, AskScreen))
        await pilot.press("enter")  # the folder itself: a file named after the chat's title
        await wait_for(pilot, lambda: len(list(tmp_path.iterdir())) == 2)
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        await pilot.press("f5")  # an absolute path typed on from the folder starts over, as in a shell
        await wait_for(pilot, lambda: isinstance(app.screen, AskScreen))
        await type_text(pilot, f"{elsewhere}{os.sep}kept.md")
        await pilot.press("enter")
        await wait_for(pilot, lambda: (elsewhere / "kept.md").exists())

    run(check, app)


def test_generation_settings_are_edited_validated_and_remembered() -> None:
    app, session = make_app()
    seen = []
    original = session.generate

    def spy(messages, settings, on_text, stop_event=None):
        seen.append(settings)
        return original(messages, settings, on_text, stop_event)

    session.generate = spy

    async def check(pilot: Pilot) -> None:
        await pilot.press("f3")
        await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen))
        sources = {field: str(app.screen.query_one(f"#source-{field}").render()) for field in ("temperature", "top_p")}
        assert sources["temperature"].endswith("[model]") and sources["top_p"].endswith("[default]")
        assert app.screen.query_one("#temperature", Input).value == "0.0"  # the model's recommendation
        app.screen.query_one("#temperature", Input).value = "5"
        await pilot.press("ctrl+s")
        assert isinstance(app.screen, SettingsScreen), "a bad value keeps the form open"
        assert "temperature" in str(app.screen.query_one("#settings-error").render())
        app.screen.query_one("#temperature", Input).value = "0"
        app.screen.query_one("#max-new-tokens", Input).value = "32"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, MainScreen))
        await send(pilot, "hi")
        await wait_for(pilot, lambda: bool(seen) and not main_screen(app).generating)
        assert seen[0].temperature == 0 and seen[0].max_new_tokens == 32
        saved = config.load_settings()[0].generation
        assert saved == {"max_new_tokens": 32}  # only what was changed is the user's
        await pilot.press("f3")
        await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen))
        assert str(app.screen.query_one("#source-max_new_tokens").render()).endswith("[yours]")
        await pilot.press("ctrl+d")  # follow the model again
        await wait_for(pilot, lambda: isinstance(app.screen, MainScreen))
        assert main_screen(app).generation.max_new_tokens == 64
        assert config.load_settings()[0].generation == {}

    run(check, app)


def test_theme_switch_is_remembered() -> None:
    app, _ = make_app()

    async def check(pilot: Pilot) -> None:
        assert app.theme == "moe-dark"
        await pilot.press("ctrl+t")
        await pilot.pause(0.1)
        assert app.theme != "moe-dark" and app.theme in app.moe_themes
        chosen = app.theme
        await pilot.pause(0.1)
        assert config.load_settings()[0].theme == chosen

    run(check, app)
    again, _ = make_app()

    async def check_again(pilot: Pilot) -> None:
        assert again.theme == config.load_settings()[0].theme != "moe-dark"

    run(check_again, again)


def write_settings_file(text: str) -> Path:
    """Write ``text`` as the user's settings file (in the test's own config directory); returns its path."""
    path = config.settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_on_an_80x24_terminal_the_forms_scroll_their_error_into_view() -> None:
    """The settings form and Load model's form are taller than 24 rows: a refused value's message, below the
    fold, is scrolled into view rather than left unseen with the form doing nothing."""
    from moe_tui.tui.screens.models import LoadOptionsScreen

    app, _ = make_app()

    def shown(box_id: str, message_id: str) -> bool:
        box, message = app.screen.query_one(box_id), app.screen.query_one(message_id)
        text = str(message.render())
        return bool(text) and box.max_scroll_y > 0 and box.scrollable_content_region.contains_region(message.region)

    async def check(pilot: Pilot) -> None:
        await pilot.press("f3")
        await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen))
        assert not shown("#settings-box", "#settings-error")
        app.screen.query_one("#temperature", Input).value = "x"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: shown("#settings-box", "#settings-error"))
        assert "temperature" in str(app.screen.query_one("#settings-error").render())
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, MainScreen))
        main_screen(app).action_load_model()
        await wait_for(pilot, lambda: isinstance(app.screen, ModelPickerScreen))
        await wait_for(pilot, lambda: 0 in app.screen.reports, timeout=60)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, LoadOptionsScreen))
        app.screen.query_one("#load-k", Input).value = "many"
        await pilot.press("enter")
        await wait_for(pilot, lambda: shown("#load-options-box", "#load-error"))

    run(check, app, size=(80, 24))


def test_a_setting_changed_in_the_app_keeps_what_was_written_to_the_file_since_the_start() -> None:
    """The app saves what it changed over the file as it is now: a hand edit made while it runs (or another
    moe-tui's change) is not replaced by the settings the app read when it started."""
    app, _ = make_app()

    async def check(pilot: Pilot) -> None:
        path = config.settings_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            'recent_models = ["/models/other"]\n\n[engine]\nexpert_bits = 4\n\n[keymap]\n"chat.stop" = "ctrl+x"\n'
        )
        app.set_theme("moe-light")
        await pilot.pause()
        saved, warning = config.load_settings()
        assert warning == "" and saved.theme == "moe-light"
        assert saved.engine == {"expert_bits": 4} and saved.keymap == {"chat.stop": "ctrl+x"}
        assert saved.recent_models == ("/models/other",)
        assert app.settings.theme == "moe-light"

    run(check, app)


def test_a_model_loaded_adds_to_the_recent_models_another_moe_tui_saved_since_the_start() -> None:
    """The picker's recent models were written from this run's list, so a model another moe-tui had added to the
    file in the meantime was dropped; now the loaded model goes in front of the list the file holds."""
    session = FakeSession()
    session.directory = Path("/models/mine")
    app, _ = make_app(session)

    async def check(pilot: Pilot) -> None:
        await wait_for(pilot, lambda: config.load_settings()[0].recent_models == ("/models/mine",))
        config.update_settings({"recent_models": ("/models/other", "/models/mine")})  # the other moe-tui
        app.load_model("/models/mine")
        await wait_for(pilot, lambda: not app.model_loading and ready(app))
        await pilot.pause(0.2)
        assert config.load_settings()[0].recent_models == ("/models/mine", "/models/other")
        assert app.settings.recent_models == ("/models/mine", "/models/other")  # the picker lists both

    run(check, app)


def test_a_settings_file_with_errors_is_left_alone_until_a_setting_changes() -> None:
    """Starting up wrote the start-up theme back at once, so a file with one typo was rewritten (its own text
    moved aside) before the user had touched anything, and the warning that said "the file is kept" was wrong."""
    text = 'theme = 5\n[generation]\ntemperature = "hot"\ntop_p = 0.5\n'
    path = write_settings_file(text)
    app, _ = make_app()

    async def check(pilot: Pilot) -> None:
        await pilot.pause(0.3)
        assert app.theme == "moe-dark" and path.read_text() == text
        assert [entry.name for entry in path.parent.iterdir()] == ["settings.toml"]
        await pilot.press("ctrl+t")  # a choice: now the file is written, the user's version kept beside it
        await wait_for(pilot, lambda: config.load_settings()[0].theme == app.theme != "moe-dark")
        assert [kept.read_text() for kept in path.parent.glob("settings.toml.broken-*")] == [text]

    run(check, app)


def test_theme_from_the_palette_and_from_the_command_line() -> None:
    app, _ = make_app(theme="moe-contrast")

    async def check(pilot: Pilot) -> None:
        assert app.theme == "moe-contrast"
        await pilot.press("ctrl+p")
        await type_text(pilot, "theme moe-light")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.theme == "moe-light")

    run(check, app)


def test_changing_k_from_the_palette_shows_k_slots_per_layer() -> None:
    app, session = make_app(FakeSession(header(layers=4, k=2), words=3))

    async def check(pilot: Pilot) -> None:
        screen = main_screen(app)
        await send(pilot, "warm up")
        await wait_for(pilot, lambda: not screen.generating and screen.backend.snapshot().tokens == 3)
        await wait_for(pilot, lambda: cache_slot_counts(app) == [2, 2, 2, 2])  # drawn at the next poll
        await palette(pilot, "k 3")
        assert session.engine.router.sizes == [3, 3, 3, 3]
        # The engine's memory check hears how much KV cache the conversation already holds.
        assert session.engine.kv_held == session.kv_bytes == 3 * KV_BYTES_PER_WORD
        await send(pilot, "again")
        await wait_for(pilot, lambda: not screen.generating and screen.backend.snapshot().tokens == 6)
        await wait_for(pilot, lambda: cache_slot_counts(app) == [3, 3, 3, 3])
        assert "k=3" in str(app.screen.query_one("#status").render())

    run(check, app)


def test_the_answers_note_separates_the_first_token_from_the_decoding_rate() -> None:
    """The rate is the one after the first token (a long prompt's processing would hide it), as bench reports."""
    note = answer_note(GenerationResult("a b c", tokens=25, seconds=2.5, stopped=False, first_token_s=0.5))
    assert note == "25 tokens in 2.5 s · first 0.50 s · 12.0 tok/s"
    one = answer_note(GenerationResult("a", tokens=1, seconds=0.4, stopped=True, prompt_tokens=9, first_token_s=0.4))
    assert one == "1 token in 0.4 s · first 0.40 s · stopped"
    none = answer_note(GenerationResult("", tokens=0, seconds=0.1, stopped=True, reused_tokens=4, prompt_tokens=9))
    assert none == "0 tokens in 0.1 s · 4 of 9 prompt tokens from the kept cache · stopped"


def test_the_answers_note_says_when_the_earliest_messages_were_left_out_to_fit_the_context() -> None:
    session = FakeSession(words=2)
    session.fits = 3  # a question with one exchange before it
    app, _ = make_app(session)

    async def check(pilot: Pilot) -> None:
        screen = main_screen(app)
        status = screen.query_one("#chat-status")
        notes = []
        for turn, question in enumerate(("first", "second", "third"), start=1):
            await send(pilot, question)
            await wait_for(pilot, lambda turn=turn: len(session.prompts) == turn and not screen.generating)
            await wait_for(pilot, lambda: "tok/s" in str(status.render()))
            notes.append(str(status.render()))
            status.update("")
        assert [len(prompt) for prompt in session.prompts] == [1, 3, 5]
        assert "left out" not in notes[0] and "left out" not in notes[1]
        assert "tok/s · context full, earliest 2 messages left out" in notes[2]

    run(check, app)


def test_k_that_does_not_fit_is_refused_in_the_app() -> None:
    app, session = make_app()

    async def check(pilot: Pilot) -> None:
        await palette(pilot, "k 99")
        await pilot.pause(0.1)
        assert any("out of range" in note.message for note in app._notifications)
        assert session.engine.router.sizes == [2] * 6
        await send(pilot, "still works")
        await wait_for(pilot, lambda: len(messages(app)) == 2 and not main_screen(app).generating)

    run(check, app)


def test_policy_prefetch_and_misses_from_the_palette() -> None:
    app, _ = make_app()

    async def check(pilot: Pilot) -> None:
        await palette(pilot, "policy lfu")
        await palette(pilot, "prefetch off")
        await pilot.pause(0.2)
        header_now = main_screen(app).backend.snapshot().header
        assert (header_now.policy, header_now.prefetch) == ("lfu", 0)
        assert "prefetch off" in str(app.screen.query_one("#status").render())
        await palette(pilot, "misses host")
        await pilot.pause(0.2)
        assert main_screen(app).backend.snapshot().header.miss == "host"
        assert any("misses computed on the host" in note.message for note in app._notifications)

    run(check, app)


def test_panels_hide_move_and_maximise_by_keyboard() -> None:
    app, _ = make_app()

    async def check(pilot: Pilot) -> None:
        screen = main_screen(app)
        order = [panel.PANEL_ID for panel in screen.dashboard.in_order()]
        assert order == ["heatmap", "cache", "prefetch", "memory", "params"]
        await type_text(pilot, "abc")
        await pilot.press("alt+e")  # with the prompt focused: the panel goes, the prompt takes no letter
        assert not screen.panels["heatmap"].display
        await pilot.press("alt+e")
        assert screen.panels["heatmap"].display
        assert app.screen.query_one(PromptInput).text == "abc"
        width = screen.dashboard.region.width
        await pilot.press("alt+h")  # the chat hidden: the panels take its room
        await wait_for(pilot, lambda: not screen.chat.display and screen.dashboard.region.width == app.size.width)
        await pilot.press("alt+h")
        await wait_for(pilot, lambda: screen.chat.display and screen.dashboard.region.width == width)
        screen.panels["cache"].focus()
        await pilot.press("left_square_bracket")
        assert [panel.PANEL_ID for panel in screen.dashboard.in_order()][:2] == ["cache", "heatmap"]
        await pilot.press("f11")
        assert screen.maximized is screen.panels["cache"]
        await pilot.press("escape")
        assert screen.maximized is None
        await pilot.press("x")
        assert not screen.panels["cache"].display
        await pilot.pause(0.1)
        saved = config.load_settings()[0]
        assert saved.panel_order[:2] == ("cache", "heatmap") and "cache" in saved.hidden_panels

    run(check, app)
    again, _ = make_app()

    async def check_layout(pilot: Pilot) -> None:
        screen = main_screen(again)
        assert [panel.PANEL_ID for panel in screen.dashboard.in_order()][:2] == ["cache", "heatmap"]
        assert not screen.panels["cache"].display

    run(check_layout, again)


def test_showing_and_hiding_panes_keeps_one_pane_at_a_time_on_a_narrow_terminal() -> None:
    """At 70 columns the chat and the panels take turns (f6). Toggling a panel used to set the dashboard's own
    display, which beat the narrow layout's rule and put both side by side; bringing the chat back while the
    panels were shown did the same."""
    app, _ = make_app()
    notices: list[str] = []

    def shown() -> tuple[bool, bool]:
        screen = main_screen(app)
        return screen.chat.region.width > 0, screen.dashboard.region.width > 0

    async def check(pilot: Pilot) -> None:
        app.notify = lambda message, **kwargs: notices.append(str(message))  # type: ignore[method-assign]
        screen = main_screen(app)
        assert shown() == (True, False)
        await pilot.press("alt+e", "alt+e")
        await pilot.pause(0.3)
        assert shown() == (True, False) and screen.panels["heatmap"].display
        await pilot.press("alt+h")  # the chat hidden: the panels are what is left to show
        await wait_for(pilot, lambda: shown() == (False, True) and app.focused is screen.dashboard.in_order()[0])
        assert screen.dashboard.region.width == app.size.width
        await pilot.press("f6")
        assert notices[-1] == "the chat is hidden: alt+h shows it" and shown() == (False, True)
        await pilot.press("alt+h")
        await wait_for(pilot, lambda: shown() == (True, False) and app.focused is screen.query_one(PromptInput))
        await pilot.press("f6")
        await wait_for(pilot, lambda: shown() == (False, True))
        await pilot.press("alt+h", "alt+h")  # from the panels view: the chat comes back in their place
        await wait_for(pilot, lambda: shown() == (True, False))

    run(check, app, size=(70, 22))


def alt_key_from_terminal(character: str) -> list[str]:
    """The keys Textual's own terminal parser reads from what xterm and tmux send for alt+``character``: ESC, then
    the character (a private module on purpose: it is what a real terminal's bytes go through)."""
    from textual._xterm_parser import XTermParser

    parser = XTermParser()
    return [event.key for event in [*parser.feed("\x1b" + character), *parser.feed("")]]


def test_every_alt_key_arrives_from_an_xterm_style_terminal() -> None:
    """xterm, tmux and most terminals over SSH send alt+key as ESC then the key, and Textual reads ESC 1 as the
    macOS Option character '¡': alt+digit bindings never fired there (and put '¡' in the prompt). Each default
    alt+<character> binding must come out of Textual's own terminal parser as itself."""
    checked = 0
    for key in keys.KEYS:
        for name in key.keys.split(","):
            character = name.removeprefix("alt+")
            if name.startswith("alt+") and len(character) == 1:
                parsed = alt_key_from_terminal(character)
                assert parsed == [name], f"{key.id}: the terminal's {name} arrives as {parsed}"
                checked += 1
    assert checked >= 6  # the show/hide keys of the five panels and the chat


def test_keymap_keys_a_terminal_never_sends_are_named_at_start() -> None:
    """The app's list of alt keys that arrive as something else agrees with Textual's own parser for every letter
    and digit, and a keymap entry using one is a warning when the app starts, as is a key given to two bindings."""
    for character in "abcdefghijklmnopqrstuvwxyz0123456789":
        parsed = alt_key_from_terminal(character)
        flagged = keys.undelivered_keys({"panel.cache": f"alt+{character}"}) != []
        assert flagged == (parsed != [f"alt+{character}"]), f"alt+{character} arrives as {parsed}"
    config.save_settings(config.Settings(keymap={"panel.heatmap": "alt+1", "panel.cache": "alt+c", "chat.new": "f2"}))
    app, _ = make_app()
    notices: list[str] = []

    async def check(pilot: Pilot) -> None:
        notices.extend(str(note.message) for note in app._notifications)
        assert any("never send panel.heatmap = alt+1 as that key" in notice for notice in notices)
        assert not any("panel.cache" in notice for notice in notices)
        assert any("f2 is set for both chat.new and chat.conversations" in notice for notice in notices)

    run(check, app)


def test_help_lists_every_binding_id() -> None:
    app, _ = make_app()

    async def check(pilot: Pilot) -> None:
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        text = app.export_screenshot()
        assert "chat.stop" in text and "panel.maximize" in text and "ctrl+j&#160;/&#160;alt+enter" in text
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, MainScreen))

    run(check, app)


def test_keymap_overrides_from_the_settings_file() -> None:
    config.save_settings(config.Settings(keymap={"chat.new": "f9", "bogus.id": "f8"}))
    app, _ = make_app(FakeSession(words=2))

    async def check(pilot: Pilot) -> None:
        assert any("bogus.id" in note.message for note in app._notifications)
        await send(pilot, "hello")
        await wait_for(pilot, lambda: len(messages(app)) == 2 and not main_screen(app).generating)
        await pilot.press("ctrl+n")
        await pilot.pause(0.1)
        assert len(messages(app)) == 2, "ctrl+n no longer starts a new chat"
        await pilot.press("f9")
        await pilot.pause(0.1)
        assert messages(app) == []

    run(check, app)


def test_enter_sends_when_the_keymap_says_so() -> None:
    """The text area takes enter as a new line whatever the bindings say; a keymap that moves sending to enter
    (and the new line to ctrl+j) must still work, and the prompt's hint must name the key that sends."""
    config.save_settings(config.Settings(keymap={"chat.send": "enter", "chat.newline": "ctrl+j"}))
    app, session = make_app()

    async def check(pilot: Pilot) -> None:
        prompt = app.screen.query_one(PromptInput)
        assert prompt.placeholder == "Ask something… (enter sends)"
        await type_text(pilot, "one")
        await pilot.press("ctrl+j")
        await type_text(pilot, "two")
        assert prompt.text == "one\ntwo" and not session.prompts
        await pilot.press("enter")
        await wait_for(pilot, lambda: bool(session.prompts) and not main_screen(app).generating)
        assert session.prompts[0][-1]["content"] == "one\ntwo"
        assert prompt.text == ""

    run(check, app)


def test_status_lines_name_the_keys_the_keymap_sets() -> None:
    keymap = {
        "chat.stop": "ctrl+x",
        "chat.send": "ctrl+s",
        "settings.save": "f10",
        "chat.edit": "f7,f9",
        "dialog.cancel": "f12",
        "confirm.no": "n,escape,q",
    }
    config.save_settings(config.Settings(keymap=keymap))
    app, _ = make_app(FakeSession(words=2))

    def status() -> str:
        return str(app.screen.query_one("#chat-status").render())

    async def check(pilot: Pilot) -> None:
        assert "ctrl+x stops an answer" in status()
        await type_text(pilot, "hello")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: len(messages(app)) == 2 and not main_screen(app).generating)
        await pilot.press("f9")
        assert "ctrl+s resends it" in status() and "ctrl+x cancels" in status()
        assert app.key_for("chat.conversations") == "f2" and app.key_for("app.help") == "f1"
        assert app.key_for("replay.pause") == "space" and app.key_for("conversations.all") == "esc"
        assert app.key_for("chat.edit") == "f7", "the first of several keys"
        edit = next(command for command in main_commands(main_screen(app)) if command.title.startswith("Edit"))
        assert edit.help == "change it and send it again (f7)"
        helps = {command.title: command.help for command in main_commands(main_screen(app))}
        assert helps["New chat"].endswith("(ctrl+n)") and helps["Hide panel: Memory"].endswith("(alt+m)")
        await pilot.press("ctrl+x")  # stop editing
        await pilot.press("f3")
        await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen))
        hints = " ".join(str(hint.render()) for hint in app.screen.query(".dialog-hint"))
        assert "f10: save" in hints and "esc: cancel" in hints
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, MainScreen))
        for dialog, expected in (
            (AskScreen("Title?"), "enter: OK    f12: cancel"),
            (ConfirmScreen("Sure?"), "y: yes    n: no"),
        ):
            app.push_screen(dialog)
            await wait_for(pilot, lambda dialog=dialog: app.screen is dialog and bool(dialog.query(".dialog-hint")))
            assert str(dialog.query_one(".dialog-hint").render()) == expected
            app.pop_screen()

    run(check, app)


def test_panels_redraw_only_when_the_snapshot_changes() -> None:
    app, session = make_app(FakeSession(words=3))

    async def check(pilot: Pilot) -> None:
        screen = main_screen(app)
        await send(pilot, "hi")
        await wait_for(pilot, lambda: not screen.generating)
        # the answer's last snapshot drawn (a loaded machine slows the redraw pace), then idle
        await wait_for(pilot, lambda: screen._drawn_version == session.engine.snapshot().version)
        await pilot.pause(0.3)
        before = screen.redraws
        await pilot.pause(0.5)
        assert screen.redraws == before, "an idle engine causes no redraws"
        session.engine.forward()
        await wait_for(pilot, lambda: screen.redraws > before)  # the next poll sees the new snapshot

    run(check, app)


def test_history_store_failure_does_not_stop_chatting(tmp_path: Path) -> None:
    bad = tmp_path / "history.sqlite3"
    bad.write_bytes(b"this is not a database" * 100)
    app, session = make_app(FakeSession(words=3), store_factory=lambda: HistoryStore(bad))

    async def check(pilot: Pilot) -> None:
        assert app.store is None
        await wait_for(pilot, lambda: isinstance(app.screen, ErrorScreen))
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, MainScreen))
        await send(pilot, "one")
        await wait_for(pilot, lambda: len(messages(app)) == 2 and not main_screen(app).generating)
        await send(pilot, "two")
        await wait_for(pilot, lambda: len(messages(app)) == 4 and not main_screen(app).generating)
        assert session.prompts[-1][0]["content"] == "one", "context kept in memory"

    run(check, app)


def test_a_failed_load_over_the_history_error_shows_both_errors_in_turn(tmp_path: Path) -> None:
    """The history error is shown at start, the load runs over it; a load that fails then stacks a second error
    on the first (both had one fixed screen id, and the second push crashed the app)."""
    bad = tmp_path / "history.sqlite3"
    bad.write_bytes(b"this is not a database" * 100)

    def failing(options, progress):
        raise UserError("cannot find 'nowhere'")

    app = MoeTuiApp(LaunchOptions(), loader=failing, probe=FakeProbe(), store_factory=lambda: HistoryStore(bad))

    def error_titles() -> list[str]:
        return [str(screen.title_text) for screen in app.screen_stack if isinstance(screen, ErrorScreen)]

    async def check(pilot: Pilot) -> None:
        await wait_for(pilot, lambda: len(error_titles()) == 2)
        assert error_titles() == ["Chat history unavailable", "Could not load the model"]
        await pilot.press("enter")
        assert error_titles() == ["Chat history unavailable"]
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, MainScreen))
        assert not main_screen(app).backend.can_chat

    run(check, app)


def test_lab_studies_the_session_without_a_trace_file() -> None:
    app, session = make_app(FakeSession(words=20))

    async def check(pilot: Pilot) -> None:
        await pilot.press("f4")
        await wait_for(pilot, lambda: app.screen.id == "lab")
        await wait_for(pilot, lambda: "nothing recorded yet" in str(app.screen.query_one("#lab-note").render()))
        await pilot.press("escape")
        await send(pilot, "what is a cache?")
        await wait_for(pilot, lambda: bool(session.prompts) and not main_screen(app).generating)
        await pilot.press("f4")
        await wait_for(pilot, lambda: app.screen.id == "lab")
        table = app.screen.query_one(DataTable)
        await wait_for(pilot, lambda: table.row_count == session.engine.header.num_experts)

    run(check, app)


def test_lab_opens_a_trace_starting_from_the_bundled_samples(tmp_path: Path) -> None:
    """o in the lab: the field starts at the shipped traces' folder; a folder is refused naming the traces in it;
    a trace is simulated, and the next o starts from it."""
    app, _ = make_app()
    samples = paths.TRACES_DIR

    async def field_after_o(pilot: Pilot) -> Input:
        await pilot.press("o")
        await wait_for(pilot, lambda: isinstance(app.screen, AskScreen))
        return app.screen.query_one(Input)

    async def check(pilot: Pilot) -> None:
        await pilot.press("f4")
        await wait_for(pilot, lambda: app.screen.id == "lab")
        lab = app.screen
        field = await field_after_o(pilot)
        assert field.value == f"{samples}{os.sep}"
        await pilot.press("enter")
        note = lab.query_one("#lab-note")
        await wait_for(pilot, lambda: "is a directory" in str(note.render()))
        assert "demo-off-topic.jsonl" in str(note.render())
        field = await field_after_o(pilot)
        await type_text(pilot, "demo-off-topic.jsonl")  # typed on from the folder, not replacing it
        await pilot.press("enter")
        table = lab.query_one(DataTable)
        await wait_for(pilot, lambda: table.row_count > 0, timeout=60)
        await pilot.pause()
        assert table.virtual_size.width <= table.size.width, "every policy and MIN fit 100 columns, none cut"
        # the +host column's low hit rate at k=8 is its rule, said beside it: only prefetches fill its slots
        assert "+host: misses are computed on the host and never copied" in str(note.render())
        field = await field_after_o(pilot)
        assert field.value == str(samples / "demo-off-topic.jsonl")
        cut = tmp_path / "cut.jsonl"  # a recording killed mid-write: its note stays beside the results
        cut.write_text((samples / "demo-off-topic.jsonl").read_text()[:-40])
        field.value = str(cut)
        await pilot.press("enter")
        await wait_for(pilot, lambda: "Each cell" in str(note.render()), timeout=60)
        assert "cut off" in str(note.render())

    run(check, app, size=(100, 30))


def test_leaving_the_lab_stops_its_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long session's trace takes the lab minutes; leaving it stopped nothing, so the replays went on taking
    the CPU from the answers (and quitting waited for them). Now they stop between two replays."""
    from moe_tui.sim import lab as lab_module

    replays: list[float] = []
    replay = lab_module._simulate_passes

    def slow_replay(*args, **kwargs):
        replays.append(time.monotonic())
        time.sleep(0.05)  # 48 replays of the demo trace: about 2.5 s in all
        return replay(*args, **kwargs)

    monkeypatch.setattr(lab_module, "_simulate_passes", slow_replay)
    app, _ = make_app()

    async def check(pilot: Pilot) -> None:
        await pilot.press("f4")
        await wait_for(pilot, lambda: app.screen.id == "lab")
        await pilot.press("o")
        await wait_for(pilot, lambda: isinstance(app.screen, AskScreen))
        await type_text(pilot, "demo-off-topic.jsonl")
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(replays) >= 3)
        note = app.screen.query_one("#lab-note")
        await wait_for(pilot, lambda: re.match(r"simulating… replay \d+ of 48", str(note.render())) is not None)
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, MainScreen))
        await pilot.pause(0.5)  # the replay under way ends
        stopped = len(replays)
        await pilot.pause(0.5)
        assert len(replays) == stopped < 48  # 6 policies x 8 cache sizes in all

    run(check, app, size=(100, 30))


def test_palette_maximises_every_pane_the_chat_included() -> None:
    """Each "Maximise panel: ..." entry fills the screen; the chat's raised KeyError and ended the app."""
    app, _ = make_app()

    async def check(pilot: Pilot) -> None:
        screen = main_screen(app)
        await palette(pilot, "Maximise panel: Chat")
        assert screen.maximized is screen.chat.log_view
        await pilot.press("f11")
        assert screen.maximized is None
        await pilot.press("alt+c")  # a hidden panel is shown to be maximised
        await palette(pilot, "Maximise panel: Expert cache")
        assert screen.maximized is screen.panels["cache"] and screen.panels["cache"].display
        # the whole screen but the footer, not a box of the panel's own height
        await wait_for(pilot, lambda: screen.panels["cache"].region.height == app.size.height - 1)

    run(check, app)


def test_every_palette_command_runs_and_leaves_the_app_usable() -> None:
    """Each command the palette offers (the hidden maximise ones too), run in turn, backing out of any screen it
    opens: none raises, and the app still answers at the end."""
    app, session = make_app(FakeSession(words=5))

    async def check(pilot: Pilot) -> None:
        screen = main_screen(app)
        await send(pilot, "hello")
        await wait_for(pilot, lambda: not screen.generating and len(messages(app)) == 2)
        titles = [command.title for command in main_commands(screen)]
        assert len(titles) > 30
        for title in titles:
            command = {command.title: command for command in main_commands(screen)}.get(title)
            if command is None:  # offered no longer (the setting it names is now the current one)
                continue
            result = command.run()
            if inspect.isawaitable(result):
                await result
            await pilot.pause(0.1)
            while not isinstance(app.screen, MainScreen):
                await pilot.press("escape")
                await pilot.pause(0.1)
            if screen.maximized is not None:
                await pilot.press("f11")
            await wait_for(pilot, lambda: not screen.generating)
        if not screen.panel_shown("chat"):
            await pilot.press("alt+h")
        screen.query_one(PromptInput).focus()  # as a click would: the last command may have focused a panel
        asked = len(session.prompts)
        await send(pilot, "still there?")
        await wait_for(pilot, lambda: len(session.prompts) == asked + 1 and not screen.generating)

    run(check, app)


def test_palette_offers_each_cache_size_once() -> None:
    app, _ = make_app()

    async def check(pilot: Pilot) -> None:
        await pilot.press("ctrl+p")
        await pilot.pause(0.2)
        await type_text(pilot, "k 2")
        await pilot.pause(0.5)
        options = app.screen.query_one("CommandList")
        titles = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
        assert sum("k = 2" in title for title in titles) == 1, titles
        await pilot.press("escape")

    run(check, app)


def test_a_broken_settings_file_keeps_its_good_values_and_is_kept_on_the_first_save() -> None:
    text = 'theme = "moe-light"\n[generation]\nmax_new_tokens = -5\n'
    path = write_settings_file(text)
    app, _ = make_app()

    async def check(pilot: Pilot) -> None:
        assert app.theme == "moe-light"  # the good value survived
        assert any(
            str(path) in note.message and "line 3: generation.max_new_tokens" in note.message
            for note in app._notifications
        )
        await pilot.press("ctrl+t")  # a change that saves the settings (starting up does not)
        await wait_for(pilot, lambda: any(p.name.startswith("settings.toml.broken-") for p in path.parent.iterdir()))
        kept = next(p for p in path.parent.iterdir() if p.name.startswith("settings.toml.broken-"))
        assert kept.read_text() == text
        assert any(str(kept) in note.message for note in app._notifications)
        assert config.load_settings()[1] == ""

    run(check, app)


def test_user_themes_load_after_the_bundled_ones_and_a_broken_one_is_skipped() -> None:
    from moe_tui.paths import THEMES_DIR, user_themes_dir

    themes = user_themes_dir()
    themes.mkdir(parents=True)
    good = (THEMES_DIR / "dark.toml").read_text().replace('name = "moe-dark"', 'name = "my-theme"')
    (themes / "mine.toml").write_text(good)
    (themes / "broken.toml").write_text('name = "broken"\nprimary = "not a colour"\n')
    app, _ = make_app(theme="my-theme")

    async def check(pilot: Pilot) -> None:
        assert app.theme == "my-theme" and "my-theme" in app.moe_themes and "broken" not in app.moe_themes
        assert any("broken.toml" in note.message and "skipped" in note.message for note in app._notifications)

    run(check, app)


def test_the_loading_screen_folds_each_finished_stage_into_one_line_with_its_time() -> None:
    session = FakeSession()
    release = threading.Event()

    def loader(options, progress):
        progress("opening the model", 0, 1)
        time.sleep(0.3)
        progress("opening the model", 1, 1)  # may replace the first report before the screen reads it
        progress("quantizing experts to 4 bits", 3, 8)
        release.wait(10)
        return LiveBackend(session)

    app = MoeTuiApp(LaunchOptions(), loader=loader, probe=FakeProbe())

    async def main() -> None:
        async with app.run_test(size=(60, 20)) as pilot:

            def rows() -> dict[str, StageRow]:
                return app.screen.stages if isinstance(app.screen, LoadingScreen) else {}

            stage = "quantizing experts to 4 bits"
            await wait_for(pilot, lambda: stage in rows() and rows()[stage].bar.progress == 3)
            opened, running = rows()["opening the model"], rows()[stage]
            line = str(opened.query_one(Label).content)
            assert line.startswith("✓ opening the model  ") and line.endswith(" s")
            assert float(line.split()[-2]) >= 0.3  # the worker's time, not when the screen heard of it
            assert opened.has_class("-done") and not opened.bar.display
            assert str(running.query_one(Label).content) == "quantizing experts to 4 bits"
            assert running.bar.display
            release.set()
            await wait_for(pilot, lambda: main_screen(app).backend.can_chat)

    asyncio.run(main())


@pytest.mark.parametrize("size", [(60, 20), (120, 40)])
def test_settings_fields_show_their_values_and_labels_their_sources_at_any_width(size: tuple[int, int]) -> None:
    """The label column was 40 cells wide: at 60 columns a field showed three characters ("4096" as "96"), and
    the thinking switch's label, longer than 40, lost its source to a second line cut off by the row."""
    app, _ = make_app()

    async def check(pilot: Pilot) -> None:
        await pilot.press("f3")
        await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen))
        await pilot.pause(0.1)
        for field in ("#temperature", "#top-p", "#max-new-tokens"):
            assert app.screen.query_one(field, Input).content_region.width >= 8
        for label in app.screen.query("#settings-grid Label"):
            lines = label.content_region.height
            assert lines * label.content_region.width >= len(str(label.render())), str(label.render())

    run(check, app, size=size)


def test_a_new_chat_during_an_answer_says_that_it_stopped_the_answer() -> None:
    """ctrl+n (or opening another chat) stops the answer under way: the status line used to say only "new
    chat", and the first chat's shortened answer was a surprise later."""
    app, _ = make_app(FakeSession(words=1000, delay=0.01))

    async def check(pilot: Pilot) -> None:
        screen = main_screen(app)
        await send(pilot, "first")
        await wait_for(pilot, lambda: screen.generating and len(messages(app)) == 2 and messages(app)[1][1])
        first = screen.conversation_id
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: not screen.generating)
        await pilot.pause(0.3)
        status = str(screen.query_one("#chat-status").render())
        assert status == "new chat · the answer under way was stopped (what it had said is kept)"
        kept = app.store.messages(first)[-1].content
        assert kept and len(kept.split()) < 1000
        await pilot.press("ctrl+n")  # nothing under way: nothing to say
        await pilot.pause(0.1)
        assert str(screen.query_one("#chat-status").render()) == "new chat"

    run(check, app)
