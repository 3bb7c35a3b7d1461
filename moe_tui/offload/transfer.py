"""Moving expert buffers from the slow tier into slots, and timing copies against computation.

On CPU a copy is a ``copy_`` from the store (RAM or a mapped file) into a slot. When a core is free of
torch's computing threads it runs on a background thread there, so that it overlaps computation (and the
page faults of a mapped store), and the time the computing thread waits for it is load time; when torch
computes on every core it runs on the computing thread (torch spreads it over its threads), where a copy
thread would only take turns with them and stall each of their barriers, and its whole time is load time.

On CUDA copies run on a separate stream with ``non_blocking=True`` from pinned memory; the compute stream
waits on a per-slot ``ready`` event, and a copy into a slot waits on that slot's ``free`` event, so the host
never waits for a copy. Time is measured with CUDA events (resolved after the forward pass): load time is
how long the compute stream stalled waiting.
"""

from __future__ import annotations

import os
import queue
import threading
import time

import torch
from torch import Tensor

from moe_tui.offload.cache import LayerCache


class Timer:
    """Load and compute time of one layer pass (CPU: wall clock; CUDA: events resolved later)."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.load_s = 0.0
        self.compute_s = 0.0
        self._stalls: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._span: tuple[torch.cuda.Event, torch.cuda.Event] | None = None

    def seconds(self) -> tuple[float, float]:
        """(load_s, compute_s); on CUDA this waits for the pass's last event (call after the forward pass)."""
        if not self.cuda or self._span is None:
            return self.load_s, self.compute_s
        start, end = self._span
        end.synchronize()
        stalled = sum(a.elapsed_time(b) for a, b in self._stalls) / 1000.0
        total = start.elapsed_time(end) / 1000.0
        return self.load_s + stalled, max(total - stalled, 0.0)


def _timed_event(stream: torch.cuda.Stream) -> torch.cuda.Event:
    event = torch.cuda.Event(enable_timing=True)
    event.record(stream)
    return event


def copies_can_overlap(threads: int | None = None, cores: int | None = None) -> bool:
    """Whether a background copy thread would have a core of its own: torch computes on fewer threads
    (``torch.get_num_threads()``) than this process may run on (its CPU affinity)."""
    if threads is None:
        threads = torch.get_num_threads()
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return threads < cores


