"""What appending to the KV cache costs a decoded token on a CPU, with transformers' cache and the chat's.

Two Mixtral-8x7B-shaped layers (random bf16 weights, real hidden size, 32 heads, 8 KV heads) offloaded on the
CPU as the fastest CPU configuration runs them (k=2, prefetch 1, 4-bit experts, misses computed on the host).
For each context length both caches are filled with the same random keys and values (the cost of a decode step
does not depend on them, and prefilling thousands of tokens would take minutes), then ``--tokens`` tokens are
decoded one forward pass at a time. transformers' ``DynamicCache`` copies each layer's keys and values for every
token (``torch.cat``); :mod:`moe_tui.chat.kv_blocks` writes them into buffers that grow by whole blocks. The two
alternate in this process, ``--runs`` times; the medians per token are printed::

    python benchmarks/kv_growth.py --json benchmarks/results/kv-growth.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from fit_check import shaped_model
from transformers import DynamicCache

from moe_tui import fit
from moe_tui.chat.kv_blocks import new_cache
from moe_tui.offload import OffloadConfig, offload_model

KINDS = ("transformers", "blocks")


def filled(kind: str, model, tokens: int) -> DynamicCache:
    """A cache of ``kind`` holding ``tokens`` positions of seeded random keys and values in every layer."""
    config = model.config
    cache = DynamicCache(config=config) if kind == "transformers" else new_cache(model)
    head_dim = config.hidden_size // config.num_attention_heads
    generator = torch.Generator().manual_seed(tokens)
    for index in range(config.num_hidden_layers):
        shape = (1, config.num_key_value_heads, tokens, head_dim)
        keys = torch.randn(shape, generator=generator, dtype=torch.bfloat16)
        cache.update(keys, torch.randn(shape, generator=generator, dtype=torch.bfloat16), index)
    return cache


def decode(model, cache: DynamicCache, tokens: int) -> list[float]:
    """Seconds for each of ``tokens`` one-token forward passes after what ``cache`` holds."""
    held = cache.get_seq_length()
    seconds = []
    for step in range(tokens):
        position = torch.tensor([[held + step]])
        token = torch.tensor([[(held + step) % 1000 + 3]])
        began = time.perf_counter()
        model(input_ids=token, position_ids=position, cache=cache, use_cache=True)
        seconds.append(time.perf_counter() - began)
    return seconds


def main() -> None:
    """Measure and print (and optionally write JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 2048, 8192, 16384])
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    settings = OffloadConfig(cache_size=2, prefetch=1, expert_bits=4, quant_optimize=False, miss="host")
    engine = offload_model(shaped_model("mixtral-8x7b"), settings, progress=lambda *a: None)
    model = engine.model
    rows = []
    with torch.inference_mode():
        decode(model, filled("blocks", model, 16), 2)  # warm-up
        for context in args.contexts:
            seconds: dict[str, list[float]] = {kind: [] for kind in KINDS}
            for _ in range(args.runs):
                for kind in KINDS:
                    seconds[kind] += decode(model, filled(kind, model, context), args.tokens)
            medians = {kind: statistics.median(values) for kind, values in seconds.items()}
            rows.append({"context": context, **{f"{kind}_ms": 1000 * medians[kind] for kind in KINDS}})
            speedup = medians["transformers"] / medians["blocks"]
            print(
                f"context {context:6d}: transformers' cache {1000 * medians['transformers']:7.1f} ms a token, "
                f"blocks {1000 * medians['blocks']:7.1f} ms ({speedup:.2f}x)",
                flush=True,
            )
    if args.json:
        report = {"tokens": args.tokens, "runs": args.runs, "threads": torch.get_num_threads(), "block": fit.KV_BLOCK}
        args.json.write_text(json.dumps({**report, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
