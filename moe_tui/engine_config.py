"""The offloading engine's settings: the values each can take and the checked set of them, without torch.

The command line (``chat``, ``ask``), the benchmark's specs (``k=2,prefetch=1``), the app's model picker and
the Python API all make the same :class:`OffloadConfig`, so every setting has one name, one default and one
check (model-independent checks here, as soon as a config is made; checks against a model's shape in
:meth:`OffloadConfig.cache_sizes` and :meth:`OffloadConfig.check_prefetch`). torch is imported only by the two
methods that answer in torch's terms, so the app can build a config on its UI thread at no cost.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moe_tui.errors import UserError
from moe_tui.policies import POLICIES

if TYPE_CHECKING:
    import torch

POLICY_NAMES = tuple(POLICIES)
EXPERT_BITS = (2, 3, 4, 8)
ATTN_BITS = (4, 8)
DEVICES = ("cpu", "cuda", "auto")
STORES = ("ram", "mmap")
MISS_MODES = ("copy", "host", "auto")  # see moe_tui.offload.misses
COMPUTE_DTYPES = ("bfloat16", "float16", "float32")
# Each name a compute dtype may be given by, and the torch dtype it means.
DTYPE_NAMES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


def dtype_named(name: str) -> torch.dtype:
    """The torch dtype a compute dtype's name (or alias: ``bf16``, ``fp16``, ``fp32``) means."""
    import torch

    return getattr(torch, DTYPE_NAMES[name])


