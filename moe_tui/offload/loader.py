"""load_offloaded(): open a checkpoint without materialising its experts.

The model is built on the meta device, its experts modules are replaced, the non-expert weights are loaded
from the shards, and the experts are streamed one at a time into the store (quantized on the way). Every
check (config, settings, shard headers, expert tensors and shapes, memory) runs before any of that.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from moe_tui import precision
from moe_tui.engine_config import OffloadConfig
from moe_tui.errors import UserError
from moe_tui.import_lock import TRANSFORMERS_IMPORTS
from moe_tui.offload import memory
from moe_tui.offload.arch import MoEModel, family_of, find_moe
from moe_tui.offload.build import (
    Plan,
    TerminalProgress,
    build_store,
    check_fast_tier,
    finish_model,
    offloaded_experts,
    plan_offload,
    saved_store_usable,
)
from moe_tui.offload.checkpoint import Checkpoint
from moe_tui.offload.formats import ExpertFormat
from moe_tui.offload.model import OffloadedModel, Progress
from moe_tui.offload.quant import import_hqq
from moe_tui.params.config import one_line
from moe_tui.paths import DEMO_MODEL_DIR, DEMO_MODEL_NAME


def resolve_model_dir(spec: str | os.PathLike[str]) -> Path:
    """A model directory from a path, the demo's name or a hub id already in the local Hugging Face cache (never
    downloads)."""
    path = Path(spec).expanduser()
    if str(spec) == DEMO_MODEL_NAME and not path.exists():
        return DEMO_MODEL_DIR
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UserError(f"{path} has no config.json: not a transformers model directory")
        return path
    if path.exists():
        raise UserError(f"{path} is not a directory: give the model's directory or a hub id")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(spec), local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        if _looks_like_hub_id(str(spec)):
            fetch = f"moe-tui never downloads; fetch it first: hf download {spec}"
        else:
            fetch = "a hub id, owner/name, is looked up there"
        raise UserError(
            f"{spec} is neither a model directory nor a model in the local Hugging Face cache ({fetch})"
        ) from None


def _looks_like_hub_id(spec: str) -> bool:
    """``owner/name`` as the hub spells its ids, not a path (``./x``, ``/x``, ``~/x``, ``a/b/c``)."""
    parts = spec.split("/")
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
    return len(parts) == 2 and all(part and set(part) <= allowed and not part.startswith(".") for part in parts)


def read_model_config(directory: Path) -> object:
    """The transformers config of a model directory; UserError (one line, the real reason) when its config.json
    is unreadable, not JSON, names only architectures that are not causal language models, or is not a config
    transformers can build."""
    from transformers import AutoConfig

    path = directory / "config.json"
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
    except FileNotFoundError:
        raise UserError(f"{directory} has no config.json: not a transformers model directory") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, not a model config") from None
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path} is not valid JSON ({error})") from None
    architectures = [str(name) for name in (raw.get("architectures") or [])] if isinstance(raw, dict) else []
    if architectures and not any(name.endswith("ForCausalLM") for name in architectures):
        names = ", ".join(architectures)
        raise UserError(f"{directory.name} is not a causal language model ({names}): there is nothing to chat with")
    try:
        return AutoConfig.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"cannot read the model config {path}: {reason}") from None


@dataclass(frozen=True)
class WeightsQuantization:
    """How a checkpoint's weights are stored when not plainly: FP8 with block scales, or MXFP4 experts."""

    fp8_block: tuple[int, int] | None = None
    mxfp4: bool = False


def weights_quantization(config: object, directory: Path) -> WeightsQuantization | None:
    """How a checkpoint whose config declares pre-quantized weights is read (dequantized while loading): FP8 with
    block scales (DeepSeek-V3 style) or MXFP4 experts (gpt-oss); None for plain weights. Any other method
    (GPTQ, AWQ, bitsandbytes, HQQ, ...) is refused: read as plain tensors its weights would load without their
    scales. Checked before any weight is read."""
    quantization = getattr(config, "quantization_config", None)
    if not quantization:
        return None
    settings = quantization if isinstance(quantization, dict) else vars(quantization)
    method = settings.get("quant_method")
    method = str(getattr(method, "value", method) or "an unnamed method")
    block = settings.get("weight_block_size")
    if method == "fp8" and isinstance(block, (list, tuple)) and len(block) == 2 and all(int(b) > 0 for b in block):
        return WeightsQuantization(fp8_block=(int(block[0]), int(block[1])))
    if method == "mxfp4":
        return WeightsQuantization(mxfp4=True)
    detail = "fp8 without a weight_block_size" if method == "fp8" else method
    raise UserError(
        f"{directory} holds weights pre-quantized with {detail} (quantization_config in config.json), which "
        "moe-tui cannot read yet; use the unquantized (bf16/fp16) checkpoint, and --expert-bits to quantize "
        "the experts"
    )


