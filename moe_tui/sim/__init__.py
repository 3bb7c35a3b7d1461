"""Cache-policy simulation over routing traces: what each policy and cache size would have hit, next to the optimum.

```python
from moe_tui.sim import run_lab, simulate
report = run_lab(header, events)              # every k up to 16, round ones above, x every policy, and MIN
report.hit_rate("lru", 2); report.gap("lru", 2, layer=0)
simulate(header, events, cache_size=2, policy="lru").total.hits
```
"""

from moe_tui.sim.cache import MIN_POLICY, belady_layer, simulate_layer
from moe_tui.sim.lab import (
    RECORDED,
    LabReport,
    LabStopped,
    SimResult,
    lab_sizes,
    recorded_result,
    run_lab,
    simulate,
)
from moe_tui.sim.passes import LayerPass, layer_passes

__all__ = [
    "MIN_POLICY",
    "RECORDED",
    "LabReport",
    "LabStopped",
    "LayerPass",
    "SimResult",
    "belady_layer",
    "lab_sizes",
    "layer_passes",
    "recorded_result",
    "run_lab",
    "simulate",
    "simulate_layer",
]
