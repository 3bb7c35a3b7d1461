"""The help screen: every key with its binding id (for the settings file's [keymap]) and the keys in effect."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from textual.binding import BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from moe_tui.config import settings_path
from moe_tui.telemetry.live import WINDOW_STEPS
from moe_tui.tui import keys


def shown_keys(keymap: dict[str, str], binding_id: str) -> str:
    """Every key that does ``binding_id`` now (the user's keymap, else the default), as the help shows them."""
    return keys.display_keys(",".join(keys.keys_in_effect(keymap, binding_id)))


def panel_help(keymap: dict[str, str]) -> str:
    """What the panels show and how the keys in effect work on them, one paragraph per line (left to wrap)."""

    def key(binding_id: str) -> str:
        return shown_keys(keymap, binding_id)

    return "\n".join(
        [
            f"Panels: tab / shift+tab move the focus; with a panel focused, {key('panel.earlier')} and"
            f" {key('panel.later')} move it, {key('panel.hide')} hides it, {key('panel.maximize')} maximises it.",
            f"Send: {key('chat.send')}, as your keymap says; a new line: {key('chat.newline')}."
            if "chat.send" in keymap or "chat.newline" in keymap
            else "Send: ctrl+j works in every terminal; alt+enter only where the terminal reports it (kitty,"
            ' WezTerm, Ghostty). To send with enter, set "chat.send" = "enter" and "chat.newline" = "ctrl+j"'
            " under [keymap] (file below).",
            "Cache slots: id+mark, next victim first: + hit, ! miss (loaded), ^ prefetched and used, ~ prefetched"
            f" unused. The sparklines: hit rate over the last {WINDOW_STEPS} passes, one point per pass, newest"
            " right.",
            "Heatmap: ● (or a weight) = picked for the last token; shade/colour = share of the last passes.",
        ]
    )


def keys_table(keymap: dict[str, str]) -> Table:
    """A table of every binding: where, keys in effect, what it does, id."""
    table = Table(box=None, expand=True, pad_edge=False)
    table.add_column("where", style="dim", no_wrap=True)
    table.add_column("keys", style="bold", no_wrap=True)
    table.add_column("does")
    table.add_column("id", style="dim", no_wrap=True)
    for key in keys.KEYS:
        table.add_row(key.where, shown_keys(keymap, key.id), key.description, key.id)
    return table


class HelpScreen(ModalScreen[None]):
    """Keys and what the panels show; escape or f1 closes it."""

    BINDINGS: ClassVar[list[BindingType]] = keys.bindings("help.close")

    def __init__(self, keymap: dict[str, str]) -> None:
        super().__init__(classes="dialog", id="help")
        self.keymap = keymap

    def compose(self):
        """Title, keys, panel notes, where the keymap lives."""
        with VerticalScroll(classes="dialog-box", id="help-box"):
            yield Label("moe-tui keys", classes="dialog-title")
            yield Static(keys_table(self.keymap))
            yield Static(panel_help(self.keymap), markup=False, id="help-panels")
            yield Static(
                f'Remap a key: add  "<id>" = "<keys>"  under [keymap] in {settings_path()}',
                markup=False,
                classes="dialog-hint",
            )
