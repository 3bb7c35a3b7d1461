"""When the dashboard redraws: at most ``max_hz`` times a second, less when drawing costs too much CPU.

Drawing happens on the UI thread, which shares the interpreter lock with the generating thread: every
millisecond spent repainting panels is one the model does not get. :class:`FramePacer` watches the UI
thread's own CPU time and stretches the interval between redraws (down to ``min_hz``) while the UI uses
more than ``budget`` of a core, and shortens it again once drawing is cheap (a slow model, an idle engine).
"""

from __future__ import annotations

import time
from collections.abc import Callable

WINDOW_S = 0.5
STEP = 1.5


class FramePacer:
    """Redraw pacing from the UI thread's CPU share over the last second (call from the UI thread only)."""

    def __init__(
        self,
        max_hz: float = 10.0,
        min_hz: float = 2.0,
        budget: float = 0.05,
        clock: Callable[[], float] = time.perf_counter,
        cpu: Callable[[], float] = time.thread_time,
    ):
        if not 0 < min_hz <= max_hz:
            raise ValueError(f"need 0 < min_hz <= max_hz, got {min_hz} and {max_hz}")
        self.max_interval = 1.0 / min_hz
        self.min_interval = 1.0 / max_hz
        self.interval = self.min_interval
        self.budget = budget
        self._clock = clock
        self._cpu = cpu
        self._last_draw = float("-inf")
        self._window_start = clock()
        self._window_cpu = cpu()
        self.share = 0.0

    @property
    def hz(self) -> float:
        """Redraws per second at the current interval."""
        return 1.0 / self.interval

    def due(self) -> bool:
        """Whether it is time to redraw (and if so, counts this as the redraw)."""
        self._adjust()
        now = self._clock()
        if now - self._last_draw >= self.interval * 0.95:
            self._last_draw = now
            return True
        return False

    def _adjust(self) -> None:
        now = self._clock()
        elapsed = now - self._window_start
        if elapsed < WINDOW_S:
            return
        cpu = self._cpu()
        self.share = (cpu - self._window_cpu) / elapsed
        self._window_start, self._window_cpu = now, cpu
        if self.share > self.budget:
            self.interval = min(self.interval * STEP, self.max_interval)
        elif self.share < self.budget * 0.6:
            self.interval = max(self.interval / STEP, self.min_interval)
