"""The loading screen: a progress bar for the stage under way (reading shards, quantizing experts, ...), and one
line with its time for each stage done, so that the list fits a small terminal."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, ClassVar, cast

from textual.binding import BindingType
from textual.containers import Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Label, ProgressBar, Static

from moe_tui.tui import keys

if TYPE_CHECKING:
    from moe_tui.tui.app import MoeTuiApp


class LoadProgress(Message):
    """Progress of one loading stage, posted from the loading worker to the app."""

    def __init__(self, stage: str, done: int, total: int, started: float) -> None:
        super().__init__()
        self.stage = stage
        self.done = done
        self.total = total
        self.started = started  # when the stage first reported (time.monotonic(), in the worker)
        self.at = time.monotonic()  # when this report was made

    def can_replace(self, message: Message) -> bool:
        """A newer report on the same stage makes an older pending one useless."""
        return isinstance(message, LoadProgress) and message.stage == self.stage


class LoadingScreen(Screen):
    """Shown while a model loads in a worker; the app stays responsive (quit works at any time)."""

    BINDINGS: ClassVar[list[BindingType]] = keys.bindings_where("loading")

    def __init__(self, what: str) -> None:
        super().__init__()  # no fixed id: the next load's screen may be pushed before this one is fully removed
        self.what = what
        self.stages: dict[str, StageRow] = {}
        self._started = time.monotonic()
        self.finished = False

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

    def finish(self) -> None:
        """The load ended while another screen covered this one: leave as soon as this one is shown again."""
        self.finished = True

    def on_screen_resume(self) -> None:
        """Back on top (a palette or help closed): if the load has ended meanwhile, make way for the model."""
        if self.finished:
            self.dismiss()  # not awaited: this screen's own handler cannot wait for its removal

    def action_cancel_load(self) -> None:
        """Ask, then stop loading (the app goes on without a model): a stray key typed at this screen, a question
        started before the prompt is there, must not throw away an hour of quantizing."""
        from moe_tui.tui.screens.dialogs import ConfirmScreen

        app = cast("MoeTuiApp", self.app)

        def answer(stop: bool | None) -> None:
            if stop:
                app.cancel_load()

        app.push_screen(ConfirmScreen(f"Stop loading {self.what}? What it has done so far is lost."), answer)

    def show_cancelling(self) -> None:
        """Say that the load stops after the step under way."""
        self.query_one("#loading-title", Label).update(f"Cancelling the load of {self.what} (after the step under way)")

    def action_hide(self) -> None:
        """Go to the main screen while the model keeps loading (earlier chats, help and settings work)."""
        self.app.pop_screen()
        self.app.notify("the model keeps loading; the status bar shows how far it is")

    async def show_progress(self, message: LoadProgress) -> None:
        """Add a row for a new stage or move an existing one."""
        row = self.stages.get(message.stage)
        if row is None:
            row = self.stages[message.stage] = StageRow(message.stage, message.total)
            await self.query_one("#loading-stages").mount(row)
        row.show(message)


class StageRow(Vertical):
    """One loading stage: its name over a bar while it runs (with the time left once it moves), then one line
    with a check mark and how long it took."""

    def __init__(self, stage: str, total: int) -> None:
        super().__init__(classes="loading-stage")
        self.stage = stage
        self._label = Label(stage)
        self.bar = ProgressBar(total=max(total, 1), show_eta=total > 1)

    def compose(self):
        """The stage's name and its bar."""
        yield self._label
        yield self.bar

    def show(self, message: LoadProgress) -> None:
        """Move the bar; at the end, fold the row into its one line (the time is the worker's: reports that
        arrive together, or replace one another, do not shorten it)."""
        self.bar.update(total=max(message.total, 1), progress=message.done)
        if message.done >= message.total and not self.has_class("-done"):
            self.add_class("-done")
            self._label.update(f"✓ {self.stage}  {message.at - message.started:.1f} s")
