"""The benchmark harness behind ``moe-tui bench``: one model, several configurations, one process.

A configuration is one of:

* ``resident``: the plain transformers model, every weight in the fast tier;
* ``hf-offload``: transformers' own offloading, ``from_pretrained(..., device_map=..., offload_folder=...)``
  with every MoE block on ``"disk"`` (accelerate streams its weights in for each forward pass) and the
  rest in the fast tier: the baseline users would otherwise pick;
* an engine setting written ``k=2,prefetch=1,policy=lru,bits=4,attn-bits=8,store=ram,miss=copy,fused=on,
  optimize=auto,telemetry=on,record=off`` (``k=E`` means every expert; only ``k`` is required). ``miss`` is
  ``copy``, ``host`` or ``auto``; ``fused=off`` dequantizes 4/8-bit experts on every use (the unfused path);
  ``optimize=off`` quantizes with min-max rounding instead of HQQ's optimiser (``auto``: the optimiser on a
  GPU only, see :class:`~moe_tui.offload.config.OffloadConfig`). Configurations of one run
  that quantize alike share one quantized store (a temporary cache), so each format is quantized once.

Every configuration generates greedily from the same token ids: one warm-up generation, then ``runs``
passes over the prompt set. Decode tokens/s is the median over generations of (new tokens - 1) / (time
from the first new token to the last); prefill tokens/s the median of prompt tokens / time to first token.
Engine counters (hit rate, prefetch, bytes, stall time) are the differences over the measured runs.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from moe_tui.errors import UserError
from moe_tui.paths import SAMPLES_DIR

DEFAULT_PROMPTS = SAMPLES_DIR / "prompts" / "bench.txt"
DEFAULT_COMPARE = ("resident", "k=E", "k=2", "k=2,prefetch=1", "k=4", "hf-offload")
BASELINES = ("resident", "hf-offload")
_SPEC_KEYS = {
    "k", "prefetch", "policy", "bits", "attn-bits", "store", "miss", "fused", "optimize", "telemetry", "record",
}  # fmt: skip


# ----------------------------------------------------------------------------------------------- inputs
def load_prompts(path: str | os.PathLike[str]) -> list[str]:
    """The prompts of a prompt file: one per line, blank lines and ``#`` comments skipped; UserError if none."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"prompt file {path} is not UTF-8 text") from None
    except OSError as error:
        raise UserError(f"cannot read prompt file {path}: {error.strerror or error}") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise UserError(f"prompt file {path} holds no prompts (one per line; # starts a comment)")
    return prompts


@dataclass(frozen=True)
class Spec:
    """One configuration to benchmark (see the module docstring for the text form)."""

    label: str
    kind: str  # "resident" | "hf-offload" | "engine"
    cache_size: int = 0
    prefetch: int = 0
    policy: str = "lru"
    expert_bits: int | None = None
    attn_bits: int | None = None
    store: str = "ram"
    miss: str = "copy"
    fused: bool = True
    optimize: bool | None = None  # None: the engine's per-device default
    telemetry: bool = True
    record: bool = False
    trace_path: Path | None = None  # where a recorded trace goes (record=on without it: a temporary file)