def model_label(spec: str | os.PathLike[str], directory: Path) -> str:
    """How traces and the dashboard name a model: a hub id as given, a local directory by its own name.

    A local path is not written out whole, so a recorded trace says nothing about the recorder's file system.
    """
    return directory.name if Path(spec).expanduser().is_dir() else str(spec)


def load_offloaded(
    path_or_hub_id: str | os.PathLike[str], cfg: OffloadConfig, progress: Progress | None = None
) -> OffloadedModel:
    """Load a safetensors MoE checkpoint with its experts offloaded (see the module docstring).

    ``progress(stage, done, total)`` is called per stage ("reading checkpoint", "loading weights",
    "quantizing experts to N bits" / "packing experts", ...); with None a bar is drawn on a terminal's stderr.
    The first stage, "opening the model", is mostly importing transformers' code for the model's architecture:
    a few seconds that do not grow with the model, which a cached start of a small model is mostly made of.
    """
    if progress is None:
        with TerminalProgress() as bars:
            return load_offloaded(path_or_hub_id, cfg, bars)
    progress("opening the model", 0, 1)
    with TRANSFORMERS_IMPORTS:  # transformers imports the architecture's code here, on first use
        from transformers import GenerationConfig

        directory = resolve_model_dir(path_or_hub_id)
        import_hqq()  # before transformers imports it: without its import-time compilation (seconds)
        model, moe, quantized, dtype = _meta_model(directory, cfg.torch_dtype())
    plan = plan_offload(cfg, moe, dtype, model.config)
    progress("opening the model", 1, 1)
    progress("reading checkpoint", 0, 1)
    with Checkpoint(directory, quantized.fp8_block, quantized.mxfp4) as checkpoint:
        layout = checkpoint.expert_layout(moe)
        for moe_layer in moe.layers:
            moe_layer.block.experts = offloaded_experts(moe, moe_layer.index, moe_layer.block.experts)
        names = _resident_names(model, moe, checkpoint)
        progress("reading checkpoint", 1, 1)
        resident_bytes = sum(math.prod(checkpoint.shapes[key]) for key in names.values()) * dtype.itemsize
        source = {"kind": "checkpoint", "files": [_file_identity(path) for path in checkpoint.files()]}
        reuse = saved_store_usable(cfg, moe, plan.format, source)
        predicted_host_bytes = _check_memory(plan, moe, resident_bytes, reuse)
        _load_resident(model, checkpoint, names, progress)

        def read(layer: int, expert: int):
            return checkpoint.expert(moe, layout, moe.layers[layer].decoder_index, expert)

        label = model_label(path_or_hub_id, directory)
        store, info = build_store(cfg, moe, plan, read, source, progress, replace_as_packed=False, model=label)
    finish_model(model, moe, cfg, plan, progress)
    if (directory / "generation_config.json").is_file():
        try:
            with _transformers_quiet():  # a value it finds invalid is said once, by the chat session
                model.generation_config = GenerationConfig.from_pretrained(directory, local_files_only=True)
        except (OSError, ValueError, TypeError) as error:  # only recommendations: the model runs without them
            info.setdefault("notes", []).append(
                f"{directory / 'generation_config.json'} is unreadable ({one_line(error)}): the model's recommended "
                "sampling settings are not used"
            )
    info.update({"directory": str(directory), "layout": layout, "predicted_host_bytes": predicted_host_bytes})
    name = model_label(path_or_hub_id, directory)
    return OffloadedModel(model, moe, cfg, plan.format, store, plan.device, name, info, plan.conversation)


