"""What the dashboard is attached to: a live model session or a replayed trace, behind one small interface.

The screens only call :class:`Backend` methods, so the same panels, palette and tests work for both. Loading
(``load_backend``) imports torch and transformers and may take seconds: the app runs it in a worker thread
behind the loading screen.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from moe_tui.engine_config import OffloadConfig
from moe_tui.errors import UserError
from moe_tui.import_lock import TRANSFORMERS_IMPORTS
from moe_tui.telemetry import Snapshot, TokenEvent, TraceError, TraceEvent, TraceHeader, parse_trace_lines
from moe_tui.tui.params_view import HeldPrecisions

if TYPE_CHECKING:
    from moe_tui.replay import Replay

Progress = Callable[[str, int, int], None]
_TORCH_PRECISIONS = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}


def _engine_default() -> OffloadConfig:
    return OffloadConfig(device="auto")


@dataclass(frozen=True)
class LaunchOptions:
    """What the command line asked for: the model (or a trace to replay), the engine's settings, and where
    quantized stores and the session's trace are kept."""

    model: str | None = None
    engine: OffloadConfig = field(default_factory=_engine_default)
    quant_cache: str | None = None  # a directory for quantized stores (None: the user cache directory)
    no_quant_cache: bool = False  # quantize on every start, keep nothing on disk
    replay: str | None = None
    replay_speed: float = 1.0
    record: str | None = None

    def offload_config(self) -> OffloadConfig:
        """The engine's settings with this launch's trace file and quantized-store directory filled in."""
        return replace(self.engine, trace_path=self.record, quant_cache_dir=self.quant_cache_directory())

    def quant_cache_directory(self) -> str | None:
        """Where quantized stores are kept: ``--quant-cache``, else the user cache directory; None when the
        experts are not quantized or ``--no-quant-cache`` was given."""
        if self.no_quant_cache or self.engine.expert_bits is None:
            return None
        if self.quant_cache is not None:
            return self.quant_cache
        from moe_tui.paths import quant_cache_dir

        return str(quant_cache_dir())


@dataclass(frozen=True)
class EngineBudget:
    """What the engine allocated up front (expert slots in the fast tier, the expert store in the slow tier) and
    the conversation's KV cache: its bytes and tokens now, against the context the load kept room for."""

    fast_tier: str
    slow_tier: str
    fast_tier_bytes: int
    slow_tier_bytes: int
    expert_bytes: int
    kv_bytes: int | None = None  # KV cache the conversation holds now (None: not known, as in a replay)
    kv_tokens: int = 0  # the tokens it holds
    context: int = 0  # the tokens the load kept room for


class Session(Protocol):
    """The part of :class:`moe_tui.chat.session.ChatSession` the dashboard uses."""

    engine: Any
    model_name: str

    @property
    def kv_bytes(self) -> int:
        """Bytes of KV cache the conversation holds now (the engine's growth check counts them as allocated)."""
        ...

    @property
    def kv_tokens(self) -> int:
        """Tokens whose keys and values the conversation holds now."""
        ...

    def generate(
        self,
        messages: Sequence[Mapping[str, Any]],
        settings: Any,
        on_text: Callable[[str], None],
        stop_event: threading.Event | None = None,
    ) -> Any:
        """Stream one answer (blocking)."""
        ...

    def close(self) -> None:
        """Release the model."""
        ...

    def model_defaults(self) -> dict[str, Any]:
        """The sampling values the model's generation_config.json recommends."""
        ...

    @property
    def can_think(self) -> bool:
        """Whether the model's template can turn its thinking on and off."""
        ...


