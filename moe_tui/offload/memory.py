"""How much fast-tier memory is free, and refusing cache sizes that do not fit before anything is allocated."""

from __future__ import annotations

import psutil
import torch

from moe_tui.errors import UserError
from moe_tui.precision import format_bytes


def free_bytes(device: torch.device) -> int:
    """Bytes the fast tier can still allocate: free GPU memory (plus PyTorch's unused reserve) or available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    return int(psutil.virtual_memory().available)


def check_fits(device: torch.device, sizes: list[int], expert_bytes: int, fixed_bytes: int = 0) -> None:
    """Refuse (UserError) when ``sum(sizes)`` slots plus ``fixed_bytes`` exceed the free fast-tier memory.

    The message names the largest cache size per layer that would fit.
    """
    needed = sum(sizes) * expert_bytes + fixed_bytes
    available = free_bytes(device)
    if needed <= available:
        return
    layers = len(sizes)
    fitting = (available - fixed_bytes) // (layers * expert_bytes) if available > fixed_bytes else 0
    hint = f"cache size {fitting} would fit" if fitting >= 1 else "not even cache size 1 fits"
    raise UserError(
        f"the expert cache needs {format_bytes(needed)} of {device.type} memory ({sum(sizes)} slots of "
        f"{format_bytes(expert_bytes)}{' plus ' + format_bytes(fixed_bytes) if fixed_bytes else ''}) but only "
        f"{format_bytes(available)} is free; {hint}"
    )


def check_growth(device: torch.device, old: list[int], new: list[int], expert_bytes: int) -> None:
    """Refuse growing the caches from ``old`` to ``new`` slots per layer when the new slots would not fit.

    Resizing a layer allocates its new slots before freeing the old ones, so the peak is the growth of all
    layers plus the largest new layer.
    """
    available = free_bytes(device)
    if _growth_peak(old, new, expert_bytes) <= available:
        return
    fitting = next(
        k for k in range(max(new), 0, -1) if _growth_peak(old, [k] * len(old), expert_bytes) <= available or k == 1
    )
    raise UserError(
        f"growing the expert cache needs {format_bytes(_growth_peak(old, new, expert_bytes))} more "
        f"{device.type} memory but only {format_bytes(available)} is free; cache size {fitting} would fit"
    )


def _growth_peak(old: list[int], new: list[int], expert_bytes: int) -> int:
    growth = sum(max(n - o, 0) for o, n in zip(old, new, strict=True))
    return (growth + max(new)) * expert_bytes if growth else 0