class CpuMover:
    """Copies on one background thread when a core is free for it (see :func:`copies_can_overlap`), so that a
    copy overlaps computation; else on the computing thread, as it is asked for.

    ``load`` queues the copy and returns (or copies, timing it as load time); computation on a slot first waits
    for that slot's copy (the wait is the load time). Copies run in queue order, and a slot is only queued
    for a copy after the host has finished computing with it, so no copy ever overwrites a slot being read.
    """

    cuda = False

    def __init__(self, background: bool | None = None) -> None:
        self._jobs: queue.SimpleQueue[_CopyJob | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        if copies_can_overlap() if background is None else background:
            self._thread = threading.Thread(target=self._run, name="moe-tui-expert-copies", daemon=True)
            self._thread.start()

    @property
    def background(self) -> bool:
        """Whether copies run on the copy thread (else on the computing thread)."""
        return self._thread is not None

    def load(self, cache: LayerCache, slot: int, source: Tensor, timer: Timer | None) -> None:
        """Queue the copy of ``source`` into ``slot`` (or make it now, without a copy thread)."""
        job = _CopyJob(cache.slots[slot], source)
        cache.ready[slot] = job
        cache.pending[slot] = True
        if self._thread is not None:
            self._jobs.put(job)
            return
        start = time.perf_counter() if timer is not None else 0.0
        job.run()
        if timer is not None:
            timer.load_s += time.perf_counter() - start

    def before_compute(self, cache: LayerCache, slot: int, timer: Timer | None) -> None:
        """Wait for the slot's copy, timing the wait; a failed copy empties the slot and raises here."""
        if not cache.pending[slot]:
            return
        job = cache.ready[slot]
        start = time.perf_counter() if timer is not None else 0.0
        job.done.wait()
        if timer is not None:
            timer.load_s += time.perf_counter() - start
        cache.pending[slot] = False
        if job.error is not None:
            cache.clear(slot)
            raise job.error

    def begin(self, timer: Timer | None) -> float:
        """Mark the start of a computation; returns a token for :meth:`after_compute`."""
        return time.perf_counter() if timer is not None else 0.0

    def after_compute(self, cache: LayerCache, slot: int, timer: Timer | None, token: float) -> None:
        """Count the computation's wall time."""
        if timer is not None:
            timer.compute_s += time.perf_counter() - token

    def after_host_compute(self, timer: Timer | None, token: float) -> None:
        """Count an expert computed on the host from the store."""
        if timer is not None:
            timer.compute_s += time.perf_counter() - token

    def start_pass(self, timer: Timer | None) -> None:
        """Nothing to mark on CPU."""

    def end_pass(self, timer: Timer | None) -> None:
        """Nothing to mark on CPU."""

    def drain(self) -> None:
        """Wait until every queued copy has finished."""
        if self._thread is None:
            return
        marker = _CopyJob(None, None)
        self._jobs.put(marker)
        marker.done.wait()

    def close(self) -> None:
        """Stop the copy thread after the queued copies."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            job.run()


class _CopyJob:
    """One queued copy (or, without a target, a marker) and its completion."""

    __slots__ = ("done", "error", "source", "target")

    def __init__(self, target: Tensor | None, source: Tensor | None):
        self.target = target
        self.source = source
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        """Make the copy; an error is kept for the computing thread (:meth:`CpuMover.before_compute` raises it)."""
        try:
            if self.target is not None:
                self.target.copy_(self.source)
        except BaseException as error:
            self.error = error
        self.done.set()


class CudaMover:
    """Copies on a dedicated stream, ordered against computation with per-slot events."""

    cuda = True

    def __init__(self, device: torch.device):
        self.device = device
        self.copy_stream = torch.cuda.Stream(device)

    def load(self, cache: LayerCache, slot: int, source: Tensor, timer: Timer | None) -> None:
        """Queue the copy of ``source`` into ``slot`` after the slot's last reader; returns at once."""
        stream = self.copy_stream
        if cache.used[slot]:
            stream.wait_event(cache.free[slot])
        with torch.cuda.stream(stream):
            cache.slots[slot].copy_(source, non_blocking=True)
        cache.ready[slot].record(stream)
        cache.pending[slot] = True

    def begin(self, timer: Timer | None) -> float:
        """Computation is timed per pass on CUDA (host computation falls inside that span)."""
        return 0.0

    def after_host_compute(self, timer: Timer | None, token: float) -> None:
        """Host computation blocks this thread and the device waits for its result: the pass's span counts it."""

    def before_compute(self, cache: LayerCache, slot: int, timer: Timer | None) -> None:
        """Make the compute stream wait (on the device) for the slot's copy, timing the stall."""
        if not cache.pending[slot]:
            return
        compute = torch.cuda.current_stream(self.device)
        if timer is None:
            compute.wait_event(cache.ready[slot])
        else:
            before = _timed_event(compute)
            compute.wait_event(cache.ready[slot])
            timer._stalls.append((before, _timed_event(compute)))
        cache.pending[slot] = False

    def after_compute(self, cache: LayerCache, slot: int, timer: Timer | None, token: float) -> None:
        """Record that the slot's readers are queued, so a later copy into it waits for them."""
        cache.free[slot].record(torch.cuda.current_stream(self.device))
        cache.used[slot] = True

    def start_pass(self, timer: Timer | None) -> None:
        """Mark the start of the layer's expert computation."""
        if timer is not None:
            compute = torch.cuda.current_stream(self.device)
            timer._span = (_timed_event(compute), _timed_event(compute))

    def end_pass(self, timer: Timer | None) -> None:
        """Mark the end of the layer's expert computation."""
        if timer is not None and timer._span is not None:
            timer._span = (timer._span[0], _timed_event(torch.cuda.current_stream(self.device)))

    def drain(self) -> None:
        """Wait until every queued copy (and computation) has finished."""
        torch.cuda.synchronize(self.device)

    def close(self) -> None:
        """Finish the queued copies."""
        self.drain()


Mover = CpuMover | CudaMover


def make_mover(device: torch.device) -> Mover:
    """The mover for a fast-tier device."""
    return CudaMover(device) if device.type == "cuda" else CpuMover()
