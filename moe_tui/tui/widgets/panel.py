"""The frame every dashboard panel shares: bordered, focusable, scrollable, maximisable, redrawn on change only."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.binding import BindingType
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widget import Widget

from moe_tui.telemetry import Snapshot
from moe_tui.tui import keys
from moe_tui.tui.widgets.colours import Colours, colours_for


class SnapshotView(Widget):
    """Text drawn from the latest snapshot; redraws only when the snapshot's version or the size changed."""

    DEFAULT_CSS = """
    SnapshotView { height: auto; }
    """

    WAITING = "waiting for the first token…"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.snapshot: Snapshot | None = None
        self.redraws = 0

    def show(self, snapshot: Snapshot) -> bool:
        """Take a new snapshot; returns whether it differs from the one drawn (and so was redrawn)."""
        if self.snapshot is not None and snapshot.version == self.snapshot.version:
            return False
        self.snapshot = snapshot
        self.redraws += 1
        self.refresh(layout=True)
        return True

    @property
    def colours(self) -> Colours:
        """The current theme's panel colours."""
        return colours_for(self.app.theme_variables)

    @property
    def available_height(self) -> int:
        """Rows the enclosing panel can show without scrolling."""
        parent = self.parent
        if isinstance(parent, Widget) and parent.content_region.height > 0:
            return parent.content_region.height
        return self.size.height or 24

    def render(self) -> Text:
        """Draw the snapshot (or a waiting line before the first one)."""
        if self.snapshot is None:
            return Text(self.WAITING, style=self.colours.muted)
        return self.draw(self.snapshot, self.colours, max(self.size.width, 1), self.available_height)

    def draw(self, snapshot: Snapshot, colours: Colours, width: int, height: int) -> Text:
        """Subclasses turn a snapshot into text that fits ``width`` columns (and ideally ``height`` rows)."""
        raise NotImplementedError


class Panel(VerticalScroll, can_focus=True):
    """A dashboard panel: one titled box the user can focus, hide, maximise and move with the keyboard."""

    ALLOW_MAXIMIZE = True
    BINDINGS: ClassVar[list[BindingType]] = keys.bindings_where("focused panel")
    PANEL_ID: ClassVar[str] = ""
    TITLE: ClassVar[str] = ""

    class MoveRequested(Message):
        """The user asked to move this panel ``delta`` places in the dashboard."""

        def __init__(self, panel: Panel, delta: int) -> None:
            super().__init__()
            self.panel = panel
            self.delta = delta

    class HideRequested(Message):
        """The user asked to hide this panel."""

        def __init__(self, panel: Panel) -> None:
            super().__init__()
            self.panel = panel

    def __init__(self) -> None:
        super().__init__(id=f"panel-{self.PANEL_ID}", classes="panel")
        self.border_title = self.TITLE

    def action_move_panel(self, delta: int) -> None:
        """Ask the screen to move this panel earlier (-1) or later (+1)."""
        self.post_message(self.MoveRequested(self, delta))

    def action_hide_focused(self) -> None:
        """Ask the screen to hide this panel."""
        self.post_message(self.HideRequested(self))

    def show(self, snapshot: Snapshot) -> bool:
        """Hand the snapshot to the panel's views; returns whether anything was redrawn."""
        changed = False
        for view in self.query(SnapshotView):
            changed = view.show(snapshot) or changed
        return changed

    def redraw(self) -> None:
        """Draw again with the same data (after a theme change)."""
        for view in self.query(SnapshotView):
            view.refresh(layout=True)
