"""Replaying a trace through a fresh Telemetry: same counters as live, adjustable speed, clear errors."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest
from tui_fakes import header, synthetic_events, write_trace

from moe_tui.errors import UserError
from moe_tui.replay import ANSWER_BREAK, MAX_GAP_S, MAX_SPEED, MIN_SPEED, Replay, playback_offsets
from moe_tui.telemetry import LayerStep, Telemetry, TokenEvent


def _live_snapshot(head, events):
    telemetry = Telemetry(head)
    for event in events:
        if isinstance(event, LayerStep):
            telemetry.record_step(event)
        elif isinstance(event, TokenEvent):
            telemetry.record_token(event)
    return telemetry.snapshot()


def test_full_replay_reproduces_the_live_counters(tmp_path: Path) -> None:
    head = header()
    events = synthetic_events(head, tokens=30)
    replay = Replay.open(write_trace(tmp_path / "t.jsonl", head, events))
    tokens = replay.play()
    live = _live_snapshot(head, events)
    snapshot = replay.snapshot()
    assert replay.finished
    assert len(tokens) == 30
    assert snapshot.totals == live.totals
    assert [layer.slots for layer in snapshot.layers] == [layer.slots for layer in live.layers]
    assert snapshot.tokens_per_s == pytest.approx(live.tokens_per_s)


def test_the_replayed_text_breaks_between_answers() -> None:
    """A trace keeps answers, not the questions between them: each answer after the first (its first token
    follows a prefill pass) starts after a rule, where it used to run on from the last word of the one before."""
    head = header()
    first = synthetic_events(head, tokens=3)
    second = [replace(event, step=event.step + 10) for event in synthetic_events(head, tokens=2, start=2000.0)]
    replay = Replay(head, first + second)
    tokens = replay.play()
    assert replay.answer_text(tokens) == "The expert cache" + ANSWER_BREAK + "The expert"
    assert replay.answer_text(tokens[3:]) == ANSWER_BREAK + "The expert"  # a piece that starts the second answer
    assert replay.answer_text(tokens[:3]) == "The expert cache"
    fenced = [replace(event, text="```py\nx") if isinstance(event, TokenEvent) and event.step == 2 else event
              for event in first]  # fmt: skip
    replay = Replay(head, fenced + second)
    assert replay.answer_text(replay.play()) == "The```py\nx cache\n```" + ANSWER_BREAK + "The expert"


def test_an_answer_marked_first_breaks_without_a_prefill_pass() -> None:
    """A regenerated answer can start after a one-token pass (the rest of its prompt was in the kept KV cache):
    its first token carries the mark that sets it apart."""
    head = header()
    first = synthetic_events(head, tokens=3)
    second = [
        replace(event, step=event.step + 10, n_tokens=1)
        if isinstance(event, LayerStep)
        else replace(event, step=event.step + 10, first=event.step == 1)
        for event in synthetic_events(head, tokens=2, start=2000.0)
        if not (isinstance(event, LayerStep) and event.step == 0)  # no prefill pass
    ]
    replay = Replay(head, first + second)
    assert replay.answer_text(replay.play()) == "The expert cache" + ANSWER_BREAK + "The expert"


def test_advance_releases_events_at_the_recorded_pace_times_speed() -> None:
    head = header(layers=2)
    events = synthetic_events(head, tokens=10)  # one pass every 0.1 s after the prefill
    replay = Replay(head, events, speed=1.0)
    assert [t.text for t in replay.advance(0.0)] == []
    assert replay.position == 2, "the prefill pass (both layers) plays at once"
    tokens = replay.advance(0.25)
    assert len(tokens) == 2, "0.25 s at speed 1 reaches the second token"
    replay.speed = 4.0
    tokens = replay.advance(0.25)
    assert len(tokens) == 8 and replay.finished, "at speed 4, 0.25 s covers the last 0.8 s"


def test_pause_holds_the_clock() -> None:
    head = header(layers=1)
    replay = Replay(head, synthetic_events(head, tokens=5))
    replay.paused = True
    assert replay.advance(10.0) == []
    assert replay.position == 0
    replay.paused = False
    assert len(replay.advance(10.0)) == 5


def test_restart_clears_the_counters() -> None:
    head = header(layers=1)
    replay = Replay(head, synthetic_events(head, tokens=5))
    replay.play()
    assert replay.snapshot().tokens == 5
    replay.restart()
    assert replay.position == 0 and replay.snapshot().tokens == 0 and replay.snapshot().totals.accesses == 0


def test_speed_is_clamped_and_must_be_positive() -> None:
    head = header(layers=1)
    replay = Replay(head, [])
    replay.speed = 1000
    assert replay.speed == MAX_SPEED
    replay.speed = 0.001
    assert replay.speed == MIN_SPEED
    with pytest.raises(UserError, match="positive"):
        replay.speed = 0


def test_long_pauses_are_cut_and_missing_times_get_a_default_pace() -> None:
    head = header(layers=1)
    events = synthetic_events(head, tokens=3)
    gap = [*events[:2], *[_shifted(e, 3600.0) for e in events[2:]]]
    offsets = playback_offsets(gap)
    assert offsets[-1] - offsets[1] <= MAX_GAP_S + 0.3
    untimed = [_shifted(e, -e.time) for e in events]
    offsets = playback_offsets(untimed)
    assert offsets == sorted(offsets) and offsets[-1] > 0


def _shifted(event, seconds: float):
    from dataclasses import replace

    return replace(event, time=event.time + seconds)


def test_run_plays_to_the_end_in_a_thread() -> None:
    head = header(layers=1)
    replay = Replay(head, synthetic_events(head, tokens=4), speed=64.0)
    seen: list[str] = []
    stop = threading.Event()
    worker = threading.Thread(target=replay.run, args=(stop, lambda tokens: seen.extend(t.text for t in tokens)))
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert replay.finished and len(seen) == 4


def test_run_stops_when_asked() -> None:
    head = header(layers=1)
    replay = Replay(head, synthetic_events(head, tokens=50), speed=MIN_SPEED)
    stop = threading.Event()
    worker = threading.Thread(target=replay.run, args=(stop,))
    worker.start()
    stop.set()
    worker.join(timeout=5)
    assert not worker.is_alive() and not replay.finished


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "cannot read trace"),
        ("", "is empty"),
        ("not json\n", "line 1: not valid JSON"),
        ('{"type": "step"}\n', "starts with a header"),
    ],
)
def test_unreadable_traces_raise_user_errors(tmp_path: Path, content: str | None, fragment: str) -> None:
    path = tmp_path / "bad.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=fragment):
        Replay.open(path)
