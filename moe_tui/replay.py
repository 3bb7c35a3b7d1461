"""Play a recorded trace back through a fresh :class:`~moe_tui.telemetry.Telemetry`, with no model loaded.

The dashboard polls a replay exactly as it polls a live engine (``snapshot()``), so every panel can be shown,
tested and demonstrated from a trace file (``moe-tui chat --replay TRACE``). Events are released at the pace
they were recorded, times ``speed``; long pauses in the recording (someone typing the next prompt) are cut to
:data:`MAX_GAP_S`, and traces without usable times play at :data:`DEFAULT_STEPS_PER_S`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from moe_tui.errors import UserError
from moe_tui.telemetry import (
    ConfigEvent,
    LayerStep,
    Snapshot,
    Telemetry,
    TokenEvent,
    TraceError,
    TraceEvent,
    TraceHeader,
    read_trace,
)

MAX_GAP_S = 1.0
DEFAULT_STEPS_PER_S = 8.0
MIN_SPEED = 0.125
MAX_SPEED = 64.0
# Put between two recorded answers in the replayed text: a trace keeps the answers' tokens, not the questions.
ANSWER_BREAK = "\n\n---\n\n"


class Replay:
    """A trace being played into a telemetry aggregate; thread-safe between one player and any readers."""

    def __init__(self, header: TraceHeader, events: list[TraceEvent], speed: float = 1.0):
        self.header = header
        self.events = events
        self.telemetry = Telemetry(header)
        self._offsets = playback_offsets(events)
        self._lock = threading.Lock()
        self._position = 0
        self._clock_s = 0.0
        self.speed = speed
        self.paused = False
        self.notes: list[str] = []  # what reading the trace noticed (a cut-off last line)
        self._answer_breaks = _answer_breaks(events)

    @classmethod
    def open(cls, path: str | Path, speed: float = 1.0) -> Replay:
        """Read a trace file; an unreadable or malformed one raises :class:`UserError` with the reason."""
        notes: list[str] = []
        try:
            header, events = read_trace(path, notes)
        except TraceError as error:
            raise UserError(str(error)) from None
        replay = cls(header, events, speed=speed)
        replay.notes = notes
        return replay

    @property
    def speed(self) -> float:
        """Playback speed, 1.0 = as recorded."""
        return self._speed

    @speed.setter
    def speed(self, value: float) -> None:
        if not value > 0:
            raise UserError(f"replay speed must be positive, not {value}")
        self._speed = min(max(float(value), MIN_SPEED), MAX_SPEED)

    @property
    def position(self) -> int:
        """How many events have been played."""
        return self._position

    @property
    def finished(self) -> bool:
        """Whether every event has been played."""
        return self._position >= len(self.events)

    @property
    def duration_s(self) -> float:
        """Playing time of the whole trace at speed 1."""
        return self._offsets[-1] if self._offsets else 0.0

    @property
    def elapsed_s(self) -> float:
        """Playing time reached so far, at speed 1."""
        return self._clock_s

    def snapshot(self) -> Snapshot:
        """What the panels show now."""
        return self.telemetry.snapshot()

    def answer_text(self, tokens: list[TokenEvent]) -> str:
        """The tokens' text as the chat shows it: a rule (:data:`ANSWER_BREAK`) before each token that starts an
        answer after the first, so that answers do not run into one another."""
        return "".join(self._answer_breaks.get(token.step, "") + token.text for token in tokens)

    def play(self, count: int | None = None) -> list[TokenEvent]:
        """Play the next ``count`` events (all remaining ones when None) at once; returns their tokens."""
        with self._lock:
            end = len(self.events) if count is None else min(len(self.events), self._position + count)
            tokens = self._play_to(end)
            if self._position:
                self._clock_s = max(self._clock_s, self._offsets[self._position - 1])
            return tokens

    def advance(self, seconds: float) -> list[TokenEvent]:
        """Move the playing clock on by ``seconds`` of wall time (times speed) and play what became due."""
        with self._lock:
            if self.paused:
                return []
            self._clock_s += seconds * self._speed
            end = self._position
            while end < len(self.events) and self._offsets[end] <= self._clock_s:
                end += 1
            return self._play_to(end)

    def restart(self) -> None:
        """Start again from the first event with empty counters."""
        with self._lock:
            self.telemetry.reset(self.header)
            self._position = 0
            self._clock_s = 0.0

    def seconds_to_next(self) -> float:
        """Wall seconds until the next event is due at the current speed (0 when due, inf when finished)."""
        with self._lock:
            if self._position >= len(self.events):
                return float("inf")
            return max(0.0, (self._offsets[self._position] - self._clock_s) / self._speed)

    def run(
        self,
        stop: threading.Event,
        on_tokens: Callable[[list[TokenEvent]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_wait_s: float = 0.1,
    ) -> None:
        """Play in real time until finished or ``stop`` is set (blocking: run it in a thread)."""
        last = clock()
        while not stop.is_set() and not self.finished:
            now = clock()
            tokens = self.advance(now - last)
            last = now
            if tokens and on_tokens is not None:
                on_tokens(tokens)
            stop.wait(min(max(self.seconds_to_next(), 0.001), max_wait_s))

    def _play_to(self, end: int) -> list[TokenEvent]:
        tokens = []
        for event in self.events[self._position : end]:
            if isinstance(event, LayerStep):
                self.telemetry.record_step(event)
            elif isinstance(event, TokenEvent):
                self.telemetry.record_token(event)
                tokens.append(event)
            elif isinstance(event, ConfigEvent):
                self.telemetry.record_config(event)
        self._position = max(self._position, end)
        return tokens


def _answer_breaks(events: list[TraceEvent]) -> dict[int, str]:
    """For each token that starts an answer after the first (marked ``first``, or in older traces the first token
    after a prefill pass, :attr:`LayerStep.is_prefill`), the text to put before it:
    :data:`ANSWER_BREAK`, after a closing fence when the answer before it left a code block open."""
    breaks: dict[int, str] = {}
    answer: list[str] = []
    after_prefill = False
    for event in events:
        if isinstance(event, LayerStep) and event.is_prefill:
            after_prefill = True
        elif isinstance(event, TokenEvent):
            if (after_prefill or event.first) and answer:
                unclosed = "".join(answer).count("```") % 2 == 1
                breaks[event.step] = ("\n```" if unclosed else "") + ANSWER_BREAK
                answer = []
            answer.append(event.text)
            after_prefill = False
    return breaks


def playback_offsets(events: list[TraceEvent]) -> list[float]:
    """Seconds from the start at which each event plays (at speed 1), never decreasing.

    Recorded times are followed, with gaps cut to :data:`MAX_GAP_S`; where a trace has no usable times
    (zero or going backwards), each new forward pass takes ``1 / DEFAULT_STEPS_PER_S`` seconds.
    """
    offsets = []
    clock = 0.0
    previous_time: float | None = None
    previous_step: int | None = None
    for event in events:
        recorded = getattr(event, "time", 0.0)
        step = event.step
        if previous_time is not None and recorded > 0 and recorded >= previous_time:
            clock += min(recorded - previous_time, MAX_GAP_S)
        elif previous_step is not None and step != previous_step:
            clock += 1.0 / DEFAULT_STEPS_PER_S
        if recorded > 0:
            previous_time = recorded
        previous_step = step
        offsets.append(clock)
    return offsets
