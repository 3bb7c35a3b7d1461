"""The names and values each engine setting can take, in one place and without importing torch, so that the
command line, the engine's checks, the benchmark's specs and the app all offer the same choices."""

from __future__ import annotations

from moe_tui.policies import POLICIES

POLICY_NAMES = tuple(POLICIES)
EXPERT_BITS = (2, 3, 4, 8)
ATTN_BITS = (4, 8)
DEVICES = ("cpu", "cuda", "auto")
STORES = ("ram", "mmap")
MISS_MODES = ("copy", "host", "auto")  # see moe_tui.offload.misses
COMPUTE_DTYPES = ("bfloat16", "float16", "float32")
