"""How much fast-tier memory is free, refusing to grow the caches beyond it, and what to do when it ran out.

The check made before anything is allocated is :mod:`moe_tui.fit`'s.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

import psutil
import torch

from moe_tui.errors import UserError
from moe_tui.fit import FastTierNeed
from moe_tui.precision import format_bytes


def free_bytes(device: torch.device) -> int:
    """Bytes the fast tier can still allocate: free GPU memory (plus PyTorch's unused reserve) or available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    return int(psutil.virtual_memory().available)


KERNEL_CACHE_ENTRIES = 32
KERNEL_CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")  # oneDNN's and ideep's


def bound_kernel_caches() -> None:
    """Keep oneDNN's caches of compiled matmul kernels to ``KERNEL_CACHE_ENTRIES`` each, unless the user sized them.

    PyTorch computes bf16 and fp16 matmuls on a CPU with oneDNN, which compiles a kernel for every shape it meets
    and keeps it, with its descriptor in a second cache (ideep's), about 1 MiB a shape. Every expert sees a
    different number of tokens, so every answer brings new shapes: a long chat's RSS grew 464 MiB over 80
    answers at Mixtral-8x7B's shapes and would only have stopped at both caches' default of 1024 entries.
    Bounded, the caches hold about ``KERNEL_CACHE_ENTRIES`` MiB, inside the fit check's CPU margin; a kernel
    compiled again costs about half a millisecond. Both caches read their size when first used, so this only
    takes effect before the process's first such matmul. (An ideep size of 0 crashes PyTorch; this never sets it.)
    """
    for name in KERNEL_CACHE_VARIABLES:
        os.environ.setdefault(name, str(KERNEL_CACHE_ENTRIES))


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
LARGE_BLOCK = 1 << 20


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        library = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return library if hasattr(library, "mallopt") and hasattr(library, "malloc_trim") else None


@functools.cache
def return_large_frees() -> bool:
    """Have glibc give every freed block of 1 MiB or more back to the system at once; False where it cannot.

    By default glibc raises that threshold as large blocks are freed (up to 32 MiB) and keeps what is freed
    below it for reuse, so a CPU answer's freed activations and the KV cache's superseded copies stay in the
    process: at Mixtral-8x7B's shapes its RSS grew 2.4x what the answer held (``benchmarks/fit_check.py``).
    With the threshold fixed the RSS follows the memory held, which is what the fit check counts. Other C
    libraries are left as they are. Called once per process (later calls return the first answer).
    """
    library = _glibc()
    if library is None:
        return False
    hand_back_freed()  # what was kept until now goes back too
    return bool(library.mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK))


def hand_back_freed() -> None:
    """Have glibc give the system the memory this process freed but kept for reuse (``malloc_trim``); other C
    libraries are left as they are."""
    library = _glibc()
    if library is not None:
        library.malloc_trim(0)


def check_growth(
    device: torch.device,
    old: list[int],
    new: list[int],
    expert_bytes: int,
    conversation: FastTierNeed | None = None,
    kv_held: int = 0,
) -> None:
    """Refuse growing the caches from ``old`` to ``new`` slots per layer when the new slots would not fit.

    Resizing a layer allocates its new slots before freeing the old ones, so the peak is the growth of all
    layers plus the largest new layer. ``conversation`` is what the load's fit check kept free for answering
    (the KV cache at the chosen context, a prefill chunk's activations, the margin): the new slots must leave
    it free too, less ``kv_held``, the bytes of KV cache the conversation already holds (allocated, so no
    longer free). Without it the whole KV cache counts as still to come, which errs on the side of refusing.
    """
    peak = _growth_peak(old, new, expert_bytes)
    if not peak:
        return  # shrinking or keeping allocates nothing
    available = free_bytes(device)
    held = min(max(kv_held, 0), conversation.kv_cache) if conversation else 0
    kept = conversation.total - held if conversation else 0
    if peak + kept <= available:
        return
    # The smallest current size allocates nothing, so some k always fits.
    fitting = next(k for k in range(max(new), 0, -1) if _growth_fits(old, k, expert_bytes, kept, available))
    needed = format_bytes(peak)
    beside = ""
    if conversation:
        allocated = f"; {format_bytes(held)} of the KV cache already allocated" if held else ""
        beside = f" beside what answering needs ({conversation.parts()}{allocated})"
    raise UserError(
        f"growing the expert cache needs {needed} more {device.type} memory{beside} but only "
        f"{format_bytes(available)} is free; cache size {fitting} would fit"
    )


def _growth_fits(old: list[int], k: int, expert_bytes: int, kept: int, available: int) -> bool:
    peak = _growth_peak(old, [k] * len(old), expert_bytes)
    return not peak or peak + kept <= available


def _growth_peak(old: list[int], new: list[int], expert_bytes: int) -> int:
    growth = sum(max(n - o, 0) for o, n in zip(old, new, strict=True))
    return (growth + max(new)) * expert_bytes if growth else 0


def out_of_memory_advice(memory: dict, bits: int | None, device: str) -> str:
    """What ran out and the settings that free memory, from an engine's :meth:`OffloadedModel.memory`.

    ``device`` is where the allocation failed (``cuda`` or ``cpu``). The slots are the part a setting can
    shrink at once: halving k frees half of them; unquantized experts shrink to about a quarter at 4 bits.
    """
    tier = "GPU" if device == "cuda" else "host"
    sizes = list(memory.get("cache_size") or [])
    expert = int(memory.get("expert_bytes") or 0)
    choices = []
    if sizes and max(sizes) > 1:
        smaller = max(max(sizes) // 2, 1)
        freed = sum(k - min(k, smaller) for k in sizes) * expert
        choices.append(f"cache size k={smaller} (frees {format_bytes(freed)})")
    if bits is None:
        choices.append("--expert-bits 4")
    elif bits > 2:
        choices.append(f"--expert-bits {2 if bits <= 3 else 3 if bits == 4 else 4}")
    choices.append("a new chat or fewer new tokens (the KV cache grows with the conversation)")
    return f"ran out of {tier} memory; what would fit: " + ", or ".join(choices)
