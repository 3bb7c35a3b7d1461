"""The frame every dashboard panel shares: bordered, focusable, scrollable, maximisable, redrawn on change only."""

from __future__ import annotations

from typing import ClassVar

from rich.cells import cell_len
from rich.text import Text
from textual.binding import BindingType
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widget import Widget

from moe_tui.telemetry import Snapshot
from moe_tui.tui import keys
from moe_tui.tui.widgets.colours import Colours, colours_for


def rows_needed(text: Text, width: int) -> int:
    """Rows ``text`` takes at ``width`` columns, counting long lines as wrapped (cheaper than wrapping it)."""
    return sum(max(1, -(-cell_len(line) // width)) for line in text.plain.split("\n"))


class SnapshotView(Widget):
    """Text drawn from the latest snapshot; redraws only when the snapshot's version or the size changed."""

    DEFAULT_CSS = """
    SnapshotView { height: auto; }
    """

    WAITING = "waiting for the first token…"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.snapshot: Snapshot | None = None
        self.note = self.WAITING
        self.redraws = 0
        self._drawn: tuple[tuple[int, int, int, int], Text] | None = None
        self._lines = -1

    def show(self, snapshot: Snapshot) -> bool:
        """Take a new snapshot; returns whether it differs from the one drawn (and so was redrawn).

        The text is drawn here once; the screen's layout is recomputed only when its height changed, so a
        redraw at 10 Hz repaints one widget instead of laying out the whole screen again.
        """
        if self.snapshot is not None and snapshot.version == self.snapshot.version:
            return False
        self.snapshot = snapshot
        self.redraws += 1
        if self.size.width <= 0:
            self.refresh(layout=True)
            return True
        text = self._text()
        lines = rows_needed(text, self.size.width)
        self.refresh(layout=lines != self._lines)
        self._lines = lines
        return True

    def forget(self, note: str) -> None:
        """Drop the snapshot drawn (its model is gone) and show ``note`` until the next one."""
        self.snapshot = None
        self.note = note
        self.clear_drawing()

    def clear_drawing(self) -> None:
        """Forget the drawn text (the theme changed) and draw again."""
        self._drawn = None
        self._lines = -1
        self.refresh(layout=True)

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

    def _text(self) -> Text:
        assert self.snapshot is not None
        width, height = max(self.size.width, 1), self.available_height
        colours = self.colours
        key = (self.snapshot.version, width, height, id(colours))
        if self._drawn is None or self._drawn[0] != key:
            self._drawn = (key, self.draw(self.snapshot, colours, width, height))
        return self._drawn[1]

    def render(self) -> Text:
        """Draw the snapshot (or a note before the first one); reuses the text drawn for this size."""
        if self.snapshot is None:
            return Text(self.note, style=self.colours.muted)
        return self._text()

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

    def forget(self, note: str) -> None:
        """Drop what the panel shows (its model is gone) and show ``note`` until the next snapshot."""
        for view in self.query(SnapshotView):
            view.forget(note)

    def redraw(self) -> None:
        """Draw again with the same data (after a theme change)."""
        for view in self.query(SnapshotView):
            view.clear_drawing()
