"""Quick probes of what the planner's estimate rests on, measured on the machine at hand.

* transfer: bytes/s of copying an expert-sized buffer from the slow tier into a fast-tier slot (host RAM to
  host RAM on a CPU-only machine; pinned host memory to the GPU with CUDA);
* compute: bytes/s at which a batch-1 matrix-vector product reads weights in the fast tier, the work that
  bounds decoding one token at a time;
* dequantization: bytes/s of HQQ-packed weights turned back into floats before computing (what non-expert
  weights quantized with HQQ pay on every use);
* experts: bytes/s of packed expert read while one token goes through one expert, per precision, in the
  format the engine picks (kernels read their bytes at different rates, and some formats unpack first);
* overhead: seconds per decoded token that do not depend on weight size (the decoder's and the engine's
  per-layer bookkeeping), from a miniature model of the same depth.

The bandwidths are the fastest of a few repetitions after a warm-up (what the hardware can do: on a busy
machine single copies swing by an order of magnitude); the overhead is the median gap between generated
tokens, as ``moe-tui bench`` reports decode speed. Each probe takes about a second.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moe_tui.offload.formats import ExpertFormat

PROBE_BYTES = 64 * 1024 * 1024
REPEATS = 7


@dataclass(frozen=True)
class Bandwidths:
    """Measured speeds in bytes per second, with the device they were measured on."""

    device: str
    transfer: float
    compute: float


def measure(device: str = "cpu", dtype: str = "fp32", nbytes: int = PROBE_BYTES) -> Bandwidths:
    """Measure transfer and compute bandwidth on ``device`` (``cpu`` or ``cuda``) for weights of ``dtype``."""
    return Bandwidths(
        device=device, transfer=transfer_bandwidth(device, nbytes), compute=compute_bandwidth(device, dtype, nbytes)
    )


def transfer_bandwidth(device: str = "cpu", nbytes: int = PROBE_BYTES) -> float:
    """Bytes/s of copying ``nbytes`` from a (pinned, with CUDA) host buffer into a preallocated fast-tier buffer."""
    import torch

    cuda = device == "cuda"
    source = torch.empty(nbytes, dtype=torch.uint8, pin_memory=cuda)
    source.fill_(1)
    target = torch.empty(nbytes, dtype=torch.uint8, device=device)
    return nbytes / _best_seconds(lambda: target.copy_(source, non_blocking=cuda), cuda)


def compute_bandwidth(device: str = "cpu", dtype: str = "fp32", nbytes: int = PROBE_BYTES) -> float:
    """Bytes/s of weights read by a one-token linear layer (x @ W.T) over a ``nbytes`` weight of ``dtype``."""
    import torch

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype, torch.float32)
    element = torch.empty((), dtype=torch_dtype).element_size()
    cols = 4096
    rows = max(1, nbytes // (element * cols))
    weight = torch.randn(rows, cols, dtype=torch_dtype, device=device)
    x = torch.randn(1, cols, dtype=torch_dtype, device=device)
    seconds = _best_seconds(lambda: torch.nn.functional.linear(x, weight), device == "cuda")
    return rows * cols * element / seconds


def _best_seconds(work, cuda: bool) -> float:
    import torch

    def once() -> float:
        start = time.perf_counter()
        work()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    once()
    return min(once() for _ in range(REPEATS))


def miniature_mixtral(num_layers: int, num_experts: int, top_k: int):
    """A Mixtral of that depth, experts and top-k with hidden size 64 (random weights, seed 0, on the CPU): its
    decode time is all fixed per-layer costs, the framework's and the engine's."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=num_experts,
        num_experts_per_tok=top_k,
    )
    torch.manual_seed(0)
    return MixtralForCausalLM(config).eval()


