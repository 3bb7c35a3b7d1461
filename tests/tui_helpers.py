"""Driving the app in tests like a user would: start it on a fake model, wait for it, type, send, read the
messages, open the palette (shared by the TUI test modules)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from textual.pilot import Pilot
from tui_fakes import FakeProbe, FakeSession

from moe_tui.tui.app import MoeTuiApp
from moe_tui.tui.backend import LaunchOptions, LiveBackend
from moe_tui.tui.screens.error import ErrorScreen
from moe_tui.tui.screens.main import MainScreen
from moe_tui.tui.widgets.cache import CacheView
from moe_tui.tui.widgets.chat import MessageView, PromptInput


def make_app(session: FakeSession | None = None, **kwargs) -> tuple[MoeTuiApp, FakeSession]:
    """An app whose loader hands over ``session`` at once."""
    session = session or FakeSession()
    app = MoeTuiApp(LaunchOptions(), loader=lambda options, progress: LiveBackend(session), probe=FakeProbe(), **kwargs)
    return app, session


def run(test: Callable[[Pilot], object], app: MoeTuiApp, size: tuple[int, int] = (120, 40)) -> None:
    """Run ``test(pilot)`` against the app in a headless terminal."""

    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await wait_for(pilot, lambda: ready(app) or isinstance(app.screen, ErrorScreen))
            await test(pilot)

    asyncio.run(main())


async def wait_for(pilot: Pilot, condition: Callable[[], bool], timeout: float = 15.0) -> None:
    """Let the app run until ``condition`` holds (fails the test after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the app")
        await pilot.pause(0.02)


def ready(app: MoeTuiApp) -> bool:
    """The model is attached and the prompt has the focus."""
    screen = main_screen(app)
    return screen.backend.can_chat and app.focused is screen.query_one(PromptInput)


def main_screen(app: MoeTuiApp) -> MainScreen:
    assert app.main is not None
    return app.main


async def type_text(pilot: Pilot, text: str) -> None:
    """Type like a user, one key at a time."""
    keys = ["space" if char == " " else "question_mark" if char == "?" else char for char in text]
    await pilot.press(*keys)


async def send(pilot: Pilot, text: str) -> None:
    await type_text(pilot, text)
    await pilot.press("ctrl+j")


def messages(app: MoeTuiApp) -> list[tuple[str, str]]:
    return [(view.role, view.source) for view in app.screen.query(MessageView)]


async def palette(pilot: Pilot, query: str) -> None:
    await pilot.press("ctrl+p")
    await type_text(pilot, query)
    await pilot.pause(0.3)
    await pilot.press("enter")
    await pilot.pause(0.1)


def cache_slot_counts(app: MoeTuiApp) -> list[int]:
    view = app.screen.query_one(CacheView)
    rows = [line for line in str(view.render()).splitlines() if line.startswith("L")]
    return [len(row[5:].split("%")[0].split()) - 1 for row in rows]