def parse_spec(text: str, num_experts: int) -> Spec:
    """Read one configuration (``resident``, ``hf-offload`` or ``k=...,key=value``); UserError when malformed."""
    text = text.strip()
    if text in BASELINES:
        return Spec(label=text, kind=text)
    values: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or key not in _SPEC_KEYS or not value:
            raise UserError(
                f"cannot read configuration {text!r}: write resident, hf-offload, or k=N[,prefetch=P][,policy=lru]"
                "[,bits=B][,attn-bits=B][,store=ram|mmap][,miss=copy|host|auto][,fused=on|off][,optimize=on|off|auto]"
                "[,telemetry=on|off][,record=on|off]"
            )
        values[key] = value
    if "k" not in values:
        raise UserError(f"configuration {text!r} needs k=N (slots per MoE layer, or k=E for all experts)")
    k = num_experts if values["k"].upper() == "E" else _whole(values["k"], "k", text)
    if not 1 <= k <= num_experts:
        raise UserError(f"configuration {text!r}: k must be 1..{num_experts} (this model's experts per layer)")
    label = text.replace("k=E", f"k={num_experts}") if values["k"].upper() == "E" else text
    from moe_tui.choices import MISS_MODES

    miss = values.get("miss", "copy").lower()
    if miss not in MISS_MODES:
        raise UserError(f"configuration {text!r}: miss must be copy, host or auto, not {miss!r}")
    return Spec(
        label=label,
        kind="engine",
        cache_size=k,
        prefetch=_whole(values.get("prefetch", "0"), "prefetch", text),
        policy=values.get("policy", "lru"),
        expert_bits=_whole(values["bits"], "bits", text) if "bits" in values else None,
        attn_bits=_whole(values["attn-bits"], "attn-bits", text) if "attn-bits" in values else None,
        store=values.get("store", "ram"),
        miss=miss,
        fused=_switch(values.get("fused", "on"), "fused", text),
        optimize=None if values.get("optimize", "auto") == "auto" else _switch(values["optimize"], "optimize", text),
        telemetry=_switch(values.get("telemetry", "on"), "telemetry", text),
        record=_switch(values.get("record", "off"), "record", text),
    )


