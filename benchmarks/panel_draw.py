"""How long the Experts, Expert cache and Prefetch panels take to draw a snapshot of today's large MoE shapes.

Builds the telemetry of a synthetic routing (top-8, skewed to a few favourite experts per layer, 40 decode
passes after a prefill) for each shape, then times each panel's render function on the snapshot at the
panel sizes of an 80x24 and a 160x48 terminal (median of ``--runs``)::

    python benchmarks/panel_draw.py --runs 50 --json benchmarks/results/panel-draw.json

Goal (issue 11): at most 5 ms per panel for the largest shape.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from moe_tui.telemetry import LayerStep, Telemetry, TokenEvent, TraceHeader
from moe_tui.themes import DEFAULT_VARIABLES
from moe_tui.tui.widgets.cache import render_cache
from moe_tui.tui.widgets.colours import Colours
from moe_tui.tui.widgets.heatmap import render_heatmap
from moe_tui.tui.widgets.prefetch import render_prefetch

SHAPES = ((48, 128, 8, 0), (58, 256, 8, 1), (61, 256, 8, 1))  # layers, experts, top-k, shared experts
SIZES = {"80x24": (38, 20), "160x48": (47, 44)}  # a panel's text area in each terminal
PANELS = {"experts": render_heatmap, "cache": render_cache, "prefetch": render_prefetch}


def snapshot_of(layers: int, experts: int, top_k: int, shared: int, seed: int = 0):
    """The telemetry snapshot after a prefill and 40 decode passes of skewed synthetic routing (k=16)."""
    rng = random.Random(seed)
    header = TraceHeader(
        model=f"synthetic-{layers}x{experts}",
        num_layers=layers,
        num_experts=experts,
        top_k=top_k,
        cache_size=(16,) * layers,
        prefetch=8,
        expert_bytes=3 << 20,
        shared_experts=shared,
        expert_format="int4",
    )
    telemetry = Telemetry(header)
    favourites = [rng.sample(range(experts), 24) for _ in range(layers)]
    resident: list[list[int]] = [[] for _ in range(layers)]
    for step in range(41):
        for layer in range(layers):
            chosen: list[int] = []
            while len(chosen) < top_k:
                expert = rng.choice(favourites[layer]) if rng.random() < 0.8 else rng.randrange(experts)
                if expert not in chosen:
                    chosen.append(expert)
            hits = tuple(expert in resident[layer] for expert in chosen)
            for expert in chosen:
                if expert in resident[layer]:
                    resident[layer].remove(expert)
                resident[layer].append(expert)
            resident[layer] = resident[layer][-16:]
            weights = tuple(round(1 / top_k, 4) for _ in chosen)
            telemetry.record_step(
                LayerStep(step, layer, 12 if step == 0 else 1, tuple(chosen), (1,) * top_k, weights, hits,
                          (False,) * top_k, (), tuple(resident[layer]), time=1000.0 + step * 0.1)
            )  # fmt: skip
        if step:
            telemetry.record_token(TokenEvent(step=step, text=" word", time=1000.0 + step * 0.1))
    return telemetry.snapshot()


def main() -> None:
    """Time every panel at every shape and size; print a table (and write JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    colours = Colours.from_variables(DEFAULT_VARIABLES)
    rows = []
    for layers, experts, top_k, shared in SHAPES:
        snapshot = snapshot_of(layers, experts, top_k, shared)
        for size, (width, height) in SIZES.items():
            for panel, render in PANELS.items():
                times = []
                for _ in range(args.runs):
                    start = time.perf_counter()
                    render(snapshot, colours, width, height)
                    times.append(time.perf_counter() - start)
                row = {"shape": f"{layers}x{experts} top-{top_k}", "size": size, "panel": panel}
                row["median_ms"] = 1000 * statistics.median(times)
                rows.append(row)
                print(f"{row['shape']:>17}  {size:>7}  {panel:>8}  {row['median_ms']:6.2f} ms")
    if args.json:
        args.json.write_text(json.dumps({"runs": args.runs, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
