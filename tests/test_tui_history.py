"""History survives a killed app: an answer streaming in a real process, SIGKILL, a new app shows all of it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from textual.pilot import Pilot
from tui_fakes import FakeProbe, FakeSession
from tui_helpers import wait_for

from moe_tui.tui.app import MoeTuiApp
from moe_tui.tui.backend import LaunchOptions, LiveBackend
from moe_tui.tui.widgets.chat import MessageView
from moe_tui.tui.widgets.conversations import ConversationList

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

CHILD = """
import asyncio, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from tui_fakes import FakeProbe, FakeSession
from moe_tui.tui.app import MoeTuiApp
from moe_tui.tui.backend import LaunchOptions, LiveBackend
from moe_tui.tui.widgets.chat import MessageView

marker = Path({marker!r})
session = FakeSession(words=100000, delay=0.01)
app = MoeTuiApp(LaunchOptions(), loader=lambda options, progress: LiveBackend(session), probe=FakeProbe())

async def main():
    async with app.run_test(size=(100, 30)) as pilot:
        while not (app.main and app.main.backend.can_chat):
            await pilot.pause(0.05)
        await pilot.press(*"remember", "ctrl+j")
        while len(app.main.query(MessageView).last().source.split()) < 30:
            await pilot.pause(0.05)
        shown = app.main.query(MessageView).last().source
        partial = marker.with_suffix(".part")
        partial.write_text(shown)
        partial.rename(marker)
        await asyncio.sleep(120)

asyncio.run(main())
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_answer_shown_before_a_kill_is_there_after_a_restart(tmp_path: Path) -> None:
    marker = tmp_path / "shown.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(tests=str(TESTS), marker=str(marker))],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 90
        while not marker.exists():
            if child.poll() is not None:
                raise AssertionError(f"the app died early: {child.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("the app never showed an answer")
            time.sleep(0.05)
        shown = marker.read_text()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert len(shown.split()) >= 30

    app = MoeTuiApp(LaunchOptions(), loader=lambda options, progress: LiveBackend(FakeSession()), probe=FakeProbe())

    async def check(pilot: Pilot) -> None:
        await wait_for(pilot, lambda: app.main is not None and app.main.backend.can_chat)
        await pilot.press("f2")
        listing = app.main.query_one(ConversationList)
        assert listing.option_count == 1 and "remember" in str(listing.get_option_at_index(0).prompt)
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(app.main.query(MessageView)) == 2)
        views = list(app.main.query(MessageView))
        assert views[0].source == "remember"
        assert views[1].source.startswith(shown), "everything shown before the kill was saved"

    async def main() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await check(pilot)

    asyncio.run(main())
