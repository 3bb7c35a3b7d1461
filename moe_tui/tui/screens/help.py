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

PANEL_HELP = (
    "Panels: tab / shift+tab move the focus; with a panel focused, [ and ] move it, x hides it, f11 maximises it.\n"
    "Send: ctrl+j works in every terminal; alt+enter only where the terminal reports it (kitty, WezTerm, Ghostty).\n"
    "Cache slots: id+mark, next victim first: + hit, ! miss (loaded), ^ prefetched and used, ~ prefetched unused;\n"
    f"  the sparklines: hit rate over the last {WINDOW_STEPS} passes, one point per pass, newest right.\n"
    "Heatmap: ● (or a weight) = picked for the last token; shade/colour = share of the last passes."
)


def keys_table(keymap: dict[str, str]) -> Table:
    """A table of every binding: where, keys in effect, what it does, id."""
    table = Table(box=None, expand=True, pad_edge=False)
    table.add_column("where", style="dim", no_wrap=True)
    table.add_column("keys", style="bold", no_wrap=True)
    table.add_column("does")
    table.add_column("id", style="dim", no_wrap=True)
    for key in keys.KEYS:
        table.add_row(key.where, keys.display_keys(keymap.get(key.id, key.keys)), key.description, key.id)
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
            yield Static(PANEL_HELP, markup=False, id="help-panels")
            yield Static(
                f'Remap a key: add  "<id>" = "<keys>"  under [keymap] in {settings_path()}',
                markup=False,
                classes="dialog-hint",
            )
