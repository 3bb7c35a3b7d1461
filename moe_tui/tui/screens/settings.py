"""Generation settings, edited in the app: temperature, top-p, max new tokens and the system prompt."""

from __future__ import annotations

from typing import ClassVar

from textual.binding import BindingType
from textual.containers import Grid, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static, TextArea

from moe_tui.chat.session import GenerationSettings
from moe_tui.errors import UserError
from moe_tui.tui import keys


class SettingsScreen(ModalScreen[GenerationSettings | None]):
    """A form; ctrl+s or the Save button checks the values and dismisses with new settings, escape cancels."""

    BINDINGS: ClassVar[list[BindingType]] = keys.bindings_where("settings")

    def __init__(self, settings: GenerationSettings) -> None:
        super().__init__(classes="dialog")
        self.settings = settings

    def compose(self):
        """Three number fields, the system prompt, an error line, buttons."""
        settings = self.settings
        with Vertical(classes="dialog-box", id="settings-box"):
            yield Label("Generation settings", classes="dialog-title")
            with Grid(id="settings-grid"):
                yield Label("temperature (0 = greedy)")
                yield Input(str(settings.temperature), id="temperature")
                yield Label("top-p")
                yield Input(str(settings.top_p), id="top-p")
                yield Label("max new tokens")
                yield Input(str(settings.max_new_tokens), id="max-new-tokens")
            yield Label("system prompt")
            yield TextArea(settings.system_prompt, id="system-prompt", compact=True)
            yield Static("", id="settings-error", markup=False)
            yield Static("ctrl+s: save    escape: cancel", classes="dialog-hint")
            yield Button("Save", id="settings-save", variant="primary")

    def action_save(self) -> None:
        """Validate and close with the new settings, or say what is wrong and stay."""
        try:
            settings = GenerationSettings.from_text(
                self.query_one("#temperature", Input).value,
                self.query_one("#top-p", Input).value,
                self.query_one("#max-new-tokens", Input).value,
                self.query_one("#system-prompt", TextArea).text,
            )
        except UserError as error:
            self.query_one("#settings-error", Static).update(str(error))
            return
        self.dismiss(settings)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        """The Save button."""
        event.stop()
        self.action_save()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in a number field saves too."""
        event.stop()
        self.action_save()
