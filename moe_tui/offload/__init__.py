"""Offloaded Mixture-of-Experts inference: experts in a slow-tier store, per-layer caches in fast memory.

```python
from moe_tui.offload import OffloadConfig, offload_model, load_offloaded
om = load_offloaded("path/or/hub-id", OffloadConfig(cache_size=2, prefetch=1, expert_bits=4))
om.model.generate(...)      # a normal transformers model
om.stats(); om.snapshot(); om.memory()
```
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moe_tui.engine_config import OffloadConfig
    from moe_tui.offload.build import offload_model
    from moe_tui.offload.loader import load_offloaded
    from moe_tui.offload.model import OffloadedModel

__all__ = ["OffloadConfig", "OffloadedModel", "load_offloaded", "offload_model"]

# Where each name above lives. They are imported on first use rather than here: a package that imported its own
# submodules while being imported made a cycle (loader -> checkpoint -> this package -> loader), and two threads
# importing the engine at once (the app's loading worker and the model picker's) then each got a partly
# initialised module and failed with ImportError.
_HOMES = {
    "OffloadConfig": "moe_tui.engine_config",
    "OffloadedModel": "moe_tui.offload.model",
    "load_offloaded": "moe_tui.offload.loader",
    "offload_model": "moe_tui.offload.build",
}


def __getattr__(name: str) -> Any:
    """One of the package's exports, imported from its module on first use."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
