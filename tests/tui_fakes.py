"""Deterministic stand-ins for the dashboard's tests: synthetic routing traces, a fake engine and chat session,
and a fake system probe. The fake engine runs a real cache (the shared eviction policies) over seeded
routing with locality, so the panels show consistent hits, misses, slots and prefetch marks."""

from __future__ import annotations

import errno
import io
import json
import random
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from moe_tui.chat.session import GenerationResult
from moe_tui.errors import UserError
from moe_tui.policies import make_policy
from moe_tui.system import GpuSample, HostSample, SystemSample
from moe_tui.telemetry import ConfigEvent, LayerStep, Telemetry, TokenEvent, TraceEvent, TraceHeader

TEXT = (
    "The expert cache keeps the most recently used experts of every layer in fast memory, "
    "so a token whose router picks the same experts as the last one needs no copy at all. "
    "Prefetch guesses the next layer's experts from the current hidden state."
)
WORDS = TEXT.split(" ")


def header(
    layers: int = 6,
    experts: int = 8,
    k: int = 2,
    prefetch: int = 1,
    policy: str = "lru",
    top_k: int = 2,
    shared: int = 0,
) -> TraceHeader:
    """A Mixtral-like header (top-2) for synthetic traces; larger shapes with ``top_k`` and ``shared`` experts."""
    return TraceHeader(
        model="synthetic-mixtral" if experts == 8 else f"synthetic-{layers}x{experts}",
        num_layers=layers,
        num_experts=experts,
        top_k=top_k,
        shared_experts=shared,
        cache_size=(k,) * layers,
        policy=policy,
        prefetch=prefetch,
        expert_bytes=3 * 1024 * 1024,
        fast_tier="cpu",
        slow_tier="ram",
    )


