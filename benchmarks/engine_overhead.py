"""The engine's own cost per MoE layer pass at top-8, where experts are too small for their math to matter.

A Qwen3-MoE layout (128 experts, top-8, as Qwen3-30B-A3B routes) with tiny experts (hidden 64, width 32), every
expert cached (k = 128), decoding one token: the time of ``Engine.run_layer`` for one layer pass (routing
summary, cache lookups, eight expert computations, combining them, telemetry), median of many passes. Next to it
stands a plain loop: the same eight experts computed from views made beforehand with the same format's
``forward``, each output weighted and added as transformers' own experts module does (no cache, no routing
summary, no telemetry). The engine beats it because it sums the eight outputs in one matmul and calls the
activation without nn.Module's hook machinery.
With ``--record off`` the engine keeps counters only (no per-layer steps).

Usage: ``python benchmarks/engine_overhead.py [--passes N] [--threads T]``; prints one JSON object and keeps it
in ``benchmarks/results/engine-overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from moe_tui.offload import OffloadConfig, offload_model

OUT = Path(__file__).resolve().parent / "results"


def tiny_qwen3(experts: int, top_k: int):
    """A two-layer Qwen3-MoE with tiny experts, random weights."""
    config = Qwen3MoeConfig(
        vocab_size=128, hidden_size=64, intermediate_size=64, moe_intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=experts, num_experts_per_tok=top_k,
        norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
    )  # fmt: skip
    torch.manual_seed(0)
    return Qwen3MoeForCausalLM(config).eval()


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=3000, help="timed layer passes (default 3000)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--experts", type=int, default=128)
    parser.add_argument("--top-k", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    om = offload_model(tiny_qwen3(args.experts, args.top_k), OffloadConfig(cache_size=args.experts, prefetch=0))
    engine, router = om.engine, om.moe.layers[0].router
    hidden = torch.randn(1, 64)

    def route() -> tuple[torch.Tensor, torch.Tensor]:
        logits = F.linear(hidden, router.weight)
        weights, index = torch.topk(torch.softmax(logits, dim=-1), args.top_k)
        return index, weights / weights.sum(dim=-1, keepdim=True)

    index, weights = route()

    def engine_pass() -> float:
        engine.begin_pass()
        start = time.perf_counter()
        engine.run_layer(0, hidden, index, weights)
        elapsed = time.perf_counter() - start
        engine.end_pass()
        return elapsed

    cache = om.caches[0]
    for _ in range(200):  # warm-up: every selected expert is cached from here on
        engine_pass()
    views = [om.format.views(cache.slots[cache.slot_of[int(e)]]) for e in index[0]]
    glu = om.moe.layers[0].block.experts.glu

    def plain_loop() -> float:
        start = time.perf_counter()
        out = torch.zeros_like(hidden)
        for j, expert_views in enumerate(views):
            out += om.format.forward(expert_views, hidden, glu) * weights[:, j : j + 1]
        return time.perf_counter() - start

    results = {}
    for record in (True, False):
        engine.record = record
        samples = [engine_pass() for _ in range(args.passes)]
        results[f"engine_us_record_{'on' if record else 'off'}"] = 1e6 * statistics.median(samples)
    for _ in range(200):
        plain_loop()
    results["plain_loop_us"] = 1e6 * statistics.median(plain_loop() for _ in range(args.passes))
    data = {"experts": args.experts, "top_k": args.top_k, "threads": args.threads, "passes": args.passes, **results}
    OUT.mkdir(exist_ok=True)
    (OUT / "engine-overhead.json").write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