class Backend:
    """The interface the screens use; subclasses attach it to a model or to a trace.

    Capabilities are flags (``can_chat``: :meth:`generate` answers; ``can_tune``: the ``set_*`` methods
    work; ``mode == "replay"``: :attr:`replay` and :meth:`run` play a trace); a method a backend cannot serve
    raises :class:`UserError` saying so.
    """

    mode = "none"
    can_chat = False
    can_tune = False
    notes: tuple[str, ...] = ()  # things the user should know about what was loaded (a cut-off trace, ...)
    replay: Replay | None = None  # the trace being played (replay mode only)

    @property
    def name(self) -> str:
        """What to call the model in the status bar."""
        return "no model"

    def snapshot(self) -> Snapshot | None:
        """The engine's current snapshot (None when there is nothing to show)."""
        return None

    def budget(self) -> EngineBudget | None:
        """The engine's fixed memory budget, if known."""
        return None

    def model_config(self) -> Any:
        """The model's transformers config, for the parameter tree (None when unknown)."""
        return None

    def held_precisions(self) -> HeldPrecisions | None:
        """How the engine holds the model's weights, for the parameter tree's bytes (None when unknown)."""
        return None

    def model_defaults(self) -> dict[str, Any]:
        """Sampling values the model recommends (its generation_config.json); none without a model."""
        return {}

    @property
    def can_think(self) -> bool:
        """Whether the model's thinking can be turned on and off (Qwen3-style templates)."""
        return False

    def set_cache_size(self, k: int) -> None:
        """Change k for every layer from the next forward pass."""
        raise UserError(self._cannot("change the cache size"))

    def set_policy(self, policy: str) -> None:
        """Change the eviction policy from the next forward pass."""
        raise UserError(self._cannot("change the policy"))

    def set_prefetch(self, prefetch: int) -> None:
        """Change how many experts per layer are prefetched (0 = off)."""
        raise UserError(self._cannot("change prefetch"))

    def set_miss(self, mode: str) -> None:
        """Choose what a missed expert does (``copy``, ``host``, ``auto``) from the next forward pass."""
        raise UserError(self._cannot("change what a miss does"))

    def generate(
        self,
        messages: Sequence[Mapping[str, Any]],
        settings: Any,
        on_text: Callable[[str], None],
        stop_event: threading.Event,
    ) -> Any:
        """Stream one answer (blocking: run it in a worker thread)."""
        raise UserError(self._cannot("answer"))

    def run(self, stop: threading.Event, on_tokens: Callable[[list[TokenEvent]], None]) -> None:
        """Play the trace until its end or ``stop`` (blocking)."""
        raise UserError(self._cannot("play a trace"))

    def routing_trace(self) -> tuple[TraceHeader, list[TraceEvent], str] | None:
        """The routing this backend can hand the cache lab, with what to call it (None: it has none)."""
        return None

    def close(self) -> None:
        """Release what the backend holds."""

    def _cannot(self, what: str) -> str:
        return f"cannot {what}: no model is loaded"


class NoBackend(Backend):
    """No model (it failed to load): history and settings still work."""


