"""Per-expert compute time of every expert format at real models' expert shapes, next to the memory bound.

For Mixtral-8x7B (hidden 4096, expert width 14336) and Qwen3-30B-A3B (hidden 2048, expert width 768) it packs
one expert with random weights in each format (bf16; int4 and int8 with PyTorch's fused kernels, int8's values
converted to bf16 on every use on CUDA; 2 and 3 bits expanded chunk by chunk for the int4 kernel; HQQ 4, 3 and 2
bits dequantized on every use), then times ``format.forward`` for one token (and for 8 tokens) on this machine:
the median of several runs after a warm-up. Next to each time stands the bound a decode step cannot beat, the
format's bytes divided by the streaming read bandwidth measured in the same run (one pass over a 1 GiB buffer
with every core), and the ratio to bf16.

Quantization uses HQQ without its optimiser (min-max rounding): the kernels' speed does not depend on how the
zero points were chosen, and the optimiser would take minutes per Mixtral expert on a small CPU.

Usage: ``python benchmarks/expert_kernels.py [--runs N] [--shapes mixtral,qwen3] [--device cpu|cuda]``; writes
``benchmarks/results/expert-kernels-<device>.json`` and prints a Markdown table (RESULTS.md is rendered
from the JSON by ``benchmarks/results.py --render-only``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from moe_tui.offload.formats import make_format

OUT = Path(__file__).resolve().parent / "results"


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Mixtral's gated unit."""
    return F.silu(gate) * up


SHAPES = {"mixtral": ("Mixtral-8x7B", 4096, 14336), "qwen3": ("Qwen3-30B-A3B", 2048, 768)}
FORMATS = (  # (label, bits, fused)
    ("bf16", None, True),
    ("int4", 4, True),
    ("int8", 8, True),
    ("int2 (unfused)", 2, True),
    ("int3 (unfused)", 3, True),
    ("hqq4 (unfused)", 4, False),
    ("hqq3 (unfused)", 3, False),
    ("hqq2 (unfused)", 2, False),
)


def read_bandwidth(device: torch.device, runs: int) -> float:
    """Bytes/s of one streaming pass over 1 GiB (a sum of int64 words), best of ``runs``."""
    buffer = torch.ones(1 << 27, dtype=torch.int64, device=device)
    return buffer.numel() * 8 / best_time(lambda: buffer.sum(), device, runs)


def timings(work, device: torch.device, runs: int) -> list[float]:
    """Seconds of ``work()`` over ``runs`` runs after one warm-up."""
    work()
    samples = []
    for _ in range(runs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        work()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append(time.perf_counter() - start)
    return samples


def best_time(work, device: torch.device, runs: int) -> float:
    """The fastest of ``runs`` timings."""
    return min(timings(work, device, runs))


def measure_shape(name: str, hidden: int, width: int, device: torch.device, runs: int, bandwidth: float) -> list:
    """Every format at one expert shape."""
    shapes = [(width, hidden), (width, hidden), (hidden, width)]
    torch.manual_seed(0)
    weights = [torch.randn(s, dtype=torch.bfloat16) * 0.02 for s in shapes]
    rows = []
    for label, bits, fused in FORMATS:
        fmt = make_format(shapes, torch.bfloat16, bits, 64, device, fused=fused, optimize=False)
        if fmt.label() != label:
            print(f"skipped {label} at {name}: this device gives {fmt.label()}", flush=True)
            continue
        buffer = torch.empty(fmt.nbytes, dtype=torch.uint8)
        start = time.perf_counter()
        fmt.pack(*weights, buffer)
        pack_s = time.perf_counter() - start
        buffer = buffer.to(device)
        views = fmt.views(buffer)
        row = {"shape": name, "format": label, "nbytes": fmt.nbytes, "pack_s": pack_s, "fused": fmt.fused}
        for tokens in (1, 8):
            x = torch.randn(tokens, hidden, dtype=torch.bfloat16, device=device)
            samples = timings(lambda x=x, fmt=fmt, views=views: fmt.forward(views, x, swiglu), device, runs)
            row[f"median_s_{tokens}"] = statistics.median(samples)
        row["bound_s"] = fmt.nbytes / bandwidth
        rows.append(row)
        print(f"{name:>14} {label:>15}: {1000 * row['median_s_1']:8.2f} ms/token", flush=True)
    base = next(r for r in rows if r["format"] == "bf16")["median_s_1"]
    for row in rows:
        row["vs_bf16"] = row["median_s_1"] / base
        row["vs_bound"] = row["median_s_1"] / row["bound_s"]
    return rows


def markdown(data: dict) -> str:
    """The results as a Markdown table."""
    lines = [
        f"Read bandwidth measured in the same run: {data['read_bandwidth'] / 1e9:.1f} GB/s "
        f"({data['device']}, {data['threads']} torch threads).",
        "",
        "| expert | format | MiB | 1 token ms | 8 tokens ms | bound ms | x bound | x bf16 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in data["rows"]:
        lines.append(
            f"| {r['shape']} | {r['format']} | {r['nbytes'] / 2**20:.1f} | {1000 * r['median_s_1']:.2f} | "
            f"{1000 * r['median_s_8']:.2f} | {1000 * r['bound_s']:.2f} | {r['vs_bound']:.2f} | {r['vs_bf16']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Measure, write the JSON, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per format (median; default 7)")
    parser.add_argument("--shapes", default="mixtral,qwen3", help="comma list of: " + ", ".join(SHAPES))
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    bandwidth = read_bandwidth(device, args.runs)
    rows = []
    for key in args.shapes.split(","):
        name, hidden, width = SHAPES[key.strip()]
        rows += measure_shape(name, hidden, width, device, args.runs, bandwidth)
    data = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "runs": args.runs,
        "read_bandwidth": bandwidth,
        "rows": rows,
    }
    OUT.mkdir(exist_ok=True)
    (OUT / f"expert-kernels-{device.type}.json").write_text(json.dumps(data, indent=1) + "\n")
    print(markdown(data))


if __name__ == "__main__":
    main()
