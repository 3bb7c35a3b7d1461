"""SVG snapshots of the main screen on a replayed trace (paused at a fixed point), with a fake GPU probe.

Nothing in these screens depends on the clock: the trace carries its own times, the replay is paused, the
memory panel reads a fixed sample, and the history is empty. Update with ``pytest --snapshot-update`` after a
deliberate change, and look at the SVGs in tests/__snapshots__ before committing them.
"""

from __future__ import annotations

import time

from tui_fakes import FakeProbe, header, synthetic_events
from tui_helpers import wait_for

from moe_tui.replay import Replay
from moe_tui.tui.app import MoeTuiApp
from moe_tui.tui.backend import LaunchOptions, ReplayBackend
from moe_tui.tui.widgets.memory import MemoryView

PLAYED_EVENTS = 6 * 41 + 40  # the prefill, 40 decode passes of 6 layers, their 40 tokens


def replay_app(theme: str | None = None) -> MoeTuiApp:
    """The dashboard on a synthetic 6-layer trace, paused after 40 tokens."""
    head = header(layers=6)
    events = synthetic_events(head, tokens=80)

    def loader(options: LaunchOptions, progress) -> ReplayBackend:
        replay = Replay(head, events)
        replay.play(PLAYED_EVENTS)
        replay.paused = True
        return ReplayBackend(replay, "synthetic-mixtral (replay)")

    return MoeTuiApp(LaunchOptions(replay="synthetic.jsonl"), loader=loader, probe=FakeProbe(), theme=theme)


async def settled(pilot, panels_shown: bool = True) -> None:
    """Wait for the replayed text, the first memory sample and the first panel draw."""
    app = pilot.app
    await wait_for(pilot, lambda: app.main is not None and app.main.backend.mode == "replay")
    await wait_for(pilot, lambda: app.screen.id == "main" and app.main.query_one(MemoryView).sample is not None)
    await wait_for(pilot, lambda: bool(app.main.query("MessageView")))
    if panels_shown:
        await wait_for(pilot, lambda: app.main.redraws > 0)
    await pilot.pause(0.3)


def test_main_screen_80x24(snap_compare) -> None:
    assert snap_compare(replay_app(), terminal_size=(80, 24), run_before=settled)


def test_main_screen_160x48(snap_compare) -> None:
    assert snap_compare(replay_app(), terminal_size=(160, 48), run_before=settled)


async def steady(pilot, value, still: float = 0.3, timeout: float = 10.0) -> None:
    """Wait until ``value()`` has stayed the same for ``still`` seconds (a scroll that settles on a loaded machine)."""
    deadline = time.monotonic() + timeout
    last, since = value(), time.monotonic()
    while time.monotonic() - since < still:
        assert time.monotonic() < deadline, "timed out waiting for the screen to settle"
        await pilot.pause(0.05)
        if (now := value()) != last:
            last, since = now, time.monotonic()


def test_narrow_terminal_panels_view_60x20(snap_compare) -> None:
    async def panels(pilot) -> None:
        await settled(pilot, panels_shown=False)
        await pilot.press("f6")
        await wait_for(pilot, lambda: pilot.app.main.redraws > 0)
        dashboard = pilot.app.main.dashboard  # focusing a panel scrolls the panels column; its scrollbar is drawn
        await steady(pilot, lambda: (dashboard.scroll_y, dashboard.max_scroll_y, dashboard.virtual_size))
        await pilot.pause(0.3)

    assert snap_compare(replay_app(), terminal_size=(60, 20), run_before=panels)


def test_high_contrast_theme_100x30(snap_compare) -> None:
    assert snap_compare(replay_app(theme="moe-contrast"), terminal_size=(100, 30), run_before=settled)


def big_replay_app(layers: int, experts: int, shared: int) -> MoeTuiApp:
    """The dashboard on a synthetic trace of a large MoE shape (top-8, k=16, prefetch 8), paused at its end."""
    head = header(layers=layers, experts=experts, k=16, prefetch=8, top_k=8, shared=shared)
    events = synthetic_events(head, tokens=20)

    def loader(options: LaunchOptions, progress) -> ReplayBackend:
        replay = Replay(head, events)
        replay.play()
        replay.paused = True
        return ReplayBackend(replay, f"synthetic {layers}x{experts} (replay)")

    return MoeTuiApp(LaunchOptions(replay="synthetic.jsonl"), loader=loader, probe=FakeProbe())


def test_qwen3_30b_shape_48x128_panels_view_80x24(snap_compare) -> None:
    async def panels(pilot) -> None:
        await settled(pilot, panels_shown=False)
        await pilot.press("f6")
        await wait_for(pilot, lambda: pilot.app.main.redraws > 0)
        await pilot.pause(0.3)

    assert snap_compare(big_replay_app(48, 128, 0), terminal_size=(80, 24), run_before=panels)


def test_deepseek_v3_shape_61x256_with_a_shared_expert_160x48(snap_compare) -> None:
    assert snap_compare(big_replay_app(61, 256, 1), terminal_size=(160, 48), run_before=settled)