@dataclass
class OffloadConfig:
    """How to offload a model's experts.

    ``cache_size``: expert slots per MoE layer in the fast tier (an int, or one int per MoE layer).
    ``prefetch``: experts per layer guessed from the next layer's router and loaded ahead (0 = off).
    ``policy``: eviction policy (``lru``, ``lfu``, ``fifo``).
    ``expert_bits`` / ``attn_bits``: HQQ bit width for routed experts (2, 3, 4, 8) and for the other linear
    layers of the decoder (4, 8); None keeps them unquantized. ``group_size``: HQQ group size.
    ``device``: the fast tier (``cpu``, ``cuda``, ``auto``). ``store``: the slow tier on CPU (``ram`` or
    ``mmap``, a memory-mapped file); with CUDA, ``ram`` means pinned host memory.
    ``dtype``: compute dtype (None: the model's or checkpoint's own). ``trace_path``: write a JSON Lines trace.
    ``quant_cache_dir``: save the packed (quantized) expert store here and reuse it on the next start.
    ``telemetry``: record one LayerStep per layer per pass (stats, snapshot, trace); off only to measure its cost.
    ``miss``: what a missed expert does: ``copy`` it into a slot, compute it on the ``host`` from the store
    without a copy, or ``auto`` (a measured cost model decides per layer pass; see :mod:`moe_tui.offload.misses`).
    ``fused``: compute 4- and 8-bit experts with PyTorch's fused kernels where they fit (off: dequantize every
    use, as for 2 and 3 bits). ``quant_optimize``: HQQ's zero-point optimisation when quantizing experts
    (off: min-max rounding). None decides by where quantizing runs: on with CUDA, off on a CPU, where the
    optimiser costs about 70x (40 s against 0.6 s per Mixtral expert matrix on 2 cores: 9 hours for the
    model) for 1.6 points of next-token agreement at 4 bits (93.0% against 91.4% on the demo model).
    ``context``: the tokens of conversation the KV cache is sized (and the fit checked) for; answers never read
    more (None: 4096, or the model's own limit when smaller).
    """

    cache_size: int | list[int] = 2
    prefetch: int = 1
    policy: str = "lru"
    expert_bits: int | None = None
    attn_bits: int | None = None
    group_size: int = 64
    device: str = "cpu"
    store: str = "ram"
    dtype: str | torch.dtype | None = None
    trace_path: str | Path | None = None
    quant_cache_dir: str | Path | None = None
    telemetry: bool = True
    miss: str = "copy"
    fused: bool = True
    quant_optimize: bool | None = None
    context: int | None = None

    def __post_init__(self) -> None:
        sizes = self.cache_size if isinstance(self.cache_size, (list, tuple)) else [self.cache_size]
        if not sizes or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in sizes):
            raise UserError(f"cache size must be a whole number >= 1 (one per MoE layer), got {self.cache_size!r}")
        if not isinstance(self.prefetch, int) or self.prefetch < 0:
            raise UserError(f"prefetch must be a whole number >= 0 (0 turns it off), got {self.prefetch!r}")
        if not isinstance(self.policy, str) or self.policy.lower() not in POLICIES:
            raise UserError(f"unknown cache policy {self.policy!r}; choose from {', '.join(POLICIES)}")
        self.policy = self.policy.lower()
        if self.expert_bits is not None and self.expert_bits not in EXPERT_BITS:
            raise UserError(f"unsupported expert bit width {self.expert_bits!r}; choose from 2, 3, 4, 8 or none")
        if self.attn_bits is not None and self.attn_bits not in ATTN_BITS:
            raise UserError(f"unsupported attention bit width {self.attn_bits!r}; choose 4, 8 or none")
        if not isinstance(self.group_size, int) or self.group_size < 8 or self.group_size % 8:
            raise UserError(f"group size must be a positive multiple of 8, got {self.group_size!r}")
        if self.device not in DEVICES:
            raise UserError(f"unknown device {self.device!r}; choose from {', '.join(DEVICES)}")
        if self.store not in STORES:
            raise UserError(f"unknown expert store {self.store!r}; choose from {', '.join(STORES)}")
        if self.miss not in MISS_MODES:
            raise UserError(f"unknown miss mode {self.miss!r}; choose from {', '.join(MISS_MODES)}")
        for name in ("telemetry", "fused"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"{name} must be on or off (true or false), got {getattr(self, name)!r}")
        if self.quant_optimize is not None and not isinstance(self.quant_optimize, bool):
            raise UserError(f"quant_optimize must be true, false or left out, got {self.quant_optimize!r}")
        context = self.context
        if context is not None and (isinstance(context, bool) or not isinstance(context, int) or context < 1):
            raise UserError(f"context must be a whole number of tokens >= 1, got {self.context!r}")
        if isinstance(self.dtype, str) and self.dtype not in DTYPE_NAMES:
            raise UserError(f"unknown dtype {self.dtype!r}; choose from {', '.join(DTYPE_NAMES)}")
        if self.dtype is not None and not isinstance(self.dtype, str):
            import torch  # only a caller already holding a torch dtype gets here

            if not isinstance(self.dtype, torch.dtype):
                raise UserError(f"unknown dtype {self.dtype!r}; choose from {', '.join(DTYPE_NAMES)}")

    def torch_dtype(self) -> torch.dtype | None:
        """The compute dtype as a torch dtype (None: keep the model's)."""
        if self.dtype is None or not isinstance(self.dtype, str):
            return self.dtype
        return dtype_named(self.dtype)

    def resolved_device(self) -> torch.device:
        """The fast-tier device; UserError when CUDA is asked for and absent."""
        return resolve_device(self.device)

    def cache_sizes(self, num_layers: int, num_experts: int) -> list[int]:
        """One cache size per MoE layer, checked against the model's shape."""
        return check_cache_sizes(self.cache_size, num_layers, num_experts)

    def check_prefetch(self, num_experts: int) -> None:
        """Refuse a prefetch depth the model cannot have."""
        if self.prefetch > num_experts:
            raise UserError(f"prefetch {self.prefetch} is more than this model's {num_experts} experts per layer")


