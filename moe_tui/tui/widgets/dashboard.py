"""The column of live panels beside the chat: which panels there are, their order, and moving them.

Panels ask to move with their own keys (:class:`Panel.MoveRequested`); the dashboard moves them and posts
:class:`Dashboard.Rearranged`, so the screen can remember the layout. Showing and hiding stays with the
screen, which weighs the panels against the chat pane.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from textual import on
from textual.containers import VerticalScroll
from textual.message import Message

from moe_tui.tui.widgets.cache import CachePanel
from moe_tui.tui.widgets.heatmap import HeatmapPanel
from moe_tui.tui.widgets.memory import MemoryPanel
from moe_tui.tui.widgets.panel import Panel
from moe_tui.tui.widgets.params import ParamsPanel
from moe_tui.tui.widgets.prefetch import PrefetchPanel

PANEL_CLASSES: tuple[type[Panel], ...] = (HeatmapPanel, CachePanel, PrefetchPanel, MemoryPanel, ParamsPanel)
PANEL_IDS = tuple(panel.PANEL_ID for panel in PANEL_CLASSES)


class Dashboard(VerticalScroll):
    """Every panel once, in the saved order (new panels after it), the saved hidden ones hidden."""

    class Rearranged(Message):
        """A panel moved; the layout is worth remembering."""

    def __init__(self, order: Sequence[str] = (), hidden: Collection[str] = ()) -> None:
        super().__init__(id="dashboard", can_focus=False)
        self.panels: dict[str, Panel] = {cls.PANEL_ID: cls() for cls in PANEL_CLASSES}
        saved = [panel_id for panel_id in order if panel_id in self.panels]
        self._first_order = saved + [panel_id for panel_id in PANEL_IDS if panel_id not in saved]
        for panel_id in hidden:
            if panel_id in self.panels:
                self.panels[panel_id].display = False

    def compose(self):
        """The panels in their first order."""
        for panel_id in self._first_order:
            yield self.panels[panel_id]

    def in_order(self) -> list[Panel]:
        """The panels as they are shown, top first."""
        return [child for child in self.children if isinstance(child, Panel)]

    def order(self) -> list[str]:
        """The panels' ids, top first."""
        return [panel.PANEL_ID for panel in self.in_order()]

    def hidden(self) -> list[str]:
        """The ids of the hidden panels."""
        return [panel_id for panel_id, panel in self.panels.items() if not panel.display]

    def any_shown(self) -> bool:
        """Whether any panel is shown."""
        return any(panel.display for panel in self.panels.values())

    @on(Panel.MoveRequested)
    def _move(self, message: Panel.MoveRequested) -> None:
        message.stop()
        order = self.in_order()
        target = order.index(message.panel) + message.delta
        if not 0 <= target < len(order):
            return
        if message.delta < 0:
            self.move_child(message.panel, before=order[target])
        else:
            self.move_child(message.panel, after=order[target])
        message.panel.focus()
        self.post_message(self.Rearranged())