def _whole(value: str, key: str, text: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UserError(f"configuration {text!r}: {key} must be a whole number, not {value!r}") from None


def _switch(value: str, key: str, text: str) -> bool:
    if value.lower() not in ("on", "off"):
        raise UserError(f"configuration {text!r}: {key} must be on or off, not {value!r}")
    return value.lower() == "on"


# ----------------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class SyntheticShape:
    """The shape of a model with random weights (``--synthetic``) of any family the engine offloads."""

    layers: int = 4
    hidden: int = 1024
    intermediate: int = 2816
    experts: int = 8
    top_k: int = 2
    heads: int = 8
    kv_heads: int = 2
    vocab: int = 4096
    seed: int = 0
    family: str = "mixtral"

    def describe(self) -> str:
        """One line naming the shape."""
        return (
            f"synthetic {self.family}: {self.layers} layers, hidden {self.hidden}, intermediate {self.intermediate}, "
            f"{self.experts} experts top-{self.top_k}, {self.heads} heads ({self.kv_heads} KV), vocab {self.vocab}"
        )

    def config(self) -> Any:
        """The transformers config of this shape in its family (family-specific settings chosen to fit: DeepSeek's
        expert groups, a shared expert and a dense first layer; gpt-oss's sliding and full attention layers)."""
        from transformers import AutoConfig

        head_dim = self.hidden // self.heads
        common = {
            "vocab_size": self.vocab,
            "hidden_size": self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "num_experts_per_tok": self.top_k,
            "max_position_embeddings": 4096,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
        }
        groups = 8 if self.experts % 8 == 0 and self.experts >= 16 else 1
        kept = min(groups, -(-self.top_k // (self.experts // groups)) + (1 if groups > 1 else 0))
        grouped = {"n_routed_experts": self.experts, "n_group": groups, "topk_group": kept, "n_shared_experts": 1}
        grouped |= {"moe_intermediate_size": self.intermediate, "intermediate_size": 2 * self.intermediate}
        grouped |= {"first_k_dense_replace": 1 if self.layers > 1 else 0}
        mla = {"kv_lora_rank": 4 * head_dim, "q_lora_rank": None, "qk_nope_head_dim": head_dim}
        mla |= {"num_key_value_heads": self.heads}  # MLA keeps keys and values per head
        mla |= {"qk_rope_head_dim": max(2, head_dim // 2), "v_head_dim": head_dim}
        local = {"num_local_experts": self.experts, "intermediate_size": self.intermediate}
        qwen = {"num_experts": self.experts, "moe_intermediate_size": self.intermediate, "head_dim": head_dim}
        extra = {
            "mixtral": local,
            "phimoe": local,
            "granitemoe": local,
            "gpt_oss": local
            | {"head_dim": head_dim, "layer_types": ["sliding_attention", "full_attention"] * self.layers},
            "qwen3_moe": qwen | {"intermediate_size": 2 * self.intermediate},
            "qwen2_moe": qwen
            | {"intermediate_size": 2 * self.intermediate}
            | {"shared_expert_intermediate_size": self.intermediate},
            "olmoe": {"num_experts": self.experts, "intermediate_size": self.intermediate},
            "deepseek_v2": grouped | mla | {"topk_method": "group_limited_greedy" if groups > 1 else "greedy"},
            "deepseek_v3": grouped | mla,
            "glm4_moe": grouped | {"head_dim": head_dim},
        }[self.family]
        if self.family == "gpt_oss":
            extra["layer_types"] = extra["layer_types"][: self.layers]
        return AutoConfig.for_model(self.family, **(common | extra))


@dataclass
class BenchModel:
    """A model directory (config.json + safetensors) that every configuration loads from."""

    directory: Path
    description: str
    num_layers: int
    num_experts: int
    top_k: int
    vocab_size: int
    dtype: str
    tokenizer: Any = None

    def encode(self, prompt: str) -> list[int]:
        """Token ids of a prompt as a user turn: the model's chat template (or plain tokenizer) when it has
        one, else UTF-8 bytes folded into the vocabulary."""
        if self.tokenizer is None:
            return [byte % self.vocab_size for byte in prompt.encode("utf-8")]
        if getattr(self.tokenizer, "chat_template", None):
            chat = [{"role": "user", "content": prompt}]
            encoded = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
            return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
        return list(self.tokenizer(prompt)["input_ids"])

    def decode(self, token: int) -> str:
        """The text of one token id (its number without a tokenizer)."""
        return self.tokenizer.decode([token]) if self.tokenizer is not None else f"<{token}>"


def open_model(directory: str | os.PathLike[str], dtype: str | None = None) -> BenchModel:
    """A model directory to benchmark; UserError when it is not a MoE checkpoint the engine supports."""
    from transformers import AutoTokenizer

    from moe_tui.offload.arch import family_of
    from moe_tui.offload.loader import read_model_config, weights_quantization

    path = Path(directory)
    if not (path / "config.json").exists():
        raise UserError(f"{path} is not a model directory (no config.json); pass --model DIR or --synthetic")
    config = read_model_config(path)
    family_of(config)
    weights_quantization(config, path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError):
        tokenizer = None
    experts = getattr(config, "num_local_experts", None) or config.num_experts
    own = str(getattr(config, "dtype", None) or "float32").removeprefix("torch.")
    return BenchModel(
        directory=path,
        description=f"{path.name} ({config.model_type}, {config.num_hidden_layers} layers, {experts} experts "
        f"top-{config.num_experts_per_tok}, hidden {config.hidden_size})",
        num_layers=config.num_hidden_layers,
        num_experts=experts,
        top_k=config.num_experts_per_tok,
        vocab_size=config.vocab_size,
        dtype=dtype or own,
        tokenizer=tokenizer,
    )


def write_synthetic(shape: SyntheticShape, directory: Path, dtype: str = "float32") -> BenchModel:
    """Save a model of ``shape`` (its family) with random weights (fixed seed) to ``directory`` and open it."""
    import torch
    from transformers import AutoModelForCausalLM

    config = shape.config()
    torch.manual_seed(shape.seed)
    # built in the target dtype: a Mixtral-sized layer in fp32 first would need twice the memory
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype)).eval()
    model.save_pretrained(directory)
    del model
    gc.collect()
    opened = open_model(directory, dtype)
    opened.tokenizer = None  # no tokenizer was saved (a family's default one would come up empty): byte ids
    opened.description = shape.describe() + f", {dtype}, random weights (seed {shape.seed})"
    return opened


# ----------------------------------------------------------------------------------------------- routing
class ForcedRouting:
    """Make every router pick the experts a recorded trace's decoded tokens picked, in order, cyclically.

    Each MoE layer walks its own list of decode-step routings; a forward pass of T tokens takes the next T
    entries (so a prefill touches as many experts as T decoded tokens would). Prefetch guesses still come
    from the model's own routers, so under forced routing the prefetch recall says nothing.
    """

    def __init__(self, header: Any, events: Sequence[Any]):
        from moe_tui.telemetry import LayerStep

        self.routes: list[list[tuple[tuple[int, ...], tuple[float, ...]]]] = [[] for _ in range(header.num_layers)]
        for event in events:
            if isinstance(event, LayerStep) and event.n_tokens == 1 and len(event.experts) == header.top_k:
                total = sum(event.weights) or 1.0
                self.routes[event.layer].append((event.experts, tuple(w / total for w in event.weights)))
        if not all(self.routes):
            raise UserError("the routing trace has MoE layers without any decoded token to replay")
        self.cursor = [0] * header.num_layers
        self._hooks: list[Any] = []

    def install(self, model: Any) -> None:
        """Hook the router of every MoE layer of ``model`` (a transformers MoE model)."""
        gates = [layer.mlp.gate for layer in model.model.layers if hasattr(getattr(layer, "mlp", None), "gate")]
        if len(gates) != len(self.routes):
            raise UserError(f"the routing trace has {len(self.routes)} MoE layers, the model {len(gates)}")
        for index, gate in enumerate(gates):
            self._hooks.append(gate.register_forward_hook(self._hook(index)))

    def remove(self) -> None:
        """Take the hooks off again."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _hook(self, layer: int) -> Callable[..., Any]:
        import torch

        def forced(module: Any, args: Any, output: Any) -> Any:
            logits, weights, index = output
            routes = self.routes[layer]
            picks = [routes[(self.cursor[layer] + t) % len(routes)] for t in range(index.shape[0])]
            self.cursor[layer] += index.shape[0]
            new_index = torch.tensor([p[0] for p in picks], dtype=index.dtype, device=index.device)
            new_weights = torch.tensor([p[1] for p in picks], dtype=weights.dtype, device=weights.device)
            return logits, new_weights, new_index

        return forced


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
    on_token: Callable[[int], None] | None = None
    expert_format: str = ""  # the engine's expert format ("int4", "hqq2 (unfused)"); empty for baselines

    def close(self) -> None:
        """Release the model (and the engine's store, the offload folder)."""
        for step in self.cleanup:
            step()
        self.model = self.engine = None
        gc.collect()


def load(spec: Spec, source: BenchModel, device: str, workdir: Path, quant_cache: Path | None = None) -> Loaded:
    """Load ``spec`` from ``source`` on ``device`` (``cpu`` or ``cuda``), quietly (no progress bars); quantized
    stores are kept in ``quant_cache`` (default: ``workdir``, so only for this run)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    cuda_before = _cuda_allocated(device)
    if spec.kind == "resident":
        loaded = _load_resident(spec, source, device)
    elif spec.kind == "hf-offload":
        loaded = _load_hf_offload(spec, source, device, workdir)
    else:
        loaded = _load_engine(spec, source, device, workdir, quant_cache or workdir / "quantized")
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
    from moe_tui.offload import OffloadConfig, load_offloaded

    trace = spec.trace_path
    if spec.record and trace is None:
        trace = Path(tempfile.mkstemp(prefix="trace-", suffix=".jsonl", dir=workdir)[1])
    config = OffloadConfig(
        cache_size=spec.cache_size,
        prefetch=spec.prefetch,
        policy=spec.policy,
        expert_bits=spec.expert_bits,
        attn_bits=spec.attn_bits,
        device=device,
        store=spec.store,
        dtype=source.dtype,
        trace_path=trace,
        telemetry=spec.telemetry or trace is not None,
        miss=spec.miss,
        fused=spec.fused,
        quant_optimize=spec.optimize,
        quant_cache_dir=quant_cache if spec.expert_bits is not None else None,
    )
    engine = load_offloaded(source.directory, config, progress=lambda stage, done, total: None)
    for note in engine.load_info.get("notes", ()):
        print(f"moe-tui: note: {note}", file=sys.stderr)
    memory = engine.memory()
    on_token = None
    if trace is not None:
        from moe_tui.telemetry import TokenEvent

        def on_token(token: int) -> None:
            engine.telemetry.record_token(TokenEvent(step=engine.last_step, text=source.decode(token)))

    fast = memory["fast_tier_bytes"] + memory["resident_bytes"]
    return Loaded(
        spec=spec,
        model=engine.model,
        engine=engine,
        fast_tier_bytes=fast,
        slow_tier_bytes=memory["slow_tier_bytes"],
        device=device,
        cleanup=[engine.close],
        on_token=on_token,
        expert_format=engine.format.label(),
    )


def _cuda_allocated(device: str) -> int:
    if device != "cuda":
        return 0
    import torch

    torch.cuda.synchronize()
    return torch.cuda.memory_allocated()


# ----------------------------------------------------------------------------------------------- measuring
@dataclass(frozen=True)
class Sample:
    """One generation: prompt length, new tokens, time to first token and the decode time after it."""

    prompt_tokens: int
    new_tokens: int
    ttft_s: float
    decode_s: float

    @property
    def decode_tps(self) -> float:
        """Tokens per second after the first new token."""
        return (self.new_tokens - 1) / self.decode_s if self.decode_s > 0 else 0.0

    @property
    def prefill_tps(self) -> float:
        """Prompt tokens per second up to the first new token."""
        return self.prompt_tokens / self.ttft_s if self.ttft_s > 0 else 0.0


class _Clock:
    """A transformers streamer that notes when each new token arrives (the first call is the prompt).

    With ``on_token`` it also hands each new token id over (to write the token into a recorded trace).
    """

    def __init__(self, on_token: Callable[[int], None] | None = None) -> None:
        self.times: list[float] = []
        self.on_token = on_token

    def put(self, value: Any) -> None:
        """Called with the prompt, then with each new token."""
        self.times.append(time.perf_counter())
        if self.on_token is not None and len(self.times) > 1:
            self.on_token(int(value.reshape(-1)[0]))

    def end(self) -> None:
        """Called when generation ends."""


def generate_once(loaded: Loaded, ids: list[int], new_tokens: int) -> Sample:
    """Greedily generate exactly ``new_tokens`` tokens after ``ids`` and time it."""
    import torch

    input_ids = torch.tensor([ids], device=loaded.device)
    clock = _Clock(loaded.on_token)
    with torch.inference_mode():
        start = time.perf_counter()
        loaded.model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            streamer=clock,
            pad_token_id=0,
        )
        if loaded.device == "cuda":
            torch.cuda.synchronize()
    tokens = clock.times[1:]
    return Sample(len(ids), len(tokens), tokens[0] - start, tokens[-1] - tokens[0])


class PeakRSS:
    """Samples this process's resident memory in a thread (every 10 ms) and keeps the peak."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._process.memory_info().rss)


@dataclass
class Result:
    """The measurements of one configuration."""

    label: str
    kind: str
    samples: list[Sample]
    stats: dict[str, float] | None
    fast_tier_bytes: int
    slow_tier_bytes: int
    peak_rss_bytes: int
    fast_peak_bytes: int | None = None
    expert_format: str = ""

    @property
    def decode_tps(self) -> float:
        """Median decode tokens/s."""
        return statistics.median(s.decode_tps for s in self.samples)

    @property
    def prefill_tps(self) -> float:
        """Median prefill tokens/s."""
        return statistics.median(s.prefill_tps for s in self.samples)

    @property
    def ttft_s(self) -> float:
        """Median time to first token."""
        return statistics.median(s.ttft_s for s in self.samples)

    @property
    def new_tokens(self) -> int:
        """New tokens generated in the measured runs."""
        return sum(s.new_tokens for s in self.samples)

    def per_token(self, key: str) -> float | None:
        """An engine counter's growth per generated token (None for baselines)."""
        if self.stats is None:
            return None
        return self.stats[key] / self.new_tokens

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {
            "label": self.label,
            "kind": self.kind,
            "expert_format": self.expert_format,
            "decode_tokens_per_s": self.decode_tps,
            "prefill_tokens_per_s": self.prefill_tps,
            "ttft_s": self.ttft_s,
            "samples": [{**asdict(s), "decode_tps": s.decode_tps} for s in self.samples],
            "engine": self.stats,
            "bytes_per_token": self.per_token("bytes_loaded"),
            "stall_s_per_token": self.per_token("load_s"),
            "host_per_token": self.per_token("host"),
            "fast_tier_bytes": self.fast_tier_bytes,
            "fast_peak_bytes": self.fast_peak_bytes,
            "slow_tier_bytes": self.slow_tier_bytes,
            "peak_rss_bytes": self.peak_rss_bytes,
        }


def _counter_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """What an engine counted between two ``stats()`` readings, with its rates (telemetry's Counters)."""
    from moe_tui.telemetry import Counters

    delta = Counters.from_mapping(after) - Counters.from_mapping(before)
    return {**asdict(delta), **delta.rates(), "tokens": after["tokens"] - before["tokens"]}


@dataclass(frozen=True)
class Settings:
    """What every configuration runs: prompts (as token ids), new tokens per prompt, measured runs, device."""

    prompts: list[list[int]]
    new_tokens: int = 32
    runs: int = 2
    device: str = "cpu"
    warmup_tokens: int = 4
    quant_cache: str | None = None  # keep quantized stores here across runs (None: only for this run)


def measure(loaded: Loaded, settings: Settings) -> Result:
    """Warm up once, then generate from every prompt ``runs`` times; counters are differences over those runs."""
    import torch

    generate_once(loaded, settings.prompts[0], settings.warmup_tokens)
    before = loaded.engine.stats() if loaded.engine is not None else None
    cuda = settings.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    samples = []
    with PeakRSS() as rss:
        for _ in range(settings.runs):
            for ids in settings.prompts:
                samples.append(generate_once(loaded, ids, settings.new_tokens))
    stats = _counter_delta(before, loaded.engine.stats()) if before is not None else None
    fast_peak = loaded.fast_tier_bytes + torch.cuda.max_memory_allocated() - base if cuda else None
    return Result(
        label=loaded.spec.label,
        kind=loaded.spec.kind,
        samples=samples,
        stats=stats,
        fast_tier_bytes=loaded.fast_tier_bytes,
        slow_tier_bytes=loaded.slow_tier_bytes,
        peak_rss_bytes=rss.peak,
        fast_peak_bytes=fast_peak,
        expert_format=loaded.expert_format,
    )


def _quant_cache(settings: Settings) -> Path | None:
    return Path(settings.quant_cache).expanduser() if settings.quant_cache else None


def run_configs(
    source: BenchModel,
    specs: Sequence[Spec],
    settings: Settings,
    routing: ForcedRouting | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> list[Result]:
    """Load, measure and release each configuration in turn (one at a time, so memory figures stay apart)."""
    results = []
    with tempfile.TemporaryDirectory(prefix="moe-tui-bench-") as workdir:
        for spec in specs:
            progress(f"loading {spec.label}")
            loaded = load(spec, source, settings.device, Path(workdir), _quant_cache(settings))
            try:
                if routing is not None:
                    routing.install(loaded.model)
                progress(f"running {spec.label}")
                results.append(measure(loaded, settings))
            finally:
                if routing is not None:
                    routing.remove()
                loaded.close()
    return results


def run_interleaved(
    source: BenchModel,
    specs: Sequence[Spec],
    settings: Settings,
    progress: Callable[[str], None] = lambda message: None,
) -> list[Result]:
    """Load every configuration at once and alternate them prompt by prompt, in an order reversed after each
    prompt, so that a machine whose speed drifts (other work, thermal limits) and the CPU caches one
    configuration leaves to the next affect them all alike: the setting for ratios close to 1."""
    with tempfile.TemporaryDirectory(prefix="moe-tui-bench-") as workdir:
        loaded = []
        try:
            for spec in specs:
                progress(f"loading {spec.label}")
                loaded.append(load(spec, source, settings.device, Path(workdir), _quant_cache(settings)))
            for item in loaded:
                generate_once(item, settings.prompts[0], settings.warmup_tokens)
            before = [item.engine.stats() if item.engine is not None else None for item in loaded]
            samples: list[list[Sample]] = [[] for _ in loaded]
            progress("running " + ", ".join(spec.label for spec in specs) + " in turn")
            order = list(range(len(loaded)))
            with PeakRSS() as rss:
                for _ in range(settings.runs):
                    for ids in settings.prompts:
                        for index in order:
                            samples[index].append(generate_once(loaded[index], ids, settings.new_tokens))
                        order.reverse()  # A B C, C B A, ...: no configuration always follows the same one
            return [
                Result(
                    label=item.spec.label,
                    kind=item.spec.kind,
                    samples=samples[index],
                    stats=_counter_delta(before[index], item.engine.stats()) if before[index] is not None else None,
                    fast_tier_bytes=item.fast_tier_bytes,
                    slow_tier_bytes=item.slow_tier_bytes,
                    peak_rss_bytes=rss.peak,
                    expert_format=item.expert_format,
                )
                for index, item in enumerate(loaded)
            ]
        finally:
            for item in loaded:
                item.close()


# ----------------------------------------------------------------------------------------------- machine
def describe_machine() -> dict[str, Any]:
    """CPU model, cores, RAM, GPU (if any) and library versions, for the benchmark's output."""
    import psutil
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_bytes": psutil.virtual_memory().total,
        "gpu": gpu,
        "gpu_bytes": torch.cuda.get_device_properties(0).total_memory if gpu else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def tiers_note(device: str) -> str:
    """Which memory tiers are real on this run, said plainly."""
    if device == "cuda":
        return "fast tier: GPU memory; slow tier: pinned host RAM; copies cross the host-to-GPU bus"
    return (
        "fast tier and slow tier are both host RAM on this CPU-only run: an expert copy is a memcpy within RAM, "
        "not a bus transfer, so what the engine shows here is exact cache behaviour, not a GPU's speed-up"
    )


def report(source: BenchModel, settings: Settings, results: Sequence[Result], notes: Sequence[str] = ()) -> dict:
    """Everything ``--json`` prints: machine, model, settings, one entry per configuration with ratios."""
    first = results[0].decode_tps if results else 0.0
    entries = []
    for result in results:
        entry = result.to_dict()
        entry["decode_vs_first"] = result.decode_tps / first if first else None
        entries.append(entry)
    settings_data = replace(settings, prompts=[])
    return {
        "machine": describe_machine(),
        "tiers": tiers_note(settings.device),
        "model": source.description,
        "settings": {**asdict(settings_data), "prompts": len(settings.prompts)},
        "prompt_tokens": [len(p) for p in settings.prompts],
        "notes": list(notes),
        "results": entries,
    }


def dumps(data: dict) -> str:
    """The report as indented JSON."""
    return json.dumps(data, indent=1)