class LiveBackend(Backend):
    """A chat session on the offloading engine."""

    mode = "live"
    can_chat = True
    can_tune = True

    def __init__(self, session: Session, trace_path: str | None = None):
        self.session = session
        self.engine = session.engine
        self.trace_path = trace_path
        self.notes = tuple(getattr(self.engine, "load_info", {}).get("notes", ()))

    @property
    def name(self) -> str:
        """The session's model name."""
        return self.session.model_name

    def snapshot(self) -> Snapshot:
        """The engine's snapshot."""
        return self.engine.snapshot()

    def budget(self) -> EngineBudget | None:
        """The engine's slots and store, from ``memory()``, and the KV cache the session holds."""
        memory = self.engine.memory()
        try:
            return EngineBudget(
                fast_tier=str(memory["fast_tier"]),
                slow_tier=str(memory["slow_tier"]),
                fast_tier_bytes=int(memory["fast_tier_bytes"]),
                slow_tier_bytes=int(memory["slow_tier_bytes"]),
                expert_bytes=int(memory["expert_bytes"]),
                kv_bytes=self.session.kv_bytes,
                kv_tokens=self.session.kv_tokens,
                context=int(memory.get("context") or 0),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def model_config(self) -> Any:
        """The transformers config of the running model."""
        return getattr(getattr(self.engine, "model", None), "config", None)

    def held_precisions(self) -> HeldPrecisions:
        """The engine's dtype, bit widths and group size, and its expert format's name and bytes."""
        settings = self.engine.config
        header = self.snapshot().header
        dtype = _TORCH_PRECISIONS.get(str(getattr(self.engine.model, "dtype", "")), "bf16")
        return HeldPrecisions.from_settings(
            dtype,
            settings.expert_bits,
            settings.attn_bits,
            settings.group_size,
            expert_format=header.expert_format,
            expert_bytes=header.expert_bytes,
        )

    def model_defaults(self) -> dict[str, Any]:
        """The session's model's recommended sampling values."""
        return self.session.model_defaults()

    @property
    def model_directory(self) -> Path | None:
        """The directory the model was loaded from (None for a model built in memory)."""
        return getattr(self.session, "directory", None)

    @property
    def can_think(self) -> bool:
        """Whether the session's template has a thinking switch."""
        return self.session.can_think

    def set_cache_size(self, k: int) -> None:
        """Resize every layer's cache (the engine checks k against the model and the memory free beside the
        conversation's KV cache, counting what of it the session already holds)."""
        self.engine.set_cache_size(k, kv_held=self.session.kv_bytes)

    def set_policy(self, policy: str) -> None:
        """Switch the eviction policy."""
        self.engine.set_policy(policy)

    def set_prefetch(self, prefetch: int) -> None:
        """Change the prefetch depth."""
        self.engine.set_prefetch(prefetch)

    def set_miss(self, mode: str) -> None:
        """Copy misses, compute them on the host, or let the engine's cost model choose."""
        self.engine.set_miss(mode)

    def generate(
        self,
        messages: Sequence[Mapping[str, Any]],
        settings: Any,
        on_text: Callable[[str], None],
        stop_event: threading.Event,
    ) -> Any:
        """Stream one answer (blocking: run it in a worker thread)."""
        return self.session.generate(messages, settings, on_text, stop_event)

    def routing_trace(self) -> tuple[TraceHeader, list[TraceEvent], str]:
        """This session's routing so far: the whole trace file with ``--record TRACE``, else the last
        ``JOURNAL_PASSES`` forward passes the engine keeps in memory (writing a trace file costs the generating
        thread a few percent of its speed, keeping the steps costs nothing measurable), as it is when a full disk
        stopped the recording: the file holds only the start then."""
        if self.trace_path is not None and not self.snapshot().recording_stopped:
            header, events = read_partial_trace(Path(self.trace_path))
        else:
            header, events = self.engine.journal()
        return header, events, "this session's trace"

    def close(self) -> None:
        """Release the engine (flushing the trace)."""
        self.session.close()


class ReplayBackend(Backend):
    """A trace played back at adjustable speed; the engine settings are those recorded."""

    mode = "replay"

    def __init__(self, replay: Replay, name: str):
        self.replay: Replay = replay
        self._name = name
        self.notes = tuple(getattr(replay, "notes", ()))

    @property
    def name(self) -> str:
        """The trace's model and file."""
        return self._name

    def snapshot(self) -> Snapshot:
        """The replayed telemetry's snapshot."""
        return self.replay.snapshot()

    def routing_trace(self) -> tuple[TraceHeader, list[TraceEvent], str]:
        """The whole trace being replayed."""
        return self.replay.header, list(self.replay.events), "the replayed trace"

    def budget(self) -> EngineBudget | None:
        """The recorded engine's budget, derived from the trace header."""
        header = self.replay.header
        if not header.expert_bytes:
            return None
        return EngineBudget(
            fast_tier=header.fast_tier,
            slow_tier=header.slow_tier,
            fast_tier_bytes=header.expert_bytes * sum(header.cache_size),
            slow_tier_bytes=header.expert_bytes * header.num_layers * header.num_experts,
            expert_bytes=header.expert_bytes,
        )

    def _cannot(self, what: str) -> str:
        return f"cannot {what} while replaying a trace (try `moe-tui lab TRACE` to compare settings)"

    def run(self, stop: threading.Event, on_tokens: Callable[[list[TokenEvent]], None]) -> None:
        """Play the trace in real time until it ends or ``stop`` is set (blocking)."""
        self.replay.run(stop, on_tokens)


def load_backend(options: LaunchOptions, progress: Progress) -> Backend:
    """Open the trace or load the model the options name (blocking; raises UserError on bad input)."""
    if options.replay is not None:
        from moe_tui.replay import Replay

        progress("reading trace", 0, 1)
        replay = Replay.open(options.replay, speed=options.replay_speed)
        progress("reading trace", 1, 1)
        return ReplayBackend(replay, f"{replay.header.model} (replay of {Path(options.replay).name})")
    progress("importing torch and transformers", 0, 1)
    with TRANSFORMERS_IMPORTS:  # the model picker may be reading configs in another thread
        import torch  # noqa: F401  (seconds on a first import: the stage says what the wait is)
        import transformers  # noqa: F401

        from moe_tui.chat.session import ChatSession

    config = options.offload_config()
    progress("importing torch and transformers", 1, 1)
    session = ChatSession.load(options.model, config, progress=progress)
    return LiveBackend(session, trace_path=options.record)


def read_partial_trace(path: Path) -> tuple[TraceHeader, list[TraceEvent]]:
    """A trace that may still be being written: everything up to its last complete line."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserError(f"cannot read the session trace {path}: {error.strerror or error}") from None
    complete = data[: data.rfind(b"\n") + 1].decode("utf-8", errors="replace")
    try:
        header, events = parse_trace_lines(complete.splitlines(keepends=True), str(path))
        return header, list(events)
    except TraceError as error:
        raise UserError(str(error)) from None
