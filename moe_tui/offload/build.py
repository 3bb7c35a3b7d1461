"""Turning a model into an OffloadedModel: checks first, then the expert store, then the engine.

:func:`offload_model` offloads an in-memory transformers model; :mod:`moe_tui.offload.loader` shares the
planning, packing and finishing steps here for checkpoints on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch
from torch import Tensor, nn

from moe_tui import fit
from moe_tui.engine_config import OffloadConfig
from moe_tui.errors import UserError
from moe_tui.offload import memory
from moe_tui.offload.arch import MoEModel, find_moe
from moe_tui.offload.experts import OffloadedExperts
from moe_tui.offload.formats import ExpertFormat, kernel_dtype_note, make_format
from moe_tui.offload.model import OffloadedModel, Progress
from moe_tui.offload.quant import quantize_linears
from moe_tui.offload.store import STORE_FILE, ExpertStore
from moe_tui.offload.store_lock import store_lock

STORE_VERSION = 1
ExpertReader = Callable[[int, int], tuple[Tensor, Tensor, Tensor]]


@dataclass
class Plan:
    """Everything decided before the heavy work: device, dtype, buffer format and cache sizes."""

    device: torch.device
    dtype: torch.dtype
    format: ExpertFormat
    sizes: list[int]
    store_kind: str
    context: int  # tokens the KV cache is sized for
    costs: fit.TokenCosts
    group_size: int  # HQQ group size asked for (what a smaller bit width would use)

    @property
    def conversation(self) -> fit.FastTierNeed:
        """What the fit check keeps free for answering: the KV cache at the context, a prefill chunk's
        activations and the margin (growing the cache later must leave them free too)."""
        return fit.fast_tier_need(0, 0, 0, self.costs, self.context, self.device.type)


def plan_offload(cfg: OffloadConfig, moe: MoEModel, dtype: torch.dtype, config: object) -> Plan:
    """Check the settings against the model (its transformers ``config``) and decide the layout (UserError on
    any problem)."""
    device = cfg.resolved_device()
    sizes = cfg.cache_sizes(len(moe.layers), moe.num_experts)
    context = fit.context_tokens(cfg.context, getattr(config, "max_position_embeddings", None))
    cfg.check_prefetch(moe.num_experts)
    if cfg.expert_bits is not None:
        for shape in moe.expert_shapes:
            if (shape[0] * shape[1]) % cfg.group_size:
                raise UserError(
                    f"group size {cfg.group_size} does not divide the expert matrix {shape[0]}x{shape[1]}; "
                    "choose a group size that does"
                )
    optimize = cfg.quant_optimize if cfg.quant_optimize is not None else device.type == "cuda"
    fmt = make_format(moe.expert_shapes, dtype, cfg.expert_bits, cfg.group_size, device, cfg.fused, optimize)
    store_kind = "pinned" if device.type == "cuda" and cfg.store == "ram" else cfg.store
    costs = fit.TokenCosts.of(config, dtype.itemsize, moe.intermediate_size)
    return Plan(device, dtype, fmt, sizes, store_kind, context, costs, cfg.group_size)


def check_fast_tier(
    plan: Plan, moe: MoEModel, resident_bytes: int, host_bytes: Callable[[ExpertFormat, str], int]
) -> None:
    """Refuse before allocating when the fast tier cannot hold the resident weights, the slots, the workspace,
    the KV cache, the activations and the margin (:mod:`moe_tui.fit`).

    On a CPU the fast tier is the same RAM as the expert store: ``host_bytes(format, store_kind)`` is what the
    load adds there besides (the store and quantizing's temporaries; 0 for what is already allocated). The refusal names
    the closest configurations that fit: a smaller k, a shorter context, fewer expert bits.
    """
    shared = plan.device.type == "cpu"
    memory.bound_kernel_caches()  # CPU matmuls (the fast tier's, or misses computed on the host) at a bounded cost
    if shared:
        memory.return_large_frees()  # so that the process's RSS follows what it holds, which is what is counted
    available = memory.free_bytes(plan.device)

    def need(
        fmt: ExpertFormat, k: int | None = None, context: int | None = None, kind: str = plan.store_kind
    ) -> fit.FastTierNeed:
        slots = (k * len(plan.sizes) if k else sum(plan.sizes)) * fmt.nbytes
        store = host_bytes(fmt, kind) if shared else 0
        workspace = fmt.workspace_bytes
        return fit.fast_tier_need(
            resident_bytes, slots, workspace, plan.costs, context or plan.context, plan.device.type, store
        )

    def alternatives() -> list[str]:
        ways = []
        fmt = plan.format
        k = fit.largest_fitting(max(plan.sizes) - 1, lambda k: need(fmt, k).total <= available)
        if k:
            ways.append(f"cache size {k}")
        else:
            tokens = fit.largest_fitting(plan.context - 1, lambda c: need(fmt, 1, c).total <= available)
            if tokens:
                ways.append(f"cache size 1 with --context {tokens}")
        mapped = need(fmt, kind="mmap")
        if shared and mapped.store < need(fmt).store and mapped.total <= available:
            ways.append("--store mmap (the experts stay in a file)")
        for bits in (4, 3, 2):
            if fmt.bits is not None and bits >= fmt.bits:
                continue
            smaller = make_format(moe.expert_shapes, plan.dtype, bits, plan.group_size, plan.device)
            k = fit.largest_fitting(moe.num_experts, lambda k, f=smaller: need(f, k).total <= available)
            if k:
                ways.append(f"--expert-bits {bits} with cache size {k}")
                break
        return ways

    tier = "host RAM (the fast tier and the expert store)" if shared else f"{plan.device.type} fast tier"
    fit.check_need(need(plan.format), available, tier, alternatives)


def offload_model(model: nn.Module, cfg: OffloadConfig, progress: Progress | None = None) -> OffloadedModel:
    """Offload the experts of an in-memory transformers MoE model (modified in place) and return the engine.

    The experts' weights go into the slow-tier store (quantized with HQQ when ``cfg.expert_bits`` is set)
    and each MoE block's ``experts`` module is replaced; the rest of the model moves to the fast tier.
    ``progress`` as for :func:`moe_tui.offload.load_offloaded`.
    """
    if progress is None:
        with TerminalProgress() as bars:
            return offload_model(model, cfg, bars)
    if not isinstance(model, nn.Module):
        raise UserError(f"expected a transformers model, got {type(model).__name__}")
    moe = find_moe(model)
    first = next(model.parameters())
    plan = plan_offload(cfg, moe, cfg.torch_dtype() or first.dtype, model.config)
    expert_params = {id(p) for m in moe.layers for p in m.experts.parameters()}
    resident = sum(p.numel() for p in model.parameters() if id(p) not in expert_params) * plan.dtype.itemsize
    # Already in this memory when the tiers are one: the resident weights, and the experts the store replaces.
    check_fast_tier(plan, moe, resident if plan.device != first.device else 0, lambda fmt, kind: 0)

    def read(layer: int, expert: int) -> tuple[Tensor, Tensor, Tensor]:
        experts = moe.layers[layer].experts
        return moe.family.split(experts.gate_up_proj[expert], experts.down_proj[expert])

    source = {"kind": "in-memory", "digest": _content_digest(moe)} if cfg.quant_cache_dir else {}
    name = str(getattr(model.config, "name_or_path", "") or model.config.model_type)
    store, info = build_store(cfg, moe, plan, read, source, progress, replace_as_packed=True, model=name)
    finish_model(model, moe, cfg, plan, progress)
    return OffloadedModel(model, moe, cfg, plan.format, store, plan.device, name, info, plan.conversation)


def build_store(
    cfg: OffloadConfig,
    moe: MoEModel,
    plan: Plan,
    read: ExpertReader,
    source: dict[str, object],
    report: Progress,
    replace_as_packed: bool,
    model: str = "",
) -> tuple[ExpertStore, dict[str, object]]:
    """Fill the slow-tier store with every expert (or reopen a saved one) and replace the experts modules.

    ``read(layer, expert)`` returns one expert's gate, up and down weights. With ``replace_as_packed`` each
    layer's original experts module is dropped as soon as it is packed, so its memory is freed layer by layer.
    ``model`` names the model in a saved store's description (for ``moe-tui cache``). A saved store is looked
    at, built and saved under its lock (:mod:`moe_tui.offload.store_lock`): a second start of the same store
    waits for the first, then reads what it saved. A build stopped by an exception (``progress`` raising for a
    cancelled load, ctrl+c) takes what it had written with it.
    """
    cache_dir = _store_dir(cfg, moe, plan.format, source)
    with _building(cache_dir, report):
        layers, experts = len(moe.layers), moe.num_experts
        fmt = plan.format
        description = store_description(fmt, source)
        note = kernel_dtype_note(
            fmt, moe.expert_shapes, cfg.expert_bits if cfg.fused else None, plan.group_size, plan.device
        )
        notes: list[str] = [note] if note else []
        if cache_dir is not None:
            loading = "loading saved expert store"
            started = False

            def loaded(done: int, total: int) -> None:
                nonlocal started
                started = True
                report(loading, done, total)

            store, reason = ExpertStore.open_saved(
                cache_dir, layers, experts, fmt.nbytes, plan.store_kind, description, loaded
            )
            if store is not None:
                for moe_layer in moe.layers:
                    _replace_experts(moe, moe_layer.index)
                return store, {"store": "reused", "store_dir": str(cache_dir), "notes": notes}
            if started:  # the read failed part-way: that stage is over
                report(loading, layers, layers)
            if reason:
                notes.append(f"the saved quantized store in {cache_dir} is {reason}: discarded, quantizing again")
        path = None
        if cache_dir is not None and plan.store_kind == "mmap":
            try:
                if cache_dir.is_dir():
                    ExpertStore.discard(cache_dir)  # what an interrupted save left (the data file is rewritten anyway)
                cache_dir.mkdir(parents=True, exist_ok=True)
                path = cache_dir / (STORE_FILE + ".partial")  # what discard_unfinished removes
            except OSError as error:
                notes.append(_not_kept(cache_dir, error))
                cache_dir = None
        store = ExpertStore(layers, experts, fmt.nbytes, plan.store_kind, path)
        stage = f"quantizing experts to {fmt.bits} bits" if fmt.bits else "packing experts"
        quant_device = plan.device if plan.device.type == "cuda" and fmt.bits else torch.device("cpu")
        total = layers * experts
        report(stage, 0, total)
        for moe_layer in moe.layers:
            for expert in range(experts):
                gate, up, down = (w.to(quant_device) for w in read(moe_layer.index, expert))
                fmt.pack(gate, up, down, store.row(moe_layer.index, expert))
                report(stage, moe_layer.index * experts + expert + 1, total)
            if replace_as_packed:
                _replace_experts(moe, moe_layer.index)
        if not replace_as_packed:
            for moe_layer in moe.layers:
                _replace_experts(moe, moe_layer.index)
        info: dict[str, object] = {"store": "built", "notes": notes}
        if cache_dir is not None:
            saving = "saving expert store"
            try:
                store.save(cache_dir, description, model, lambda done, total: report(saving, done, total))
                info["store_dir"] = str(cache_dir)
            except OSError as error:  # a full disk or a directory that cannot be written: the store still works
                notes.append(_not_kept(cache_dir, error))
                with contextlib.suppress(OSError):
                    ExpertStore.discard(cache_dir)
                report(saving, layers, layers)  # that stage is over
        return store, info


@contextlib.contextmanager
def _building(cache_dir: Path | None, report: Progress) -> Iterator[None]:
    """Hold the store entry's lock (:mod:`moe_tui.offload.store_lock`) for the block; when the block ends in an
    exception (a cancelled load, ctrl+c, an error), remove what it left unfinished, so that no partial file of
    gigabytes stays behind (a saved entry being read stays)."""
    with store_lock(cache_dir, report):
        try:
            yield
        except BaseException:
            if cache_dir is not None:
                with contextlib.suppress(OSError):
                    ExpertStore.discard_unfinished(cache_dir)
            raise


def _not_kept(cache_dir: Path, error: OSError) -> str:
    return (
        f"could not keep the quantized store in {cache_dir} ({error.strerror or error}); it works for this "
        "session and will be quantized again next time"
    )


def finish_model(model: nn.Module, moe: MoEModel, cfg: OffloadConfig, plan: Plan, report: Progress) -> None:
    """Move the resident part to the fast tier in the compute dtype and quantize its linear layers if asked."""
    model.to(device=plan.device, dtype=plan.dtype)
    if cfg.attn_bits is not None:
        quantize_linears(moe, cfg.attn_bits, cfg.group_size, plan.dtype, plan.device, report)
    model.eval()


def _replace_experts(moe: MoEModel, index: int) -> None:
    moe_layer = moe.layers[index]
    if not isinstance(moe_layer.block.experts, OffloadedExperts):
        moe_layer.block.experts = offloaded_experts(moe, index, moe_layer.block.experts)


def offloaded_experts(moe: MoEModel, index: int, experts: nn.Module) -> OffloadedExperts:
    """The module that replaces MoE layer ``index``'s ``experts``: the family's gated unit, and the experts'
    biases (when the family has them) kept as resident parameters."""
    family = moe.family
    biases = {name: getattr(experts, name) for name in family.bias_names or ()}
    return OffloadedExperts(index, moe.num_experts, family.glu(experts), biases, family.split_bias)


def store_description(fmt: ExpertFormat, source: object) -> dict[str, object]:
    """What a saved store must match to be reused: the store version, the format and the checkpoint (``moe-tui
    cache`` checks listed entries against it too)."""
    return {"version": STORE_VERSION, "format": fmt.describe(), "source": source}


def saved_store_usable(cfg: OffloadConfig, moe: MoEModel, fmt: ExpertFormat, source: dict[str, object]) -> bool:
    """Whether a saved store for this model and format looks reusable (so no expert will be quantized)."""
    directory = _store_dir(cfg, moe, fmt, source)
    if directory is None or not directory.is_dir():
        return False
    description = store_description(fmt, source)
    return not ExpertStore.saved_problem(directory, len(moe.layers), moe.num_experts, fmt.nbytes, description)


def _store_dir(cfg: OffloadConfig, moe: MoEModel, fmt: ExpertFormat, source: dict[str, object]) -> Path | None:
    """The quantized-store cache directory for this model and format (None without ``quant_cache_dir``)."""
    if cfg.quant_cache_dir is None:
        return None
    key = json.dumps(store_description(fmt, source), sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    label = re.sub(r"[^A-Za-z0-9_.-]+", "-", moe.family.name)
    return Path(cfg.quant_cache_dir).expanduser() / f"{label}-{fmt.precision}-{digest}"


def _content_digest(moe: MoEModel) -> str:
    """A hash of every expert weight of an in-memory model (identifies it for the store cache)."""
    digest = hashlib.blake2b(digest_size=16)
    for moe_layer in moe.layers:
        for tensor in (moe_layer.experts.gate_up_proj, moe_layer.experts.down_proj):
            digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
            digest.update(tensor.detach().contiguous().view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()


class TerminalProgress:
    """A progress callback drawing one bar per stage on a terminal's stderr (done/total, elapsed, time left),
    silent when stderr is not a terminal. Used as a context manager, or with :meth:`stop`, its bars leave the
    live display when loading stops, an error included, so that the error printed next stands under them."""

    def __init__(self, stream: TextIO | None = None) -> None:
        stream = stream or sys.stderr
        self._bars = None
        self._tasks: dict[str, object] = {}
        if not stream.isatty():
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as Bars

        self._bars = Bars(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=Console(file=stream, force_terminal=True),
            auto_refresh=False,
        )

    def __call__(self, stage: str, done: int, total: int) -> None:
        """Add a bar for a new stage or move an existing one."""
        bars = self._bars
        if bars is None:
            return
        if stage not in self._tasks:
            if not bars.live.is_started:
                for task_id in list(bars.task_ids):  # drawn already, above: the new block shows only new stages
                    bars.remove_task(task_id)
                bars.start()
            self._tasks[stage] = bars.add_task(stage, total=max(total, 1))
        bars.update(self._tasks[stage], completed=done, total=max(total, 1))
        bars.refresh()
        if all(task.finished for task in bars.tasks):
            bars.stop()  # the bars stay on screen; a later stage starts a new block under them

    def stop(self) -> None:
        """End the live display where it is (the bars stay on screen as last drawn)."""
        if self._bars is not None and self._bars.live.is_started:
            self._bars.stop()

    def __enter__(self) -> TerminalProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