@contextmanager
def _transformers_quiet() -> Iterator[None]:
    """transformers' warnings off for the block (they go to stderr, under the loading bars or a running app)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def count_moe_layers(directory: Path) -> int:
    """How many MoE layers the engine finds in the checkpoint in ``directory`` (the length a per-layer cache size
    list must have), from its config alone; UserError for a model the engine cannot offload."""
    return len(_meta_model(directory, None)[1].layers)


def _meta_model(
    directory: Path, dtype: torch.dtype | None
) -> tuple[nn.Module, MoEModel, WeightsQuantization, torch.dtype]:
    """The checkpoint's model built on the meta device, its MoE layers, how its weights are quantized and the dtype
    it was built in (``dtype``, default the config's); the config is checked first."""
    from transformers import AutoModelForCausalLM

    config = read_model_config(directory)
    family_of(config)
    quantized = weights_quantization(config, directory) or WeightsQuantization()
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the model is built with ordinary layers; the loader dequantizes
    dtype = dtype or _config_dtype(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model, find_moe(model), quantized, dtype


def _config_dtype(config: object) -> torch.dtype:
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32


def _resident_names(model: nn.Module, moe: MoEModel, checkpoint: Checkpoint) -> dict[str, str]:
    """Checkpoint key of every resident (non-expert) parameter and persistent buffer; UserError if one is missing,
    has another shape, or is a float in the model but not in the checkpoint."""
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    names: dict[str, str] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        candidates = (key, moe.family.checkpoint_name(key))
        found = next((name for name in candidates if name in checkpoint.shapes), None)
        if found is None:
            if key in tied:
                continue
            raise UserError(f"checkpoint {checkpoint.directory} is missing the tensor {key}")
        if checkpoint.shapes[found] != tuple(tensor.shape):
            raise UserError(
                f"checkpoint tensor {found} has shape {list(checkpoint.shapes[found])}, "
                f"expected {list(tensor.shape)} from the model config"
            )
        if tensor.dtype.is_floating_point:
            checkpoint.check_floating(found)
        names[key] = found
    return names


def _check_memory(plan: Plan, moe: MoEModel, resident_bytes: int, reuse: bool) -> int:
    """Refuse before loading when the fast tier, or host RAM for the resident weights (read there first), the
    expert store and quantizing's temporaries (none when a saved store is reused), is too small; returns the host
    bytes the load and its first tokens are expected to take at their peak. On a CPU that includes the fast
    tier's slots and dequantization workspace, which are allocated after quantizing's temporaries are freed:
    the larger of the two counts (the fit check, cautious, counts both)."""

    def host_bytes(fmt: ExpertFormat, store_kind: str) -> int:
        store = 0 if store_kind == "mmap" else fmt.nbytes * len(moe.layers) * moe.num_experts
        return store + (0 if reuse else fmt.pack_transient_bytes)

    on_cpu = plan.device.type == "cpu"
    check_fast_tier(plan, moe, resident_bytes, host_bytes)
    needed = host_bytes(plan.format, plan.store_kind) + resident_bytes
    if on_cpu:
        transient = 0 if reuse else plan.format.pack_transient_bytes
        running = sum(plan.sizes) * plan.format.nbytes + plan.format.workspace_bytes
        return needed - transient + max(transient, running)
    available = memory.free_bytes(torch.device("cpu"))
    if needed > available:
        hint = "; --store mmap keeps the experts in a file instead" if plan.store_kind != "mmap" else ""
        raise UserError(
            f"loading needs {precision.format_bytes(needed)} of host RAM (resident weights, expert store and "
            f"quantizing) but only {precision.format_bytes(available)} is available{hint}"
        )
    return needed


def _load_resident(model: nn.Module, checkpoint: Checkpoint, names: dict[str, str], report: Progress) -> None:
    """Materialise the non-expert weights on the CPU from the checkpoint and rebuild computed buffers."""
    model.to_empty(device="cpu")
    state = model.state_dict(keep_vars=True)
    report("loading weights", 0, len(names))
    with torch.no_grad():
        for done, (key, name) in enumerate(names.items(), start=1):
            target = state[key]
            target.copy_(checkpoint.tensor(name))
            report("loading weights", done, len(names))
    for module in model.modules():  # non-persistent buffers (rotary frequencies) are computed, not loaded
        own_buffers = getattr(module, "_non_persistent_buffers_set", set())
        if own_buffers and not list(module.parameters(recurse=False)):
            model._init_weights(module)
    if hasattr(model, "tie_weights"):
        model.tie_weights()


def _file_identity(path: Path) -> list[object]:
    """What identifies a shard's contents for the store cache without reading its tensors: its name, its size,
    a digest of its safetensors header (every tensor's name, dtype, shape and offsets), and its content hash when
    it is a Hugging Face cache blob (the hub names blobs by the sha256 of their bytes), else its modification
    time. The same snapshot reached by another path or revision reuses the entry; a changed shard never does."""
    resolved = path.resolve()
    stat = resolved.stat()
    with open(resolved, "rb") as handle:
        length = handle.read(8)
        header = length + handle.read(int.from_bytes(length, "little"))  # the checkpoint checked it already
    is_blob = resolved.parent.name == "blobs" and len(resolved.name) == 64
    content = resolved.name if is_blob else stat.st_mtime_ns
    return [path.name, stat.st_size, hashlib.sha256(header).hexdigest(), content]
