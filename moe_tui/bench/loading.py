"""Loading one configuration: the resident model, transformers' disk offload, or the engine."""

from __future__ import annotations

import gc
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from moe_tui.bench.models import BenchModel
from moe_tui.bench.specs import Spec
from moe_tui.errors import UserError


# ----------------------------------------------------------------------------------------------- loading
@dataclass
class Loaded:
    """One configuration ready to generate, with what it holds and how to release it."""

    spec: Spec
    model: Any
    engine: Any = None
    fast_tier_bytes: int = 0
    slow_tier_bytes: int = 0
    device: str = "cpu"
    cleanup: list[Callable[[], None]] = field(default_factory=list)
    on_token: Callable[[int, bool], None] | None = None
    expert_format: str = ""  # the engine's expert format ("int4", "hqq2 (unfused)"); empty for baselines

    def close(self) -> None:
        """Release the model (and the engine's store, the offload folder)."""
        for step in self.cleanup:
            step()
        self.model = self.engine = None
        gc.collect()


def load(spec: Spec, source: BenchModel, device: str, workdir: Path, quant_cache: Path | None = None) -> Loaded:
    """Load ``spec`` from ``source`` on ``device`` (``cpu`` or ``cuda``); quantized stores are kept in
    ``quant_cache`` (default: ``workdir``, so only for this run). Only the engine's own stages (reading shards,
    quantizing) draw progress bars, on stderr when it is a terminal: quantizing a real checkpoint takes minutes.
    A configuration the engine refuses raises UserError naming it."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    cuda_before = _cuda_allocated(device)
    try:
        if spec.kind == "resident":
            loaded = _load_resident(spec, source, device)
        elif spec.kind == "hf-offload":
            loaded = _load_hf_offload(spec, source, device, workdir)
        else:
            loaded = _load_engine(spec, source, device, workdir, quant_cache or workdir / "quantized")
    except UserError as error:  # which of the configurations could not be loaded
        raise UserError(f"configuration {spec.label!r}: {error}") from None
    if device == "cuda":
        loaded.fast_tier_bytes = _cuda_allocated(device) - cuda_before
    return loaded


def _torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _load_resident(spec: Spec, source: BenchModel, device: str) -> Loaded:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source.directory, dtype=_torch_dtype(source.dtype))
    model = model.to(device).eval()
    weights = sum(t.numel() * t.element_size() for t in model.parameters())
    return Loaded(spec=spec, model=model, fast_tier_bytes=weights, device=device)


def _load_hf_offload(spec: Spec, source: BenchModel, device: str, workdir: Path) -> Loaded:
    """transformers + accelerate disk offload: MoE blocks on "disk", everything else on the fast tier."""
    from transformers import AutoModelForCausalLM

    fast = 0 if device == "cuda" else "cpu"
    device_map: dict[str, Any] = {"model.embed_tokens": fast, "model.norm": fast, "lm_head": fast}
    device_map["model.rotary_emb"] = fast
    for index in range(source.num_layers):
        prefix = f"model.layers.{index}"
        for part in ("self_attn", "input_layernorm", "post_attention_layernorm"):
            device_map[f"{prefix}.{part}"] = fast
        device_map[f"{prefix}.mlp"] = "disk"
    folder = Path(tempfile.mkdtemp(prefix="hf-offload-", dir=workdir))
    model = AutoModelForCausalLM.from_pretrained(
        source.directory, dtype=_torch_dtype(source.dtype), device_map=device_map, offload_folder=str(folder)
    ).eval()
    weights = sum(t.numel() * t.element_size() for t in model.parameters() if t.device.type != "meta")
    offloaded = sum(path.stat().st_size for path in folder.glob("*.safetensors"))
    return Loaded(spec=spec, model=model, fast_tier_bytes=weights, slow_tier_bytes=offloaded, device=device)


def _load_engine(spec: Spec, source: BenchModel, device: str, workdir: Path, quant_cache: Path) -> Loaded:
    from moe_tui.offload import load_offloaded

    trace = spec.trace_path
    if spec.record and trace is None:
        trace = Path(tempfile.mkstemp(prefix="trace-", suffix=".jsonl", dir=workdir)[1])
    settings = spec.engine
    if settings is None:
        raise ValueError(f"{spec.label} is a baseline, not an engine configuration")
    config = replace(
        settings,
        device=device,
        dtype=source.dtype,
        trace_path=trace,
        telemetry=settings.telemetry or trace is not None,
        quant_cache_dir=quant_cache if settings.expert_bits is not None else None,
    )
    engine = load_offloaded(source.directory, config)  # its stages as bars on a terminal's stderr
    notes = list(engine.load_info.get("notes", ()))
    if engine.load_info.get("store") == "reused":
        notes.append(f"{spec.label}: reused the quantized store in {engine.load_info['store_dir']} (no quantizing)")
    for note in notes:
        print(f"moe-tui: note: {note}", file=sys.stderr)
    memory = engine.memory()
    on_token = None
    if trace is not None:
        from moe_tui.telemetry import TokenEvent

        def on_token(token: int, first: bool) -> None:
            engine.telemetry.record_token(TokenEvent(step=engine.last_step, text=source.decode(token), first=first))

    fast = memory["fast_tier_bytes"] + memory["resident_bytes"]
    return Loaded(
        spec=spec,
        model=engine.model,
        engine=engine,
        fast_tier_bytes=fast,
        slow_tier_bytes=memory["slow_tier_bytes"],
        device=device,
        cleanup=[engine.close, lambda: _say_if_recording_stopped(spec, engine)],
        on_token=on_token,
        expert_format=engine.format.label(),
    )


def _say_if_recording_stopped(spec: Spec, engine: Any) -> None:
    """A trace that could not be written to its end (a full disk) is said on stderr: it holds only the start."""
    stopped = engine.telemetry.snapshot().recording_stopped
    if stopped:
        print(f"moe-tui: note: {spec.label}: {stopped}", file=sys.stderr)


def _cuda_allocated(device: str) -> int:
    if device != "cuda":
        return 0
    import torch

    torch.cuda.synchronize()
    return torch.cuda.memory_allocated()