def per_token_overhead(
    num_layers: int, num_experts: int, top_k: int, device: str = "cpu", tokens: int = 8, warmup: int = 2
) -> float:
    """Seconds per decoded token that do not depend on weight size: framework and engine bookkeeping.

    Measured on a miniature Mixtral of the same depth, experts and top-k (hidden size 64, every expert
    cached) generating ``tokens`` tokens after ``warmup`` (median gap between tokens): with weights that
    small, what remains is the per-layer cost of running the decoder and the offloading engine, which a large
    model pays too.
    """
    import torch

    from moe_tui.offload import OffloadConfig, offload_model

    engine = offload_model(
        miniature_mixtral(num_layers, num_experts, top_k),
        OffloadConfig(cache_size=num_experts, prefetch=0, device=device),
    )
    try:
        ids = torch.tensor([[1, 2, 3, 4]], device=device)
        times: list[float] = []

        class Clock:
            def put(self, value: object) -> None:
                times.append(time.perf_counter())

            def end(self) -> None:
                pass

        with torch.inference_mode():
            engine.model.generate(ids, max_new_tokens=warmup, min_new_tokens=warmup, do_sample=False, pad_token_id=0)
            engine.model.generate(
                ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0, streamer=Clock()
            )
        return statistics.median(later - earlier for earlier, later in itertools.pairwise(times[1:]))
    finally:
        engine.close()


DEQUANT_PROBE_ELEMENTS = 2 * 1024 * 1024
EXPERT_PROBE_BYTES = 64 * 1024 * 1024  # an expert whose buffer is larger is timed scaled down to about this
SCALED_MULTIPLE = 128  # scaled dimensions stay multiples of every kernel's block, group and tile


def dequant_bandwidth(
    shapes: list[tuple[int, ...]], bits: int, dtype: str = "bf16", device: str = "cpu", group_size: int = 64
) -> float:
    """Bytes/s of HQQ-packed weight that HQQ's layout unpacks before computing, at ``bits`` on ``device``: what
    non-expert weights quantized with HQQ (attention, shared experts) pay on every use.

    Timed on matrices of the aspect of ``shapes``, scaled down to about 2 M elements each (dequantization is
    elementwise, so its rate per byte does not depend on the size).
    """
    import torch

    from moe_tui.engine_config import dtype_named
    from moe_tui.offload.formats import HqqFormat

    scale = math.sqrt(max(1.0, max(math.prod(s) for s in shapes) / DEQUANT_PROBE_ELEMENTS))
    small = [tuple(max(group_size, round(d / scale / group_size) * group_size) for d in s) for s in shapes]
    fmt = HqqFormat(small, dtype_named(dtype), bits, group_size)
    buffer = torch.zeros(fmt.nbytes, dtype=torch.uint8, device=device)  # random bytes would make denormals
    return fmt.nbytes / _best_seconds(lambda: fmt.dequantize(buffer), device == "cuda")


def expert_bandwidth(fmt: ExpertFormat, device: str = "cpu") -> float:
    """Bytes/s of packed expert that computing one token through one expert reads in ``fmt`` (the format the
    engine picks, :func:`moe_tui.offload.formats.make_format`) on ``device``, its unpacking included.

    Kernels differ: on a CPU with AVX2, PyTorch's int4 kernel reads its bytes at a fraction of the rate of a
    bf16 product, and int2, int3 and HQQ's layouts unpack before computing, so the bytes an expert holds do not
    give its time. The format's own ``forward`` is timed on a zeroed buffer (the kernels' speed does not depend on
    the values); an expert whose buffer is larger than :data:`EXPERT_PROBE_BYTES` is scaled down to about that
    size, keeping its aspect and its format (a batch-1 product's rate per byte holds once the packed bytes
    outgrow the caches, which a smaller buffer read again and again would not).
    """
    import torch

    from moe_tui.offload.formats import HqqFormat, make_format

    scale = math.sqrt(max(1.0, fmt.nbytes / EXPERT_PROBE_BYTES))
    if scale > 1:
        width, hidden = (
            max(SCALED_MULTIPLE, round(d / scale / SCALED_MULTIPLE) * SCALED_MULTIPLE) for d in fmt.shapes[0]
        )
        scaled = [(width, hidden), (width, hidden), (hidden, width)]
        probe = make_format(scaled, fmt.dtype, fmt.bits, fmt.group_size, device)
        if type(probe) is not type(fmt):  # the real shapes missed a kernel that the rounded ones fit
            probe = HqqFormat(scaled, fmt.dtype, fmt.bits, fmt.group_size)
        fmt = probe
    views = fmt.views(torch.zeros(fmt.nbytes, dtype=torch.uint8, device=device))
    x = torch.randn(1, fmt.hidden, dtype=fmt.dtype, device=device)

    def glu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(gate) * up

    with torch.inference_mode():
        seconds = _best_seconds(lambda: fmt.forward(views, x, glu), device == "cuda")
    return fmt.nbytes / seconds