def resolve_device(choice: str) -> torch.device:
    """The device ``--device`` names (``cpu``, ``cuda``, or ``auto``: CUDA when there is one); UserError, with the
    likely reason, when CUDA is asked for and absent. Choosing CUDA first settles its allocator's configuration
    (:func:`prefer_expandable_segments`), which CUDA reads as it starts, and its attention kernels
    (:func:`avoid_cudnn_attention`)."""
    import torch

    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(_no_cuda_message())
    prefer_expandable_segments()
    avoid_cudnn_attention()
    return torch.device("cuda", torch.cuda.current_device())


ALLOCATOR_VARIABLES = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")  # PyTorch's newer name, and the older one


def prefer_expandable_segments() -> None:
    """Have PyTorch's CUDA allocator map memory into growable segments, unless the user configured it.

    A chunked prefill allocates attention buffers of a new size for every chunk (the context grows by a chunk
    each time). The default allocator keeps each size's blocks in separate segments, so the memory it reserves
    grows past what is in use (on an H200, gpt-oss-20b's 3500-token prefill reserved 5.7 GiB for 3.3 GiB
    allocated); expandable segments let freed pages serve the next, larger buffer. PyTorch reads the setting
    when CUDA starts in the process, so this must come first: ``moe-tui`` calls it as it starts, and the engine
    when it resolves its device.
    """
    if not any(os.environ.get(name) for name in ALLOCATOR_VARIABLES):
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"


def avoid_cudnn_attention() -> None:
    """Take cuDNN out of PyTorch's attention kernels for this process (flash and memory-efficient attention remain).

    On Hopper GPUs PyTorch 2.11 tries cuDNN first, and cuDNN builds an execution plan for every new shape. In
    decoding every token is a new key length, so every layer paid for a plan on every token: on an H200, a
    4-layer bf16 Mixtral decoded at 43.8 ms a token, 84% of its CPU time in planning, against 7.1 ms once the
    lengths had been seen.
    """
    import torch

    torch.backends.cuda.enable_cudnn_sdp(False)


def _no_cuda_message() -> str:
    """Why ``--device cuda`` cannot be had here: a CPU-only PyTorch build, or no device it can see."""
    import torch

    if torch.version.cuda is None:
        reason = (
            f"this PyTorch ({torch.__version__}) is a CPU-only build; on a machine with an NVIDIA driver"
            " ./scripts/install.sh installs the CUDA build"
        )
    else:
        reason = "PyTorch finds no CUDA device (nvidia-smi should list the GPU, and CUDA_VISIBLE_DEVICES allow it)"
    return f"--device cuda was asked for, but {reason}; use --device cpu"


def check_cache_sizes(cache_size: int | list[int] | tuple[int, ...], num_layers: int, num_experts: int) -> list[int]:
    """Expand and check cache sizes: each within 1..num_experts, one per MoE layer."""
    sizes = list(cache_size) if isinstance(cache_size, (list, tuple)) else [cache_size] * num_layers
    if len(sizes) != num_layers:
        raise UserError(f"cache size has {len(sizes)} entries but the model has {num_layers} MoE layers")
    for k in sizes:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_experts:
            raise UserError(f"cache size {k!r} is out of range: choose 1..{num_experts} (experts per layer)")
    return sizes


# The settings a user may keep in the settings file's [engine] table (defaults for chat and ask; flags win).
SAVED_FIELDS = (
    "cache_size", "prefetch", "policy", "expert_bits", "attn_bits", "group_size", "device", "store", "dtype",
    "miss", "quant_optimize", "context",
)  # fmt: skip


def check_saved_choices(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The saved engine settings that are settings and pass :class:`OffloadConfig`'s own checks, and for each
    one left out, why (an unknown name, or the check's message)."""
    kept: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for name, value in values.items():
        if name not in SAVED_FIELDS:
            problems[name] = "unknown setting"
            continue
        try:
            OffloadConfig(**{name: value})
        except UserError as error:
            problems[name] = str(error)
            continue
        kept[name] = value
    return kept, problems
