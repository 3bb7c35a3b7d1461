"""The loading screen: one progress bar per stage (reading shards, quantizing experts, ...) as they arrive."""

from __future__ import annotations

import time
from typing import ClassVar

from textual.binding import BindingType
from textual.containers import Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Label, ProgressBar, Static

from moe_tui.tui import keys


class LoadProgress(Message):
    """Progress of one loading stage, posted from the loading worker to the app."""

    def __init__(self, stage: str, done: int, total: int) -> None:
        super().__init__()
        self.stage = stage
        self.done = done
        self.total = total

    def can_replace(self, message: Message) -> bool:
        """A newer report on the same stage makes an older pending one useless."""
        return isinstance(message, LoadProgress) and message.stage == self.stage


class LoadingScreen(Screen):
    """Shown while a model loads in a worker; the app stays responsive (quit works at any time)."""

    BINDINGS: ClassVar[list[BindingType]] = keys.bindings_where("loading")

    def __init__(self, what: str) -> None:
        super().__init__(id="loading")
        self.what = what
        self.stages: dict[str, ProgressBar] = {}
        self._started = time.monotonic()

    def compose(self):
        """Title, stage list (filled in as stages report), elapsed time."""
        with Vertical(id="loading-box"):
            yield Label(f"Loading {self.what}", id="loading-title")
            yield Vertical(id="loading-stages")
            yield Static("", id="loading-elapsed")
        yield Footer()

    def on_mount(self) -> None:
        """Tick the elapsed-time line."""
        self.set_interval(0.5, self._tick)

    def _tick(self) -> None:
        self.query_one("#loading-elapsed", Static).update(f"{time.monotonic() - self._started:.0f} s")

    def action_hide(self) -> None:
        """Go to the main screen while the model keeps loading (earlier chats, help and settings work)."""
        self.app.pop_screen()
        self.app.notify("the model keeps loading; the status bar shows how far it is")

    async def show_progress(self, message: LoadProgress) -> None:
        """Add a bar for a new stage or move an existing one."""
        bar = self.stages.get(message.stage)
        if bar is None:
            bar = ProgressBar(total=max(message.total, 1), show_eta=message.total > 1)  # time left, once it moves
            self.stages[message.stage] = bar
            row = Vertical(Label(message.stage), bar, classes="loading-stage")
            await self.query_one("#loading-stages").mount(row)
        bar.update(total=max(message.total, 1), progress=message.done)
