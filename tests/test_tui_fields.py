"""Keys that reach a text field together apply in the order they were typed (Textual ran a bound key, such as
backspace, only after the characters queued behind it)."""

from __future__ import annotations

import asyncio
import os

import pytest
from textual import events
from textual.app import App
from textual.widgets import Input, TextArea
from tui_helpers import make_app, ready, run, wait_for

from moe_tui import config
from moe_tui.tui.screens.dialogs import typed_path
from moe_tui.tui.screens.main import MainScreen
from moe_tui.tui.screens.settings import SettingsScreen
from moe_tui.tui.widgets.chat import PromptInput
from moe_tui.tui.widgets.fields import TextBox, TextField

# (key, character) as the terminal driver posts them; "ab", backspace, "c", left, "d", home, "e", end, "f"
BURST = [
    ("a", "a"), ("b", "b"), ("backspace", "\x7f"), ("c", "c"), ("left", None), ("d", "d"),
    ("home", None), ("e", "e"), ("end", None), ("f", "f"),
]  # fmt: skip
TYPED = "eadcf"


def post_at_once(app: App, burst: list[tuple[str, str | None]]) -> None:
    """Queue every key on the app before any is handled, as keys read from the terminal in one go are."""
    for key, character in burst:
        app.post_message(events.Key(key, character))


def text_of(widget: Input | TextArea) -> str:
    return widget.value if isinstance(widget, Input) else widget.text


@pytest.mark.parametrize("field_class", [TextField, TextBox, Input, TextArea])
def test_a_burst_of_keys_edits_in_the_order_typed(field_class: type) -> None:
    """Textual's own Input and TextArea are run too: they show the disorder the fields exist for (if Textual
    fixes it, their cases fail and the fields can go)."""

    class OneField(App):
        def compose(self):
            yield field_class(id="field")

    async def main() -> str:
        app = OneField()
        async with app.run_test() as pilot:
            field = app.query_one("#field")
            field.focus()
            await pilot.pause()
            post_at_once(app, BURST)
            await wait_for(pilot, lambda: len(text_of(field)) >= 5 or text_of(field).endswith("f"))
            await pilot.pause(0.1)
            return text_of(field)

    typed = asyncio.run(main())
    if field_class in (TextField, TextBox):
        assert typed == TYPED
    else:
        assert typed != TYPED


def test_the_chat_prompt_takes_a_burst_in_order_and_still_sends_with_its_key() -> None:
    app, session = make_app()

    async def check(pilot) -> None:
        prompt = app.main.query_one(PromptInput)
        await wait_for(pilot, lambda: ready(app))
        post_at_once(app, [*BURST, ("ctrl+j", None)])
        await wait_for(pilot, lambda: len(session.prompts) == 1)
        assert session.prompts[0][-1]["content"] == TYPED
        assert prompt.text == ""

    run(check, app)


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("/home/me/notes.md", "/home/me/notes.md"),  # typed on from the folder
        ("/home/me//tmp/x.md", "/tmp/x.md"),  # an absolute path after it
        ("/home/me/~/x.md", "~/x.md"),  # home after it
        ("/home/me/~", "~"),
        ("/home/me/~user.md", "/home/me/~user.md"),  # a name that starts with ~ is a name
        ("/home/me//tmp/~/a//b", "/b"),  # the last start counts
        ("/home/me/~/a//b", "/b"),
        ("/home/me//a/~/b", "~/b"),
    ],
)
def test_a_path_typed_on_from_a_folder_starts_over_at_a_slash_or_tilde(typed: str, meant: str) -> None:
    assert typed_path(typed.replace("/", os.sep)) == meant.replace("/", os.sep)


def test_the_command_palette_takes_a_burst_in_order() -> None:
    """The palette's search field is Textual's, swapped for one that takes keys in order."""
    from textual.command import CommandInput

    app, _ = make_app()

    async def check(pilot) -> None:
        await wait_for(pilot, lambda: ready(app))
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: bool(app.screen.query(CommandInput)))
        field = app.screen.query_one(CommandInput)
        await wait_for(pilot, lambda: field.has_focus)
        post_at_once(app, BURST)
        await wait_for(pilot, lambda: field.value.endswith("f"))
        await pilot.pause(0.1)
        assert field.value == TYPED
        await pilot.press("escape")

    run(check, app)


def test_a_save_key_in_a_burst_saves_what_was_typed_before_it() -> None:
    """ctrl+s is a priority binding, run as it arrives: it used to save the settings form before the digits
    queued ahead of it reached the field."""
    app, _ = make_app()

    async def check(pilot) -> None:
        await wait_for(pilot, lambda: ready(app))
        await pilot.press("f3")
        await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen))
        field = app.screen.query_one("#max-new-tokens", Input)
        field.focus()
        await pilot.pause()
        post_at_once(app, [("end", None), *[("backspace", "\x7f")] * len(field.value), ("3", "3"), ("2", "2")])
        post_at_once(app, [("ctrl+s", None)])
        await wait_for(pilot, lambda: isinstance(app.screen, MainScreen))
        assert config.load_settings()[0].generation == {"max_new_tokens": 32}

    run(check, app)
