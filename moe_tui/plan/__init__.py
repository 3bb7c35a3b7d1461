"""The memory planner: which offloading configurations fit a machine, and how fast each should decode.

For every expert precision (2, 3, 4 bits or unquantized), non-expert precision (4, 8 bits or unquantized),
cache size k (the same for every MoE layer) and prefetch depth, the planner adds up:

* fast tier: non-expert weights + k x MoE layers x one expert's packed buffer + the engine's
  dequantization workspace (unfused quantized experts) + the KV cache for the context length + one prefill
  chunk's activations + a margin, added up by :mod:`moe_tui.fit` exactly as the engine checks them
  before it loads (on a CPU-only machine the fast tier is host RAM too);
* host: the expert store, every routed expert of every MoE layer packed at its precision.

and keeps the configurations that fit. Its decode estimate (one token at a time, batch 1) is:

    C = non-expert bytes a token reads / compute bandwidth
        + quantized non-expert bytes it reads / dequantization bandwidth (HQQ's layout is unpacked each use)
        + top_k x MoE layers x one expert's bytes / expert bandwidth (measured per precision by computing
          one token through an expert in the engine's own format: kernels read packed bytes at different
          rates, and unfused formats unpack first)
        + O, the per-token overhead that does not depend on weight size (decoder and engine bookkeeping)
    M = demand misses per token x expert bytes / transfer bandwidth      (copies the layer waits for)
    P = prefetch copies per token x expert bytes / transfer bandwidth    (copies started ahead of use)
    seconds per token = C + M + P            on a CPU (copies and computation share the cores)
                      = max(C, P) + M        on CUDA (prefetch copies overlap computation on a side stream)
    tokens/s = 1 / seconds per token; the bound is "transfer" when M + P > C, "compute" otherwise.

Misses and prefetch copies per token come from replaying a routing trace (LRU, or LRU with the trace's
prefetch guesses) at each k, counting decode passes only; without a trace they assume uniform routing
(hit rate k / num_experts, no prefetch). C treats decoding as reading every active weight once, which is
what bounds batch-1 decoding; attention over a long context adds time it ignores.
"""

from moe_tui.plan.copies import CopyModel, spread_slots, trace_copy_model, trace_layer_misses, uniform_copy_model
from moe_tui.plan.estimate import (
    ATTN_BITS,
    EXPERT_BITS,
    Candidate,
    Machine,
    best_per_precision,
    candidates,
    estimate,
    fast_tier_need,
    fits,
    nothing_fits_message,
    per_layer_candidate,
    smallest,
    store_bytes,
)
from moe_tui.plan.facts import ModelFacts, model_facts

__all__ = [
    "ATTN_BITS",
    "EXPERT_BITS",
    "Candidate",
    "CopyModel",
    "Machine",
    "ModelFacts",
    "best_per_precision",
    "candidates",
    "estimate",
    "fast_tier_need",
    "fits",
    "model_facts",
    "nothing_fits_message",
    "per_layer_candidate",
    "smallest",
    "spread_slots",
    "store_bytes",
    "trace_copy_model",
    "trace_layer_misses",
    "uniform_copy_model",
]
