"""Generation settings, edited in the app: temperature, top-p, max new tokens, the system prompt and thinking.

Each value is labelled with where it comes from: ``yours`` (saved in the settings file), ``model`` (the model's
``generation_config.json``) or ``default`` (moe-tui's). Saving keeps as yours only the values that are yours
already or that were changed here; ctrl+d drops all of yours, so every value follows the model again.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any, ClassVar, cast

from textual.binding import BindingType
from textual.containers import Grid, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static, Switch, TextArea

from moe_tui.chat.generation import GenerationSettings
from moe_tui.errors import UserError
from moe_tui.tui import keys
from moe_tui.tui.screens.dialogs import scrolling_box
from moe_tui.tui.widgets.fields import TextBox, TextField

if TYPE_CHECKING:
    from moe_tui.tui.app import MoeTuiApp


class SettingsScreen(ModalScreen[dict[str, Any] | None]):
    """A form; ctrl+s or the Save button checks the values and dismisses with the values the user chose (a dict
    of GenerationSettings fields), ctrl+d with none (follow the model), escape cancels (None)."""

    BINDINGS: ClassVar[list[BindingType]] = keys.bindings_where("settings")

    def __init__(self, settings: GenerationSettings, sources: dict[str, str], can_think: bool = False) -> None:
        super().__init__(classes="dialog")
        self.settings = settings
        self.sources = sources
        self.can_think = can_think

    def _label(self, text: str, field: str) -> Label:
        return Label(f"{text} [{self.sources.get(field, 'default')}]", id=f"source-{field}", markup=False)

    def compose(self):
        """Number fields and the thinking switch with their sources, the system prompt, an error line, buttons."""
        settings = self.settings
        with scrolling_box("settings-box"):
            yield Label("Generation settings  [yours / model / default]", classes="dialog-title", markup=False)
            with Grid(id="settings-grid"):
                yield self._label("temperature (0 = greedy)", "temperature")
                yield TextField(str(settings.temperature), id="temperature")
                yield self._label("top-p", "top_p")
                yield TextField(str(settings.top_p), id="top-p")
                yield self._label("max new tokens", "max_new_tokens")
                yield TextField(str(settings.max_new_tokens), id="max-new-tokens")
                thinking = "thinking" if self.can_think else "thinking (this model has no switch)"
                yield self._label(thinking, "thinking")
                yield Switch(settings.thinking, id="thinking", disabled=not self.can_think)
            yield self._label("system prompt", "system_prompt")
            yield TextBox(settings.system_prompt, id="system-prompt", compact=True)
            yield Static("", id="settings-error", markup=False)
            key = cast("MoeTuiApp", self.app).key_for
            yield Static(
                f"{key('settings.save')}: save    {key('settings.follow_model')}: follow the model"
                f"    {key('settings.cancel')}: cancel",
                classes="dialog-hint",
                markup=False,
            )
            yield Button("Save", id="settings-save", variant="primary")

    def action_save(self) -> None:
        """Validate and close with the values now chosen, or say what is wrong and stay; keys typed before the
        save that still wait on the focused field are applied first."""
        # ctrl+s is a priority binding (a field would take ctrl+d), which runs the moment the key arrives: in a
        # burst of keys ("32", ctrl+s) the digits still wait in the field's queue, so the save goes behind them.
        (self.focused or self).call_later(self._save)

    def _save(self) -> None:
        try:
            settings = GenerationSettings.from_text(
                self.query_one("#temperature", Input).value,
                self.query_one("#top-p", Input).value,
                self.query_one("#max-new-tokens", Input).value,
                self.query_one("#system-prompt", TextArea).text,
                self.query_one("#thinking", Switch).value,
            )
        except UserError as error:
            message = self.query_one("#settings-error", Static)
            message.update(str(error))
            box = self.query_one("#settings-box", VerticalScroll)
            self.call_after_refresh(box.scroll_to_widget, message, animate=False)  # below the fold when short
            return
        before, after = asdict(self.settings), asdict(settings)
        chosen = {
            field: value
            for field, value in after.items()
            if self.sources.get(field) == "yours" or value != before[field]
        }
        self.dismiss(chosen)

    def action_follow_model(self) -> None:
        """Drop every value of the user's: all follow the model (or moe-tui's defaults)."""
        self.dismiss({})

    def on_button_pressed(self, event: Button.Pressed) -> None:
        """The Save button."""
        event.stop()
        self._save()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in a number field saves too."""
        event.stop()
        self._save()
