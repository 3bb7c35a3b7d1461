"""A real-size checkpoint through ``load_offloaded``: stage times, peak RSS against the memory check, and the
cached second start.

For each ``--layers`` count it writes a Mixtral-8x7B-shaped checkpoint of that many decoder layers (hidden
4096, experts 14336 wide, vocabulary 32000) with random bf16 weights, in the original layout
(``block_sparse_moe.experts.E.w1/w2/w3``) and sharded like the published one (shards of about 2 GB and a
``model.safetensors.index.json``). Then, for each expert bit width, two starts in fresh processes with the same
quantized-store cache directory:

* the first reads every expert from the shards and quantizes it (HQQ without its optimiser here: with it a
  Mixtral matrix takes about 40 s on 2 cores), then saves the store;
* the second must reuse the saved store: it counts how many experts it read from the shards (goal 0) and
  its time against the first (goal under 10%).

Each start reports its time per loader stage (the first, "opening the model", is mostly importing transformers'
model code: a fixed cost that does not grow with the model), its peak RSS above the process's RSS before
loading (through the first forward pass, which fills the expert slots the load allocated), and the host bytes
the loader's memory check predicted (goal: peak within 10% of it). With two layer counts or more, each start is
projected to Mixtral-8x7B's 32 layers: its opening as measured, plus the rest of the load on the line through
the smallest and the largest count (see :func:`project`); at 2 layers the opening is most of a cached start.

Usage: ``python benchmarks/real_checkpoint.py [--layers 2 4] [--bits 4 2] [--dir DIR]``; writes
``benchmarks/results/real-checkpoint.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from moe_tui.bench.report import describe_machine

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "results"
SHARD_BYTES = 2 * 1024**3
MIXTRAL_LAYERS = 32
OPENING = "opening the model"

_START = """
import json, sys, time
from pathlib import Path
import torch
from moe_tui.bench import PeakRSS
from moe_tui.offload import OffloadConfig, load_offloaded
from moe_tui.offload import checkpoint as checkpoint_module

directory, cache, bits = sys.argv[1], sys.argv[2], int(sys.argv[3])
reads = {"experts": 0}
original = checkpoint_module.Checkpoint.expert
def counted(self, *args, **kwargs):
    reads["experts"] += 1
    return original(self, *args, **kwargs)
checkpoint_module.Checkpoint.expert = counted
stages = {}
last = {"stage": None, "start": None}
def progress(stage, done, total):
    now = time.perf_counter()
    if stage != last["stage"]:
        if last["stage"] is not None:
            stages[last["stage"]] = stages.get(last["stage"], 0.0) + now - last["start"]
        last["stage"], last["start"] = stage, now
settings = OffloadConfig(cache_size=2, prefetch=0, expert_bits=bits, quant_cache_dir=cache, quant_optimize=False)
import psutil, threading
process = psutil.Process()
def anonymous():
    info = process.memory_info()
    return info.rss - info.shared  # file-backed pages (the mapped shards) are the page cache's, not ours
peak_anon = {"start": anonymous(), "peak": anonymous()}
stop = threading.Event()
def sample():
    while not stop.wait(0.01):
        peak_anon["peak"] = max(peak_anon["peak"], anonymous())
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
with PeakRSS() as rss:
    before = rss.peak
    start = time.perf_counter()
    om = load_offloaded(directory, settings, progress=progress)
    total = time.perf_counter() - start
    progress("done", 1, 1)
    with torch.no_grad():  # it runs, and fills the slots the load allocated (untouched pages are not in RSS yet)
        om.model(torch.tensor([[1, 2, 3, 4]]))