class SyntheticRouter:
    """Seeded routing with locality through real per-layer caches; produces one LayerStep per layer per pass."""

    def __init__(self, head: TraceHeader, seed: int = 0):
        self.header = head
        self.rng = random.Random(seed)
        self.sizes = list(head.cache_size)
        self.policy_name = head.policy
        self.prefetch = head.prefetch
        favourites = max(3, 3 * head.top_k // 2)  # 3 for top-2 (the shipped snapshots), 12 for top-8
        self.favourites = [self.rng.sample(range(head.num_experts), favourites) for _ in range(head.num_layers)]
        self.resident: list[list[int]] = [[] for _ in range(head.num_layers)]
        self.policies = [make_policy(head.policy) for _ in range(head.num_layers)]
        self.guesses: list[tuple[int, ...]] = [() for _ in range(head.num_layers)]

    def configure(self, cache_size: int | None = None, policy: str | None = None, prefetch: int | None = None) -> None:
        """Change k, policy or prefetch from the next pass, as the engine does."""
        if cache_size is not None:
            self.sizes = [cache_size] * self.header.num_layers
            for layer, resident in enumerate(self.resident):
                order = self.policies[layer].order(resident)
                for victim in order[: max(0, len(resident) - cache_size)]:
                    resident.remove(victim)
                    self.policies[layer].evict(victim)
        if policy is not None:
            self.policy_name = policy
            for layer, resident in enumerate(self.resident):
                self.policies[layer] = make_policy(policy)
                for expert in resident:
                    self.policies[layer].insert(expert)
        if prefetch is not None:
            self.prefetch = prefetch

    def _route(self, layer: int) -> list[int]:
        experts = self.header.num_experts
        chosen: list[int] = []
        while len(chosen) < self.header.top_k:
            pool = self.favourites[layer] if self.rng.random() < 0.75 else range(experts)
            expert = self.rng.choice(list(pool))
            if expert not in chosen:
                chosen.append(expert)
        return chosen

    def step(self, step: int, when: float, n_tokens: int = 1) -> list[LayerStep]:
        """One forward pass through every layer."""
        steps = []
        for layer in range(self.header.num_layers):
            chosen = self._route(layer)
            policy = self.policies[layer]
            resident = self.resident[layer]
            issued = self.guesses[layer]
            prefetched = set(issued)
            hits, prefetch_hits, loaded = [], [], 0
            for expert in chosen:
                if expert in resident:
                    hits.append(True)
                    prefetch_hits.append(expert in prefetched)
                    policy.access(expert)
                else:
                    hits.append(False)
                    prefetch_hits.append(False)
                    loaded += 1
                    if len(resident) >= self.sizes[layer]:
                        victim = policy.victim(resident, protected=chosen)
                        if victim is not None:
                            resident.remove(victim)
                            policy.evict(victim)
                    resident.append(expert)
                    policy.insert(expert)
            weights = sorted((self.rng.uniform(0.3, 0.7) for _ in chosen), reverse=True)
            total = sum(weights)
            slots = list(policy.order(resident)) + [None] * (self.sizes[layer] - len(resident))
            steps.append(
                LayerStep(
                    step=step,
                    layer=layer,
                    n_tokens=n_tokens,
                    experts=tuple(chosen),
                    counts=(n_tokens,) * len(chosen),
                    weights=tuple(round(w / total, 4) for w in weights),
                    hits=tuple(hits),
                    prefetch_hits=tuple(prefetch_hits),
                    prefetch_issued=issued,
                    slots=tuple(slots),
                    bytes_loaded=loaded * self.header.expert_bytes,
                    load_s=0.002 * loaded,
                    compute_s=0.004,
                    time=when,
                )
            )
            self._prefetch_next(layer)
        return steps

    def _prefetch_next(self, layer: int) -> None:
        following = (layer + 1) % self.header.num_layers
        if not self.prefetch:
            self.guesses[following] = ()
            return
        guesses = tuple(e for e in self.favourites[following][: self.prefetch] if e not in self.resident[following])
        resident = self.resident[following]
        policy = self.policies[following]
        for expert in guesses:
            if len(resident) >= self.sizes[following]:
                victim = policy.victim(resident)
                if victim is None:
                    continue
                resident.remove(victim)
                policy.evict(victim)
            resident.append(expert)
            policy.insert(expert)
        self.guesses[following] = guesses


def synthetic_events(head: TraceHeader, tokens: int = 40, seed: int = 0, start: float = 1000.0) -> list[TraceEvent]:
    """A prefill pass then ``tokens`` decode passes, each followed by its token, 0.1 s apart."""
    router = SyntheticRouter(head, seed)
    events: list[TraceEvent] = list(router.step(0, start, n_tokens=12))
    for index in range(tokens):
        when = start + 0.1 * (index + 1)
        events.extend(router.step(index + 1, when))
        word = WORDS[index % len(WORDS)]
        events.append(TokenEvent(step=index + 1, text=(" " if index else "") + word, time=when))
    return events


def write_trace(path: Path, head: TraceHeader, events: list[TraceEvent]) -> Path:
    """Write a trace file the way the engine's telemetry does."""
    with path.open("w", encoding="utf-8") as handle:
        telemetry = Telemetry(head, trace=handle)
        for event in events:
            if isinstance(event, LayerStep):
                telemetry.record_step(event)
            elif isinstance(event, TokenEvent):
                telemetry.record_token(event)
            else:
                telemetry.record_config(event)
    return path


class FakeEngine:
    """The engine API the dashboard uses, over a SyntheticRouter; k, policy and prefetch apply at the next pass."""

    def __init__(self, head: TraceHeader, seed: int = 0):
        self.header = head
        self.router = SyntheticRouter(head, seed)
        self.miss = "copy"
        self.telemetry = Telemetry(head)
        self.last_step = 0
        self.model = None
        self.config = None
        self.kv_held = 0  # what the last set_cache_size was told the conversation's KV cache holds

    def forward(self, n_tokens: int = 1) -> None:
        """One forward pass."""
        self.last_step += 1
        for step in self.router.step(self.last_step, time.time(), n_tokens):
            self.telemetry.record_step(step)

    def snapshot(self):
        """The telemetry snapshot."""
        return self.telemetry.snapshot()

    def journal(self):
        """The routing kept in memory, as the engine's telemetry keeps it."""
        return self.telemetry.journal()

    def memory(self) -> dict[str, Any]:
        """A budget from the header and current sizes."""
        return {
            "fast_tier": "cpu",
            "slow_tier": "ram",
            "fast_tier_bytes": sum(self.router.sizes) * self.header.expert_bytes,
            "slow_tier_bytes": self.header.num_layers * self.header.num_experts * self.header.expert_bytes,
            "expert_bytes": self.header.expert_bytes,
        }

    def set_cache_size(self, k: int, layer: int | None = None, kv_held: int = 0) -> None:
        """Resize every layer; out-of-range k is refused like the engine does. Remembers ``kv_held``."""
        self.kv_held = kv_held
        if not 1 <= k <= self.header.num_experts:
            raise UserError(f"cache size {k} is out of range: choose 1..{self.header.num_experts} (experts per layer)")
        self.router.configure(cache_size=k)
        self._record_config()

    def set_policy(self, name: str) -> None:
        """Switch the policy."""
        self.router.configure(policy=name)
        self._record_config()

    def set_prefetch(self, p: int) -> None:
        """Change the prefetch depth."""
        self.router.configure(prefetch=p)
        self._record_config()

    def set_miss(self, mode: str) -> None:
        """Choose the miss mode (the synthetic router always copies; only the setting is recorded)."""
        if mode not in ("copy", "host", "auto"):
            raise UserError(f"unknown miss mode {mode!r}; choose from copy, host, auto")
        self.miss = mode
        self._record_config()

    def _record_config(self) -> None:
        self.telemetry.record_config(
            ConfigEvent(
                step=self.last_step,
                cache_size=tuple(self.router.sizes),
                policy=self.router.policy_name,
                prefetch=self.router.prefetch,
                miss=self.miss,
            )
        )

    def close(self) -> None:
        """Nothing to release."""


KV_BYTES_PER_WORD = 4096


class FakeSession:
    """A chat session that answers with words from :data:`WORDS`, one forward pass per word."""

    def __init__(
        self, head: TraceHeader | None = None, delay: float = 0.0, words: int = 12, fail: str = "", reply: str = ""
    ):
        self.engine = FakeEngine(head or header())
        self.reply = reply  # answer with this text (in pieces of a few characters) instead of WORDS
        self.model_name = "fake-mixtral"
        self.delay = delay
        self.words = words
        self.fail = fail
        self.prompts: list[list[dict[str, str]]] = []
        self.started = threading.Event()
        self.closed = False
        self.kv_bytes = 0  # KV_BYTES_PER_WORD for each word of the last answer, like a kept KV cache
        self.kv_tokens = 0
        self.fits: int | None = None  # the most messages a prompt holds; older ones are left out, as a full context
        self.fail_when: threading.Event | None = None  # with ``fail``: fail once this is set, as a slow prefill would

    def generate(self, messages, settings, on_text, stop_event=None) -> GenerationResult:
        """Stream ``words`` words (or fewer when stopped)."""
        self.prompts.append([dict(message) for message in messages])
        left_out = max(len(messages) - self.fits, 0) if self.fits else 0
        if self.fail:
            if self.fail_when is not None:
                self.fail_when.wait(10)
            raise UserError(self.fail)
        start = time.perf_counter()
        first = None  # seconds to the first piece
        self.engine.forward(n_tokens=8)
        pieces = []
        self.started.set()
        if self.reply:
            for offset in range(0, len(self.reply), 7):
                pieces.append(self.reply[offset : offset + 7])
                self.engine.forward()
                if len(pieces) == 1:
                    first = time.perf_counter() - start
                on_text(pieces[-1])
            seconds = time.perf_counter() - start + 1e-9
            return GenerationResult("".join(pieces), len(pieces), seconds, False, 8, left_out, first_token_s=first)
        for index in range(self.words):
            if stop_event is not None and stop_event.is_set():
                break
            if self.delay:
                time.sleep(self.delay)
            self.engine.forward()
            piece = ("" if index == 0 else " ") + WORDS[index % len(WORDS)]
            self.engine.telemetry.record_token(TokenEvent(step=self.engine.last_step, text=piece))
            pieces.append(piece)
            if len(pieces) == 1:
                first = time.perf_counter() - start
            on_text(piece)
        stopped = stop_event is not None and stop_event.is_set()
        self.kv_tokens = len(pieces)
        self.kv_bytes = KV_BYTES_PER_WORD * self.kv_tokens
        seconds = time.perf_counter() - start + 1e-9
        return GenerationResult("".join(pieces), len(pieces), seconds, stopped, 8, left_out, first_token_s=first)

    def close(self) -> None:
        """Remember that the app released the session."""
        self.closed = True

    def model_defaults(self) -> dict[str, Any]:
        """Like a model whose generation_config.json recommends greedy decoding and short answers."""
        return {"temperature": 0.0, "max_new_tokens": 64}

    @property
    def can_think(self) -> bool:
        """Fake models do not think."""
        return False


class FakeProbe:
    """A fixed system sample: one 16 GiB GPU (or none), 32 GiB of RAM."""

    def __init__(self, gpu: bool = True):
        self.gpu = gpu
        self.samples = 0

    def sample(self) -> SystemSample:
        """The same reading every time."""
        self.samples += 1
        gpus = ()
        if self.gpu:
            gpus = (
                GpuSample(
                    index=0,
                    uuid="GPU-fake",
                    name="Fake GPU 16GB",
                    memory_used=6 << 30,
                    memory_total=16 << 30,
                    utilization=37,
                    pcie_rx=2 << 30,
                    pcie_tx=64 << 20,
                    process_allocated=4 << 30,
                    process_reserved=5 << 30,
                ),
            )
        host = HostSample(ram_total=32 << 30, ram_used=12 << 30, ram_available=20 << 30, rss=3 << 30)
        return SystemSample(gpus=gpus, gpu_status="" if self.gpu else "no NVIDIA GPU: test", host=host, time=0.0)

    def close(self) -> None:
        """Nothing to release."""


def trace_lines(path: Path) -> list[dict[str, Any]]:
    """A trace file's records."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def as_dict(event: TraceEvent) -> dict[str, Any]:
    """An event as plain data."""
    return asdict(event)


class FullDisk(io.StringIO):
    """A trace file on a disk that fills after ``room`` writes: every later write, and the close, fail."""

    name = "/mnt/full/session.jsonl"

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room
        self.written = ""

    def write(self, text: str) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= 1
        self.written += text
        return super().write(text)

    def flush(self) -> None:
        if self.room <= 0 and not self.closed:
            raise OSError(errno.ENOSPC, "No space left on device")
        super().flush()

    def close(self) -> None:
        if self.room <= 0 and not self.closed:
            super().close()
            raise OSError(errno.ENOSPC, "No space left on device")
        super().close()
