"""Quick probes of the two speeds the planner's estimate rests on, measured on the machine at hand.

* transfer: bytes/s of copying an expert-sized buffer from the slow tier into a fast-tier slot (host RAM to
  host RAM on a CPU-only machine; pinned host memory to the GPU with CUDA);
* compute: bytes/s at which a batch-1 matrix-vector product reads weights in the fast tier, the work that
  bounds decoding one token at a time.

Each is the median of a few repetitions after one warm-up; a probe takes well under a second.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

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
    return nbytes / _median_seconds(lambda: target.copy_(source, non_blocking=cuda), cuda)


def compute_bandwidth(device: str = "cpu", dtype: str = "fp32", nbytes: int = PROBE_BYTES) -> float:
    """Bytes/s of weights read by a one-token linear layer (x @ W.T) over a ``nbytes`` weight of ``dtype``."""
    import torch

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype, torch.float32)
    element = torch.empty((), dtype=torch_dtype).element_size()
    cols = 4096
    rows = max(1, nbytes // (element * cols))
    weight = torch.randn(rows, cols, dtype=torch_dtype, device=device)
    x = torch.randn(1, cols, dtype=torch_dtype, device=device)
    seconds = _median_seconds(lambda: torch.nn.functional.linear(x, weight), device == "cuda")
    return rows * cols * element / seconds


def _median_seconds(work, cuda: bool) -> float:
    import torch

    def once() -> float:
        start = time.perf_counter()
        work()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    once()
    return statistics.median(once() for _ in range(REPEATS))
