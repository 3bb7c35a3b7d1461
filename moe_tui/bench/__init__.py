"""The benchmark harness behind ``moe-tui bench``: one model, several configurations, one process.

A configuration is one of:

* ``resident``: the plain transformers model, every weight in the fast tier;
* ``hf-offload``: transformers' own offloading, ``from_pretrained(..., device_map=..., offload_folder=...)``
  with every MoE block on ``"disk"`` (accelerate streams its weights in for each forward pass) and the
  rest in the fast tier: the baseline users would otherwise pick;
* an engine setting written ``k=2,prefetch=1,policy=lru,bits=4,attn-bits=8,store=ram,miss=copy,fused=on,
  optimize=auto,telemetry=on,record=off`` (``k=E`` means every expert; only ``k`` is required). ``miss`` is
  ``copy``, ``host`` or ``auto``; ``fused=off`` dequantizes 4/8-bit experts on every use (the unfused path);
  ``optimize=off`` quantizes with min-max rounding instead of HQQ's optimiser (``auto``: the optimiser on a
  GPU only, see :class:`~moe_tui.engine_config.OffloadConfig`). Configurations of one run
  that quantize alike share one quantized store (a temporary cache), so each format is quantized once.

Every configuration generates greedily from the same token ids: one warm-up generation, then ``runs``
passes over the prompt set. Decode tokens/s is the median over generations of (new tokens - 1) / (time
from the first new token to the last); prefill tokens/s the median of prompt tokens / time to first token.
Engine counters (hit rate, prefetch, bytes, stall time) are the differences over the measured runs.

One job per module: :mod:`~moe_tui.bench.specs` (prompts and configuration specs), :mod:`~moe_tui.bench.models`
(the model to load, synthetic ones included), :mod:`~moe_tui.bench.routing` (routing forced from a trace),
:mod:`~moe_tui.bench.loading` (one configuration loaded), :mod:`~moe_tui.bench.measure` (timing and counters)
and :mod:`~moe_tui.bench.report` (the machine and the JSON report).
"""

from moe_tui.bench.loading import Loaded, load
from moe_tui.bench.measure import PeakRSS, Result, Settings, run_configs, run_interleaved
from moe_tui.bench.models import BenchModel, SyntheticShape, open_model, write_synthetic
from moe_tui.bench.report import BenchReport, Machine, describe_machine, dumps, format_report, report, tiers_note
from moe_tui.bench.routing import ForcedRouting
from moe_tui.bench.specs import DEFAULT_COMPARE, DEFAULT_PROMPTS, Spec, load_prompts, parse_spec

__all__ = [
    "DEFAULT_COMPARE",
    "DEFAULT_PROMPTS",
    "BenchModel",
    "BenchReport",
    "ForcedRouting",
    "Loaded",
    "Machine",
    "PeakRSS",
    "Result",
    "Settings",
    "Spec",
    "SyntheticShape",
    "describe_machine",
    "dumps",
    "format_report",
    "load",
    "load_prompts",
    "open_model",
    "parse_spec",
    "report",
    "run_configs",
    "run_interleaved",
    "tiers_note",
    "write_synthetic",
]
