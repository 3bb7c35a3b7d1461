"""OffloadedModel: a transformers MoE model whose experts run from the engine, plus its settings and telemetry."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moe_tui.engine_config import OffloadConfig, check_cache_sizes
from moe_tui.errors import UserError
from moe_tui.fit import FastTierNeed
from moe_tui.offload import memory
from moe_tui.offload.arch import MoEModel
from moe_tui.offload.cache import LayerCache
from moe_tui.offload.engine import Engine
from moe_tui.offload.experts import OffloadedExperts
from moe_tui.offload.formats import ExpertFormat
from moe_tui.offload.misses import host_can_compute
from moe_tui.offload.store import ExpertStore
from moe_tui.offload.transfer import make_mover
from moe_tui.policies import make_policy
from moe_tui.telemetry import ConfigEvent, Counters, Snapshot, Telemetry, TraceEvent, TraceHeader

Progress = Callable[[str, int, int], None]


class OffloadedModel:
    """A transformers model whose routed experts live in a slow-tier store and per-layer fast-tier caches.

    ``model`` stays a normal transformers model (``generate()``, KV cache, streamers). Settings changed with
    :meth:`set_cache_size`, :meth:`set_policy` and :meth:`set_prefetch` apply between forward passes.
    """

    def __init__(
        self,
        model: nn.Module,
        moe: MoEModel,
        cfg: OffloadConfig,
        fmt: ExpertFormat,
        store: ExpertStore,
        device: torch.device,
        name: str,
        load_info: dict[str, Any] | None = None,
        conversation: FastTierNeed | None = None,
    ):
        self.model = model
        self.moe = moe
        self.config = cfg
        self.format = fmt
        self.store = store
        self.device = device
        self.name = name
        self.load_info = dict(load_info or {})
        self.conversation = conversation  # what the fit check kept free for answering; growth keeps it free
        sizes = check_cache_sizes(cfg.cache_size, len(moe.layers), moe.num_experts)
        self._policy = cfg.policy
        self.caches = [
            LayerCache(moe_layer.index, k, fmt.nbytes, device, make_policy(cfg.policy))
            for moe_layer, k in zip(moe.layers, sizes, strict=True)
        ]
        self.telemetry = Telemetry(self._header(), trace=_open_trace(cfg.trace_path))
        self.engine = Engine(
            store=store,
            caches=self.caches,
            routers=[moe_layer.router for moe_layer in moe.layers],
            choice=moe.family.choice,
            glu=moe.layers[0].block.experts.glu,
            fmt=fmt,
            mover=make_mover(device),
            telemetry=self.telemetry,
            num_experts=moe.num_experts,
            prefetch=cfg.prefetch,
            record=cfg.telemetry,
            miss=cfg.miss,
        )
        check_miss_mode(cfg.miss, fmt)
        for moe_layer in moe.layers:
            experts = moe_layer.block.experts
            if not isinstance(experts, OffloadedExperts):
                raise TypeError("the experts of every MoE layer must be replaced before the engine starts")
            experts.engine = self.engine
        self._lock = threading.Lock()
        self._busy = False
        self._pending: dict[str, Any] = {}
        self._stop_copies = weakref.finalize(self, self.engine.mover.close)  # also when dropped unclosed
        self._hooks = [
            moe.decoder.register_forward_pre_hook(self._begin_pass),
            moe.decoder.register_forward_hook(self._end_pass, always_call=True),
        ]

    # ----------------------------------------------------------------- public API
    @property
    def last_step(self) -> int:
        """Number of the last forward pass (for :class:`~moe_tui.telemetry.TokenEvent`)."""
        return self.engine.step

    @property
    def cache_sizes(self) -> list[int]:
        """Slots per MoE layer right now."""
        return [cache.capacity for cache in self.caches]

    def snapshot(self) -> Snapshot:
        """The telemetry snapshot (cheap, thread-safe, versioned)."""
        return self.telemetry.snapshot()

    def journal(self) -> tuple[TraceHeader, list[TraceEvent]]:
        """The routing of the last passes, kept in memory by the telemetry (see :meth:`Telemetry.journal`)."""
        return self.telemetry.journal()

    def stats(self) -> dict[str, float | int]:
        """Cumulative counters since load.

        ``hits``/``misses``/``host``/``bytes_loaded``/``prefetch_*`` count expert fetches over all layers and
        passes (``misses`` were copied into a slot, ``host`` computed on the host from the store);
        ``load_s``/``compute_s`` come from telemetry (0 with ``telemetry=False``); ``tokens`` counts token
        positions that went through the model (prompt and generated, all batch rows) and ``steps`` forward passes.
        """
        tally = self.engine.tally
        timed = self.telemetry.counters()
        counters = Counters(
            hits=tally.hits,
            misses=tally.misses,
            host=tally.host,
            prefetch_issued=tally.prefetch_issued,
            prefetch_used=tally.prefetch_used,
            bytes_loaded=tally.bytes_loaded,
            load_s=timed.load_s,
            compute_s=timed.compute_s,
        )
        return {
            **asdict(counters),
            **counters.rates(),
            "tokens": tally.tokens,
            "steps": tally.steps,
        }

    def memory(self) -> dict[str, Any]:
        """Where the experts live, how many bytes each tier holds for them, and the ``context`` (tokens) the load's
        fit check kept room for."""
        slot_bytes = sum(cache.allocated_bytes for cache in self.caches)
        resident = sum(t.numel() * t.element_size() for t in self.model.parameters())
        resident += sum(t.numel() * t.element_size() for t in self.model.buffers())
        return {
            "fast_tier": str(self.device),
            "slow_tier": self.store.kind,
            "fast_tier_bytes": slot_bytes + self.format.workspace_bytes,
            "slot_bytes": slot_bytes,
            "workspace_bytes": self.format.workspace_bytes,
            "slow_tier_bytes": self.store.total_bytes,
            "expert_bytes": self.format.nbytes,
            "resident_bytes": resident,
            "cache_size": self.cache_sizes,
            "context": self.conversation.context if self.conversation else 0,
        }

    def set_cache_size(self, k: int, layer: int | None = None, kv_held: int = 0) -> None:
        """Use ``k`` slots in one MoE layer (or all); applies before the next forward pass.

        Growing allocates new slots: refused (UserError naming a k that fits) when the fast tier lacks the memory
        beside what answering was promised. ``kv_held`` is the bytes of KV cache the conversation already holds
        (a chat session's ``kv_bytes``), which that promise no longer needs free.
        """
        sizes = self._pending.get("cache_size", self.cache_sizes)
        sizes = list(sizes)
        num_layers = len(self.caches)
        if layer is None:
            sizes = [k] * num_layers
        elif not isinstance(layer, int) or not 0 <= layer < num_layers:
            raise UserError(f"layer {layer!r} is out of range: this model has MoE layers 0..{num_layers - 1}")
        else:
            sizes[layer] = k
        sizes = check_cache_sizes(sizes, num_layers, self.moe.num_experts)
        memory.check_growth(self.device, self.cache_sizes, sizes, self.format.nbytes, self.conversation, kv_held)
        self._change(cache_size=sizes)

    def set_policy(self, name: str) -> None:
        """Switch the eviction policy (``lru``, ``lfu``, ``fifo``); slots keep their experts."""
        name = OffloadConfig(policy=name).policy
        self._change(policy=name)

    def set_prefetch(self, p: int) -> None:
        """Prefetch ``p`` guessed experts per layer (0 turns prefetch off)."""
        OffloadConfig(prefetch=p).check_prefetch(self.moe.num_experts)
        self._change(prefetch=p)

    @property
    def miss(self) -> str:
        """What a missed expert does now: ``copy``, ``host`` or ``auto``."""
        return self._pending.get("miss", self.engine.miss)

    def set_miss(self, mode: str) -> None:
        """Copy missed experts into slots, compute them on the host from the store, or let the cost model choose."""
        check_miss_mode(OffloadConfig(miss=mode).miss, self.format)
        self._change(miss=mode)

    def close(self) -> None:
        """Flush the trace and release the store and slots; the model cannot run afterwards."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self._stop_copies()
        for moe_layer in self.moe.layers:
            moe_layer.block.experts.engine = None
        self.telemetry.close()
        self.store.close()
        for cache in self.caches:
            cache.slots = torch.empty(0, dtype=torch.uint8)

    # ----------------------------------------------------------------- internals
    def _header(self) -> TraceHeader:
        return TraceHeader(
            model=self.name,
            num_layers=len(self.moe.layers),
            num_experts=self.moe.num_experts,
            top_k=self.moe.top_k,
            cache_size=tuple(self.cache_sizes),
            policy=self._policy,
            prefetch=self.config.prefetch,
            expert_bytes=self.format.nbytes,
            fast_tier=str(self.device),
            slow_tier=self.store.kind,
            miss=self.config.miss,
            expert_format=self.format.label(),
            shared_experts=self.moe.shared_experts,
        )

    def _begin_pass(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        with self._lock:
            self._busy = True
            self._apply_pending()
        self.engine.begin_pass()

    def _end_pass(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        try:
            self.engine.end_pass()
            self.telemetry.flush()  # a trace is readable (and replayable) up to the last pass
        finally:
            with self._lock:
                self._busy = False

    def _change(self, **settings: Any) -> None:
        with self._lock:
            self._pending.update(settings)
            if not self._busy:
                self._apply_pending()

    def _apply_pending(self) -> None:
        """Apply settings changed since the last pass (called with the lock held, never during a pass)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        if "policy" in pending and pending["policy"] != self._policy:
            self._policy = pending["policy"]
            for cache in self.caches:
                order = [e for e in cache.eviction_order() if e is not None]
                cache.policy = make_policy(self._policy)
                for expert in order:
                    cache.policy.insert(expert)
        if "prefetch" in pending:
            self.engine.prefetch = pending["prefetch"]
        if "miss" in pending:
            self.engine.miss = pending["miss"]
        if "cache_size" in pending:
            self.engine.mover.drain()  # no copy may still be writing into the slots being moved
            for index, k in enumerate(pending["cache_size"]):
                if k != self.caches[index].capacity:
                    self.caches[index] = _resized(self.caches[index], k, self._policy)
            self.engine.caches = self.caches
        self.telemetry.record_config(
            ConfigEvent(
                step=self.engine.step,
                cache_size=tuple(self.cache_sizes),
                policy=self._policy,
                prefetch=self.engine.prefetch,
                miss=self.engine.miss,
            )
        )


def check_miss_mode(mode: str, fmt: ExpertFormat) -> None:
    """Refuse ``host`` where the store's layout is one only the GPU's kernel reads (``auto`` then copies)."""
    if mode == "host" and not host_can_compute(fmt):
        raise UserError(
            f"miss=host needs experts the CPU can compute; the {fmt.name} store is in the {fmt.layout} kernel's "
            "layout (use miss=copy or auto)"
        )


def _resized(cache: LayerCache, k: int, policy: str) -> LayerCache:
    """A new cache of ``k`` slots keeping the ``k`` experts the old one would evict last."""
    keep = [e for e in cache.eviction_order() if e is not None][-k:]
    new = LayerCache(cache.layer, k, cache.nbytes, cache.device, make_policy(policy))
    for slot, expert in enumerate(keep):
        new.slots[slot].copy_(cache.slots[cache.slot_of[expert]])
        new.assign(slot, expert)
    return new


def _open_trace(path: str | Path | None):
    if path is None:
        return None
    try:
        return open(path, "w", encoding="utf-8")  # closed by Telemetry.close()
    except OSError as error:
        raise UserError(f"cannot write the trace file {path}: {error.strerror}") from None
