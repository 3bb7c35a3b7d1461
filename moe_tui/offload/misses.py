"""What to do with a missed expert: copy it into a slot, or compute it on the host straight from the store.

A miss has three answers in this engine: a **hit** is computed from its slot; a **copy** brings the expert into a
slot (evicting another) and computes it there; a **host** miss computes the expert on the CPU from the store's
own buffer, with no copy and no change to the cache (llama.cpp's ``--n-cpu-moe`` and Fiddler do the same). The
setting ``miss`` is ``copy``, ``host`` or ``auto``; ``auto`` asks :class:`MissCosts` per layer pass (every
miss of a pass is the same size and has the same tokens, so they all go the same way):

    copy  = copy_s + fast(n) - reuse x (min(copy_s + fast(1), host(1)) - fast(1))
    host  = host(n)

where ``fast(n)`` and ``host(n)`` are the measured times to compute one expert for ``n`` tokens in the fast tier
and on the host, ``copy_s`` the measured time to copy one expert buffer into a slot, and ``reuse`` the layer's
hit rate so far (the chance that a copied expert is used again from its slot, which saves a later miss). On a
CPU-only machine the fast tier is the host: both computations cost the same and the copy is pure cost, so
``auto`` computes every miss from the store. With CUDA a long prefill (large ``n``) copies, a single token
on a fast host computes there.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from moe_tui.offload.families.base import GatedUnit
from moe_tui.offload.formats import ExpertFormat
from moe_tui.offload.store import ExpertStore

CALIBRATION_TOKENS = (1, 16)
CALIBRATION_RUNS = 5


@dataclass(frozen=True)
class MissCosts:
    """Measured seconds: copying one expert into a slot, and computing one as ``a + b * tokens`` in each tier."""

    copy_s: float
    fast_s: tuple[float, float]
    host_s: tuple[float, float]

    def fast(self, tokens: int) -> float:
        """Seconds to compute one expert for ``tokens`` tokens in the fast tier."""
        return self.fast_s[0] + self.fast_s[1] * tokens

    def host(self, tokens: int) -> float:
        """Seconds to compute one expert for ``tokens`` tokens on the host, from the store."""
        return self.host_s[0] + self.host_s[1] * tokens

    def host_is_cheaper(self, tokens: int, reuse: float) -> bool:
        """Whether computing a missed expert on the host beats copying it (see the module docstring)."""
        later = max(min(self.copy_s + self.fast(1), self.host(1)) - self.fast(1), 0.0)
        copy = self.copy_s + self.fast(tokens) - reuse * later
        return self.host(tokens) < copy


def host_can_compute(fmt: ExpertFormat) -> bool:
    """Whether the store's layout can be computed by the CPU (the CUDA int4 layout cannot)."""
    return fmt.layout in ("any", "cpu")


def measure_costs(fmt: ExpertFormat, store: ExpertStore, device: torch.device, glu: GatedUnit) -> MissCosts:
    """Time one expert's copy into a scratch slot and its computation in both tiers (median of a few runs)."""
    row = store.row(0, 0)
    scratch = torch.empty(fmt.nbytes, dtype=torch.uint8, device=device)
    cuda = device.type == "cuda"

    def timed(work: Callable[[], object]) -> float:
        work()  # warm-up: first-call costs are not what a miss pays
        samples = []
        for _ in range(CALIBRATION_RUNS):
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            work()
            if cuda:
                torch.cuda.synchronize(device)
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    copy_s = timed(lambda: scratch.copy_(row, non_blocking=cuda))
    fast_views, host_views = fmt.views(scratch), fmt.views(row)

    def line(views, where: torch.device) -> tuple[float, float]:
        few, many = CALIBRATION_TOKENS
        t = {}
        for n in (few, many):
            x = torch.zeros(n, fmt.hidden, dtype=fmt.dtype, device=where)
            t[n] = timed(lambda x=x: fmt.forward(views, x, glu))
        slope = max(t[many] - t[few], 0.0) / (many - few)
        return max(t[few] - slope * few, 0.0), slope

    host = line(host_views, torch.device("cpu")) if host_can_compute(fmt) else (float("inf"), 0.0)
    fast = host if device.type == "cpu" else line(fast_views, device)  # on CPU both tiers are the same cores
    return MissCosts(copy_s=copy_s, fast_s=fast, host_s=host)