stop.set()
sampler.join()
print(json.dumps({
    "bits": bits, "store": om.load_info["store"], "seconds": total, "stages": stages,
    "experts_read_from_shards": reads["experts"], "peak_rss_above_start": rss.peak - before,
    "peak_anonymous_above_start": peak_anon["peak"] - peak_anon["start"],
    "predicted_host_bytes": om.load_info["predicted_host_bytes"], "format": om.format.label(),
    "notes": om.load_info.get("notes", []),
}))
"""


def write_checkpoint(directory: Path, layers: int) -> int:
    """A Mixtral-8x7B-shaped checkpoint of ``layers`` layers in the original layout; returns its bytes."""
    import torch
    from safetensors.torch import save_file
    from transformers import MixtralConfig

    config = MixtralConfig(num_hidden_layers=layers, vocab_size=32000, dtype="bfloat16")
    config.save_pretrained(directory)
    h, i, kv = config.hidden_size, config.intermediate_size, config.num_key_value_heads * 128
    generator = torch.Generator().manual_seed(0)

    def weight(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * 0.02).to(torch.bfloat16)

    tensors: list[tuple[str, torch.Tensor]] = [("model.embed_tokens.weight", weight(config.vocab_size, h))]
    for layer in range(layers):
        base = f"model.layers.{layer}"
        tensors += [
            (f"{base}.input_layernorm.weight", torch.ones(h, dtype=torch.bfloat16)),
            (f"{base}.post_attention_layernorm.weight", torch.ones(h, dtype=torch.bfloat16)),
            (f"{base}.self_attn.q_proj.weight", weight(h, h)),
            (f"{base}.self_attn.k_proj.weight", weight(kv, h)),
            (f"{base}.self_attn.v_proj.weight", weight(kv, h)),
            (f"{base}.self_attn.o_proj.weight", weight(h, h)),
            (f"{base}.block_sparse_moe.gate.weight", weight(config.num_local_experts, h)),
        ]
        for expert in range(config.num_local_experts):
            prefix = f"{base}.block_sparse_moe.experts.{expert}"
            tensors += [(f"{prefix}.w1.weight", None), (f"{prefix}.w2.weight", None), (f"{prefix}.w3.weight", None)]
    tensors += [("model.norm.weight", torch.ones(h, dtype=torch.bfloat16)), ("lm_head.weight", None)]
    shapes = {"w1": (i, h), "w2": (h, i), "w3": (i, h)}
    index: dict[str, str] = {}
    shard: dict[str, torch.Tensor] = {}
    names: list[str] = []
    total = 0

    def flush() -> None:
        name = f"model-{len(names) + 1:05d}.safetensors"
        save_file(shard, str(directory / name), metadata={"format": "pt"})
        names.append(name)
        index.update(dict.fromkeys(shard, name))
        shard.clear()

    for key, tensor in tensors:
        if tensor is None:
            tensor = weight(config.vocab_size, h) if key == "lm_head.weight" else weight(*shapes[key.split(".")[-2]])
        shard[key] = tensor
        total += tensor.numel() * tensor.element_size()
        if sum(t.numel() * t.element_size() for t in shard.values()) >= SHARD_BYTES:
            flush()
    if shard:
        flush()
    count = len(names)
    renamed = {}
    for number, name in enumerate(names, start=1):
        final = f"model-{number:05d}-of-{count:05d}.safetensors"
        (directory / name).rename(directory / final)
        renamed[name] = final
    weight_map = {key: renamed[name] for key, name in index.items()}
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1)
    )
    return total


def start(directory: Path, cache: Path, bits: int) -> dict:
    """One load in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _START, str(directory), str(cache), str(bits)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    """Write each checkpoint, run its starts, print and keep the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 2])
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="a directory to write the checkpoints into and keep (default: a temporary one)",
    )
    args = parser.parse_args()
    started_at = datetime.datetime.now(datetime.timezone.utc)
    checkpoints = []
    for layers in sorted(set(args.layers)):
        with tempfile.TemporaryDirectory(prefix="moe-tui-real-checkpoint-") as scratch:
            directory = (args.dir or Path(scratch)) / f"mixtral-shaped-{layers}"
            directory.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            checkpoint_bytes = write_checkpoint(directory, layers)
            write_s = time.perf_counter() - started
            runs = []
            for bits in args.bits:
                cache = Path(scratch) / f"cache-{bits}"
                first = start(directory, cache, bits)
                second = start(directory, cache, bits)
                runs.append({"first": first, "second": second})
                print(
                    f"{layers} layers, {bits}-bit: first {first['seconds']:.1f} s ({first['store']}), second "
                    f"{second['seconds']:.1f} s ({second['store']}, {second['experts_read_from_shards']} experts "
                    "read from shards)",
                    flush=True,
                )
            checkpoints.append(
                {"layers": layers, "checkpoint_bytes": checkpoint_bytes, "write_s": write_s, "runs": runs}
            )
    data = {
        "measured": f"{started_at:%Y-%m-%d %H:%M} UTC",
        "machine": describe_machine().describe(),
        "checkpoints": checkpoints,
        "projected_layers": MIXTRAL_LAYERS,
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "real-checkpoint.json").write_text(json.dumps(data, indent=1) + "\n")
    print(markdown(data))


def markdown(data: dict) -> str:
    """The starts as Markdown tables, one per checkpoint, and the projection to a whole Mixtral-8x7B."""
    gib = 1024**3
    lines = [f"Measured {data['measured']} on {data['machine']}.", ""]
    for checkpoint in data["checkpoints"]:
        lines += [
            f"Checkpoint: {checkpoint['layers']} Mixtral-8x7B layers, {checkpoint['checkpoint_bytes'] / gib:.1f} GiB "
            f"of bf16 (written in {checkpoint['write_s']:.0f} s).",
            "",
            "| bits | start | store | seconds | experts read | peak RSS GiB | of it anonymous GiB | predicted GiB "
            "| anonymous / predicted | stages |",
            "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for run in checkpoint["runs"]:
            for which in ("first", "second"):
                r = run[which]
                stages = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in r["stages"].items())
                lines.append(
                    f"| {r['bits']} | {which} | {r['store']} | {r['seconds']:.1f} | {r['experts_read_from_shards']} | "
                    f"{r['peak_rss_above_start'] / gib:.2f} | {r['peak_anonymous_above_start'] / gib:.2f} | "
                    f"{r['predicted_host_bytes'] / gib:.2f} | "
                    f"{r['peak_anonymous_above_start'] / r['predicted_host_bytes']:.2f} | {stages} |"
                )
            ratio = run["second"]["seconds"] / run["first"]["seconds"]
            lines.append(f"| {run['first']['bits']} | second / first | | {ratio:.1%} | | | | | | |")
        lines.append("")
    projection = project(data["checkpoints"], data["projected_layers"])
    if projection:
        small, large = data["checkpoints"][0]["layers"], data["checkpoints"][-1]["layers"]
        lines += [
            f"Projected to {data['projected_layers']} layers: the opening (fixed; the mean of the two starts') plus "
            f"the rest of the load on the line through {small} and {large} layers:",
            "",
            "| bits | start | opening s | rest: fixed s | rest: per layer s | projected s | projected second / first |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in projection:
            for which in ("first", "second"):
                part = row[which]
                ratio = f"{row['ratio']:.1%}" if which == "second" else ""
                lines.append(
                    f"| {row['bits']} | {which} | {part['opening']:.1f} | {part['fixed']:.1f} | "
                    f"{part['per_layer']:.2f} | {part['projected']:.0f} | {ratio} |"
                )
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def project(checkpoints: list[dict], layers: int) -> list[dict]:
    """Per bit width, each start's projected seconds at ``layers`` layers from the smallest and the largest
    checkpoint: the opening (a fixed cost, measured: the mean of the two starts' own) plus the rest of the load
    on the line through the two (its fixed seconds and seconds per layer). Empty with fewer than two layer
    counts. Fitting whole starts instead would let the opening's noise (a second from one start to the next)
    swamp a cached start's growth of a fraction of a second per layer."""
    if len(checkpoints) < 2:
        return []
    small, large = checkpoints[0], checkpoints[-1]
    span = large["layers"] - small["layers"]
    rows = []
    for few, many in zip(small["runs"], large["runs"], strict=True):
        row: dict = {"bits": few["first"]["bits"]}
        for which in ("first", "second"):
            openings = [start[which]["stages"].get(OPENING, 0.0) for start in (few, many)]
            rest = [start[which]["seconds"] - opening for start, opening in zip((few, many), openings, strict=True)]
            opening = sum(openings) / 2
            per_layer = (rest[1] - rest[0]) / span
            fixed = rest[0] - per_layer * small["layers"]
            row[which] = {
                "opening": opening,
                "fixed": fixed,
                "per_layer": per_layer,
                "projected": opening + fixed + per_layer * layers,
            }
        row["ratio"] = row["second"]["projected"] / row["first"]["projected"]
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
