"""The one-line status bar: model, engine settings, speed and what the app is doing."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from moe_tui.telemetry import Snapshot

MAX_NAME = 28


def status_text(name: str, mode: str, snapshot: Snapshot | None, activity: str) -> Text:
    """``moe-tui │ demo-mixtral │ k=2 lru │ prefetch 1 │ 12.3 tok/s │ generating… │ cpu`` (least useful last)."""
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(" moe-tui ", style="bold reverse")
    text.append(f" {name if len(name) <= MAX_NAME else name[: MAX_NAME - 1] + '…'}")
    if snapshot is not None:
        header = snapshot.header
        sizes = sorted(set(header.cache_size))
        k = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
        text.append(f" │ k={k} {header.policy}")
        text.append(f" │ prefetch {header.prefetch}" if header.prefetch else " │ prefetch off")
        text.append(f" │ {snapshot.tokens_per_s:.1f} tok/s")
    if activity:
        text.append(f" │ {activity}", style="bold")
    if snapshot is not None:
        text.append(f" │ {snapshot.header.fast_tier}")
    return text


class StatusBar(Widget):
    """Shows :func:`status_text`; one fixed row, so a change repaints it without laying out the screen."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.text = Text()

    def show_status(self, name: str, mode: str, snapshot: Snapshot | None, activity: str) -> None:
        """Redraw with new facts (only when they changed)."""
        text = status_text(name, mode, snapshot, activity)
        if text.plain != self.text.plain:
            self.text = text
            self.refresh()

    def render(self) -> Text:
        """The current status line."""
        return self.text
