"""A readable error dialog: what failed, why, and what to do; never a traceback in the user's face."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, cast

from textual.binding import BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Collapsible, Label, Static

from moe_tui.tui import keys

if TYPE_CHECKING:
    from moe_tui.tui.app import MoeTuiApp


class ErrorScreen(ModalScreen[str]):
    """Shows an error; enter continues (the app stays usable), d unfolds details, ctrl+q quits (app binding)."""

    BINDINGS: ClassVar[list[BindingType]] = keys.bindings_where("error")

    def __init__(self, title: str, message: str, hint: str = "", details: str = "") -> None:
        super().__init__()  # no fixed id: a second error (a load failing under the first) may be stacked on it
        self.title_text = title
        self.message = message
        self.hint = hint
        self.details = details

    def compose(self):
        """Title, cause, hint, optional technical details (folded)."""
        with Vertical(id="error-box"):
            yield Label(self.title_text, id="error-title")
            yield Static(self.message, id="error-message", markup=False)
            if self.hint:
                yield Static(self.hint, id="error-hint", markup=False)
            if self.details:
                with Collapsible(title="technical details", collapsed=True), VerticalScroll(id="error-details"):
                    yield Static(self.details, markup=False)
            key = cast("MoeTuiApp", self.app).key_for
            details = f"{key('error.details')}: technical details    " if self.details else ""
            keys_line = f"{key('error.continue')}: continue    {details}{key('app.quit')}: quit"
            yield Static(keys_line, id="error-keys")

    def action_toggle_details(self) -> None:
        """Fold or unfold the technical details."""
        for collapsible in self.query(Collapsible):
            collapsible.collapsed = not collapsible.collapsed
