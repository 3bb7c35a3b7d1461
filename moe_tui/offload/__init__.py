"""Offloaded Mixture-of-Experts inference: experts in a slow-tier store, per-layer caches in fast memory.

```python
from moe_tui.offload import OffloadConfig, offload_model, load_offloaded
om = load_offloaded("path/or/hub-id", OffloadConfig(cache_size=2, prefetch=1, expert_bits=4))
om.model.generate(...)      # a normal transformers model
om.stats(); om.snapshot(); om.memory()
```
"""

from moe_tui.engine_config import OffloadConfig
from moe_tui.offload.build import offload_model
from moe_tui.offload.loader import load_offloaded
from moe_tui.offload.model import OffloadedModel

__all__ = ["OffloadConfig", "OffloadedModel", "load_offloaded", "offload_model"]
