"""A readable error dialog: what failed, why, and what to do; never a traceback in the user's face."""

from __future__ import annotations

from typing import ClassVar

from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Collapsible, Label, Static


class ErrorScreen(ModalScreen[str]):
    """Shows an error; enter continues (the app stays usable), ctrl+q quits. Dismisses with the choice."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter,escape", "dismiss('continue')", "Continue", id="error.continue"),
        Binding("ctrl+q", "app.quit", "Quit", id="error.quit"),
    ]

    def __init__(self, title: str, message: str, hint: str = "", details: str = "") -> None:
        super().__init__(id="error")
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
            yield Static("enter: continue    ctrl+q: quit", id="error-keys")
