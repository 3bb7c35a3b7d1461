"""Run the offloading benchmarks and write ``benchmarks/RESULTS.md`` from their output (nothing typed by hand).

Each measurement is a ``moe-tui`` command run in a fresh process with ``--json``; its output is kept in
``benchmarks/results/<name>.json`` and turned into the tables of RESULTS.md, next to the exact command:

1. ``demo``: the bundled demo model, resident vs the engine at several k vs transformers' disk offload,
   loaded together and run in turn; the engine's first configuration also records the trace that step 4
   plans from;
2. ``synthetic``: a Mixtral shape with random weights whose experts are big enough that copies matter,
   its routing forced from a shipped demo trace (so hit rates are those of a trained router; prefetch is
   left out because its guesses would still come from the random routers), one configuration at a time;
3. ``telemetry``: the engine with telemetry off, on (the default), and on with a trace file, loaded
   together and run in turn so that machine drift hits them alike;
4. ``plan``: ``moe-tui plan`` on the demo model with step 1's trace, estimate vs step 1's measurement;
5. ``lab``: every shipped trace through the cache lab (LRU, LFU, FIFO, LRU+prefetch, Belady's MIN);
6. ``real-shapes``: two decoder layers of Mixtral-8x7B's real shape (random bf16 weights, several GB): the
   resident model against k=2 with misses copied, computed on the host and chosen by the cost model, at 4
   bits (PyTorch's int4 kernel), 4 bits unfused (the old path) and 2 bits, every core;
7. ``expert-kernels``: ``benchmarks/expert_kernels.py``, one expert of each format at Mixtral-8x7B's and
   Qwen3-30B-A3B's shapes against the memory-bandwidth bound;
8. ``real-shapes-plan``: ``moe-tui plan`` on the config of step 6's model (``benchmarks/configs/``), every
   core, its estimate next to step 6's measurement for the configurations both have.

Usage: ``python benchmarks/results.py [--quick] [--only NAME ...]`` (``--quick``: fewer tokens and runs, for a
smoke test; ``--only``: re-measure those steps, keep the others' JSON).
The machine's load average is recorded before and after: on a shared machine, absolute speeds move.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "results"
RESULTS_MD = REPO / "benchmarks" / "RESULTS.md"
DEMO_TRACE = OUT / "demo-bench-trace.jsonl"
FORCED_TRACE = REPO / "samples" / "traces" / "demo-python-builtins.jsonl"
SYNTHETIC_EXPERTS = 8  # bench's default --experts, the demo model's too (forced routing needs the same shape)
SYNTHETIC = ["--synthetic", "--layers", "6", "--hidden", "1024", "--intermediate", "2048", "--vocab", "4096"]
COMPARE = ["resident", "k=2,prefetch=1", "k=E", "k=2", "k=4", "hf-offload"]
# Forced routing leaves prefetch guessing from random routers, so prefetch is left out of the synthetic run.
SYNTHETIC_COMPARE = ["resident", "k=E", "k=2", "k=4", "hf-offload", "k=2,store=mmap"]
# Two decoder layers of Mixtral-8x7B (hidden 4096, experts 14336 wide, 32 heads, 8 KV heads, vocab 32000).
REAL_SHAPES = [
    "--synthetic", "--layers", "2", "--hidden", "4096", "--intermediate", "14336", "--heads", "32",
    "--kv-heads", "8", "--vocab", "32000", "--dtype", "bfloat16",
]  # fmt: skip
# Quantized with HQQ's min-max rounding (optimize=off): the optimiser takes ~40 s per matrix on 2 cores.
REAL_COMPARE = [
    "resident",
    *(f"k=2,bits={bits},optimize=off{miss}" for bits in (4, 2) for miss in ("", ",miss=host", ",miss=auto")),
    "k=2,bits=4,optimize=off,fused=off",
]
KERNELS = "expert-kernels"
REAL_CONFIG = REPO / "benchmarks" / "configs" / "mixtral-8x7b-2-layers.json"  # the model of REAL_SHAPES


def commands(quick: bool, threads: int) -> dict[str, list[str]]:
    """The moe-tui command line of every measurement."""
    runs = ["--tokens", "8", "--runs", "1"] if quick else ["--tokens", "32", "--runs", "2"]
    synthetic_runs = ["--tokens", "6", "--runs", "1"] if quick else ["--tokens", "16", "--runs", "2"]
    telemetry_runs = ["--tokens", "8", "--runs", "1"] if quick else ["--tokens", "32", "--runs", "3"]
    runs += ["--threads", str(threads)]
    synthetic_runs += ["--threads", str(threads)]
    telemetry_runs += ["--threads", str(threads)]
    return {
        "demo": [
            "bench", "--interleave", "--compare", *COMPARE, *runs, "--record", str(DEMO_TRACE.relative_to(REPO)),
            "--json",
        ],
        "synthetic": [
            "bench", *SYNTHETIC, "--routing", str(FORCED_TRACE.relative_to(REPO)),
            "--compare", *SYNTHETIC_COMPARE, *synthetic_runs, "--json",
        ],
        "telemetry": [
            "bench", "--interleave", "--compare", "k=2,prefetch=1,telemetry=off", "k=2,prefetch=1",
            "k=2,prefetch=1,record=on",
            *telemetry_runs, "--json",
        ],
        "plan": [
            "plan", "samples/demo-mixtral", "--trace", str(DEMO_TRACE.relative_to(REPO)), "--threads", str(threads),
            "--all", "--json",
        ],
        "real-shapes": [
            "bench", *REAL_SHAPES, "--prompts", "samples/prompts/real-shapes.txt", "--compare", *REAL_COMPARE,
            *(["--tokens", "4", "--runs", "1"] if quick else ["--tokens", "16", "--runs", "2"]),
            "--threads", str(os.cpu_count() or 1), "--json",
        ],
        "real-shapes-plan": [
            "plan", str(REAL_CONFIG.relative_to(REPO)), "--threads", str(os.cpu_count() or 1), "--all", "--json",
        ],
    }  # fmt: skip


def run(name: str, argv: list[str]) -> dict:
    """Run ``moe-tui ARGV`` (or the expert-kernels script) in a fresh process, keep its JSON under results/."""
    print(f"[{name}] moe-tui {shlex.join(argv)}", file=sys.stderr, flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    if name == "demo":
        DEMO_TRACE.unlink(missing_ok=True)  # bench --record never overwrites a trace; this one is the script's own
    if name == KERNELS:
        script = [sys.executable, str(REPO / "benchmarks" / "expert_kernels.py"), *argv]
        subprocess.run(script, cwd=REPO, env=env, check=True, capture_output=True, text=True)
        return json.loads((OUT / "expert-kernels-cpu.json").read_text())
    done = subprocess.run(
        [sys.executable, "-m", "moe_tui", *argv], cwd=REPO, env=env, check=True, capture_output=True, text=True
    )
    data = json.loads(done.stdout)
    (OUT / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
    return data


def gib(n: float) -> str:
    """Bytes in the largest sensible binary unit."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, numbers right-aligned."""
    align = ["---"] + ["---:"] * (len(headers) - 1)
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def bench_table(data: dict, baseline: str = "resident") -> str:
    """One row per configuration of a ``bench --json`` output, with ratios against ``baseline``."""
    results = data["results"]
    base = next((r for r in results if r["label"] == baseline), results[0])
    headers = [
        "config", "decode tok/s", f"x {baseline}", "prefill tok/s", "TTFT ms", "hit rate", "prefetch used/issued",
        "recall", "moved/token", "stall ms/token", "fast tier", "slow tier",
    ]  # fmt: skip
    rows = []
    for r in results:
        engine = r["engine"]
        rows.append(
            [
                r["label"],
                f"{r['decode_tokens_per_s']:.2f}",
                f"{r['decode_tokens_per_s'] / base['decode_tokens_per_s']:.2f}",
                f"{r['prefill_tokens_per_s']:.0f}",
                f"{1000 * r['ttft_s']:.0f}",
                "-" if engine is None else f"{100 * engine['hit_rate']:.1f}%",
                "-" if engine is None else f"{engine['prefetch_used']}/{engine['prefetch_issued']}",
                "-" if engine is None or not engine["prefetch_issued"] else f"{100 * engine['prefetch_recall']:.1f}%",
                "-" if r["bytes_per_token"] is None else gib(r["bytes_per_token"]),
                "-" if not r["stall_s_per_token"] else f"{1000 * r['stall_s_per_token']:.1f}",
                gib(r["fast_peak_bytes"] or r["fast_tier_bytes"]),
                gib(r["slow_tier_bytes"]) if r["slow_tier_bytes"] else "-",
            ]
        )
    return table(headers, rows)


def by_label(data: dict) -> dict[str, dict]:
    """Results of a bench output keyed by configuration label."""
    return {r["label"]: r for r in data["results"]}


def bench_settings(label: str) -> dict[str, str]:
    """A bench configuration's settings from its label: ``k=2,bits=4`` gives k and bits; ``resident`` none."""
    return dict(part.split("=", 1) for part in label.split(",") if "=" in part)


def planned(plan: dict, k: int, prefetch: int, expert_precision: str, miss: str = "copy") -> dict | None:
    """The plan's configuration with these settings, one k for every layer and unquantized other weights (None
    when the plan does not list it); with misses computed on the host k makes no difference, and the plan
    lists that at k=1."""
    dtype = plan["model"]["dtype"]
    k = 1 if miss == "host" else k
    return next(
        (
            c for c in plan["configurations"]
            if (c["cache_size"], c["prefetch"], c["expert_precision"], c["attn_precision"], c.get("miss", "copy"))
            == (k, prefetch, expert_precision, dtype, miss) and not c["layer_sizes"]
        ),
        None,
    )  # fmt: skip


def plan_check(plan: dict, demo: dict) -> str:
    """The planner's estimate next to the measured decode speed for the engine configurations of step 1."""
    num_experts = plan["model"]["num_experts"]
    dtype = plan["model"]["dtype"]
    measured = by_label(demo)
    rows = []
    for label, result in measured.items():
        if result["kind"] != "engine":
            continue
        parts = bench_settings(label)
        k, prefetch = int(parts["k"]), int(parts.get("prefetch", 0))
        estimate = planned(plan, k, prefetch, dtype)
        if estimate is None:
            continue
        engine = result["engine"]
        rows.append(
            [
                label + (" (all experts)" if k == num_experts else ""),
                f"{100 * estimate['hit_rate']:.1f}%",
                f"{100 * engine['hit_rate']:.1f}%",
                f"{estimate['tokens_per_s']:.1f}",
                f"{result['decode_tokens_per_s']:.1f}",
                f"{result['decode_tokens_per_s'] / estimate['tokens_per_s']:.2f}",
                estimate["bound"],
            ]
        )
    headers = [
        "config", "hit rate (trace replay, decode)", "hit rate (measured)", "estimate tok/s", "measured tok/s",
        "measured / estimate", "bound",
    ]  # fmt: skip
    return table(headers, rows)


def lab_table(data: dict) -> str:
    """Overall hit rate by k and policy for one trace, with the recording's own hit rate."""
    replays = {(r["policy"], r["cache_size"][0]): r for r in data["replays"]}
    policies = data["policies"]
    rows = []
    for k in data["cache_sizes"]:
        row = [str(k)]
        for policy in policies:
            rate = replays[(policy, k)]["total"]["hit_rate"]
            gap = replays[(policy, k)]["gap_to_min"]
            points = round(-100 * gap, 1) + 0.0  # + 0.0 turns -0.0 into 0.0
            row.append(f"{100 * rate:.1f}%" if policy == "min" else f"{100 * rate:.1f}% ({points:+.1f})")
        rows.append(row)
    return table(["k", *[("MIN (optimum)" if p == "min" else p) for p in policies]], rows)


def load_average() -> str:
    """The 1/5/15-minute load average."""
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    """Run every measurement (or reuse the kept ones with --render-only), then write RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens and runs (a smoke test of the script)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a machine whose cores other work shares, two threads stall each "
        "other at every barrier and timings swing by 100x)",
    )
    parser.add_argument(
        "--render-only", action="store_true", help="rewrite RESULTS.md from the JSON kept in results/ (no runs)"
    )
    parser.add_argument("--only", nargs="+", metavar="NAME", help="re-measure only these steps (" + STEPS + ")")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    kept = OUT / "meta.json"
    if args.render_only:
        meta = json.loads(kept.read_text())
    elif args.only:
        meta = measure_some(json.loads(kept.read_text()), args.only, args.quick, args.threads)
    else:
        meta = measure_all(args.quick, args.threads)
    argvs = meta["argvs"]
    data = {name: _kept(name) for name in meta["runs"]}
    labs = {name: json.loads((OUT / f"lab-{Path(name).stem}.json").read_text()) for name in meta["traces"]}
    RESULTS_MD.write_text(render(data, labs, argvs, meta))
    print(f"wrote {RESULTS_MD.relative_to(REPO)}", file=sys.stderr)


STEPS = "demo, synthetic, telemetry, plan, real-shapes, expert-kernels, real-shapes-plan"


def _kept(name: str) -> dict:
    return json.loads((OUT / ("expert-kernels-cpu" if name == KERNELS else name)).with_suffix(".json").read_text())


def all_commands(quick: bool, threads: int) -> dict[str, list[str]]:
    """Every measurement's arguments, the expert-kernels script's included."""
    return {**commands(quick, threads), KERNELS: ["--runs", "3" if quick else "7"]}


def measure_some(meta: dict, names: list[str], quick: bool, threads: int) -> dict:
    """Re-measure ``names``, keep the other steps' JSON, and note what was re-measured when."""
    argvs = all_commands(quick, threads)
    unknown = [name for name in names if name not in argvs]
    if unknown:
        raise SystemExit(f"unknown step(s) {', '.join(unknown)}; choose from {STEPS}")
    for name in names:
        started, load = datetime.datetime.now(datetime.timezone.utc), load_average()
        run(name, argvs[name])
        meta["argvs"][name] = argvs[name]
        meta.setdefault("remeasured", {})[name] = f"{started:%Y-%m-%d %H:%M} UTC, load average {load} before"
    meta["runs"] = list(dict.fromkeys([*meta["runs"], *names]))
    (OUT / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def measure_all(quick: bool, threads: int) -> dict:
    """Run every measurement; returns (and keeps in results/meta.json) what RESULTS.md needs besides the JSON."""
    load_before = load_average()
    started = datetime.datetime.now(datetime.timezone.utc)
    argvs = all_commands(quick, threads)
    for name, argv in list(argvs.items()):
        run(name, argv)
    traces = sorted((REPO / "samples" / "traces").glob("*.jsonl"))
    for trace in traces:
        argv = ["lab", str(trace.relative_to(REPO)), "--json"]
        argvs[f"lab {trace.name}"] = argv
        run(f"lab-{trace.stem}", argv)
    meta = {
        "started": f"{started:%Y-%m-%d %H:%M}",
        "load_before": load_before,
        "load_after": load_average(),
        "quick": quick,
        "runs": list(all_commands(quick, threads)),
        "traces": [trace.name for trace in traces],
        "argvs": argvs,
    }
    (OUT / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def render(data: dict, labs: dict, argvs: dict, meta: dict) -> str:
    """RESULTS.md from the measurements."""
    machine = data["demo"]["machine"]
    demo, synthetic, telemetry = by_label(data["demo"]), by_label(data["synthetic"]), by_label(data["telemetry"])
    every_demo = demo[f"k={data['plan']['model']['num_experts']}"]  # "k=E" is labelled with the number
    every_synthetic = synthetic[f"k={SYNTHETIC_EXPERTS}"]
    off, on = telemetry["k=2,prefetch=1,telemetry=off"], telemetry["k=2,prefetch=1"]
    recording = telemetry["k=2,prefetch=1,record=on"]

    def ratio(a: dict, b: dict) -> str:
        return f"{a['decode_tokens_per_s'] / b['decode_tokens_per_s']:.2f}x"

    def command(name: str) -> str:
        return f"```sh\nmoe-tui {shlex.join(argvs[name])}\n```"

    gpu = f"{machine['gpu']} ({gib(machine['gpu_bytes'])})" if machine["gpu"] else "none"
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python benchmarks/results.py{' --quick' if meta['quick'] else ''}` on {meta['started']} UTC "
        "from the JSON in `benchmarks/results/`; do not edit by hand, run the script again.",
        "",
        table(
            ["machine", ""],
            [
                ["CPU", f"{machine['cpu']}, {machine['cores']} cores (torch uses {machine['torch_threads']} threads)"],
                ["RAM", gib(machine["ram_bytes"])],
                ["GPU", gpu],
                [
                    "software",
                    f"{machine['os']}, Python {machine['python']}, torch {machine['torch']}, "
                    f"transformers {machine['transformers']}",
                ],
                ["load average (1/5/15 min)", f"{meta['load_before']} before, {meta['load_after']} after"],
            ],
        ),
        "",
        f"**Tiers.** {data['demo']['tiers']}.",
        "",
        "## Headline",
        "",
        f"- Demo model, engine with every expert cached (k=E) vs the resident model: "
        f"**{ratio(every_demo, demo['resident'])}** decode speed (the cost of the engine's machinery itself).",
        f"- Synthetic Mixtral ({data['synthetic']['model']}): engine k=E "
        f"**{ratio(every_synthetic, synthetic['resident'])}** of resident; k=2 "
        f"**{ratio(synthetic['k=2'], synthetic['hf-offload'])}** and k=4 "
        f"**{ratio(synthetic['k=4'], synthetic['hf-offload'])}** the speed of transformers' own disk offload.",
        f"- Demo model, k=2 with prefetch vs transformers' disk offload: "
        f"**{ratio(demo['k=2,prefetch=1'], demo['hf-offload'])}**.",
        f"- Telemetry (per-layer steps, counters, snapshot) on vs off: **{ratio(on, off)}** decode speed, "
        f"**{ratio(recording, off)}** when a trace file is written too (goal >= 0.95).",
        *real_headlines(data),
        "",
        "## 1. Demo model",
        "",
        f"Model: {data['demo']['model']}. Prompts: `samples/prompts/bench.txt` as chat turns.",
        "",
        command("demo"),
        "",
        bench_table(data["demo"]),
        "",
        "## 2. Synthetic Mixtral, copies that matter",
        "",
        f"Model: {data['synthetic']['model']}.",
        *(f"Note: {note}." for note in data["synthetic"]["notes"]),
        "",
        command("synthetic"),
        "",
        bench_table(data["synthetic"]),
        "",
        "## 3. Telemetry cost",
        "",
        *(f"Note: {note}." for note in data["telemetry"]["notes"]),
        "",
        command("telemetry"),
        "",
        bench_table(data["telemetry"], baseline="k=2,prefetch=1,telemetry=off"),
        "",
        "## 4. Planner estimate vs measurement (demo model)",
        "",
        f"The planner replays the trace recorded in step 1 and measures bandwidths in its own process: transfer "
        f"{data['plan']['machine']['transfer_bandwidth'] / 1e9:.1f} GB/s "
        f"({data['plan']['bandwidth_sources']['transfer']}), compute "
        f"{data['plan']['machine']['compute_bandwidth'] / 1e9:.1f} GB/s "
        f"({data['plan']['bandwidth_sources']['compute']}). Formula: {data['plan']['formula']}.",
        "",
        command("plan"),
        "",
        plan_check(data["plan"], data["demo"]),
        "",
        "## 5. Cache lab on the shipped traces",
        "",
        "Hit rate over all MoE layers; in brackets, points above or below Belady's MIN (the optimum for a cache "
        "that loads on demand; prefetch can beat it because its hits are paid for by copies made ahead of time).",
        "",
    ]
    for name, lab in labs.items():
        recorded = lab["recorded"]["total"]
        lines += [
            f"### {name}",
            "",
            f"{lab['passes']} forward passes, {lab['tokens']} tokens; recorded by the engine at k="
            f"{lab['recorded']['cache_size'][0]}: hit rate {100 * recorded['hit_rate']:.1f}%, prefetch recall "
            f"{100 * recorded['prefetch_recall']:.1f}%.",
            "",
            command(f"lab {name}"),
            "",
            lab_table(lab),
            "",
        ]
    if "real-shapes" in data:
        lines += real_shapes_section(data["real-shapes"], command("real-shapes"), meta)
        if "real-shapes-plan" in data:
            lines += real_plan_section(data["real-shapes-plan"], data["real-shapes"], command("real-shapes-plan"), meta)
    if KERNELS in data:
        lines += kernels_section(data[KERNELS], meta)
    for checkpoint in saved("real-checkpoint.json"):
        lines += checkpoint_section(checkpoint)
    cuda_runs = {path.name: json.loads(path.read_text()) for path in OUT.glob("cuda-*.json")}
    for name, run in sorted(cuda_runs.items(), key=lambda item: item[1]["when"]):
        lines += cuda_section(run, name)
    if fit_checks := saved("fit-check*.json"):
        lines += fit_section(fit_checks)
    for conversation in saved("conversation-ttft.json"):
        lines += conversation_section(conversation)
    for panels in saved("panel-draw.json"):
        lines += panels_section(panels)
    if sessions := saved("session-rss*.json"):
        lines += session_section(sessions)
    for growth in saved("kv-growth.json"):
        lines += kv_growth_section(growth)
    return "\n".join(lines)


def saved(pattern: str) -> list[dict]:
    """The results a benchmark script saved under ``OUT`` in files matching ``pattern``, in name order (none when
    it has not been run)."""
    return [json.loads(path.read_text()) for path in sorted(OUT.glob(pattern))]


def kv_growth_section(data: dict) -> list[str]:
    """Section 14: a decoded token's time with transformers' KV cache and with the chat's block-growing one."""
    rows = [
        [
            str(row["context"]),
            f"{row['transformers_ms']:.1f}",
            f"{row['blocks_ms']:.1f}",
            f"{row['transformers_ms'] / row['blocks_ms']:.2f}x",
        ]
        for row in data["rows"]
    ]
    return [
        "## 14. Appending to the KV cache",
        "",
        f"`python benchmarks/kv_growth.py --runs {data['runs']}` (two Mixtral-8x7B-shaped layers in bf16, k=2, "
        f"prefetch 1, 4-bit experts, misses computed on the host, {data['threads']} threads; both caches filled "
        f"with the same random keys and values to the context, then {data['tokens']} tokens decoded; median per "
        "token, the two alternating in one process). transformers' cache copies every layer's keys and values "
        "for each token; the chat's (`moe_tui.chat.kv_blocks`) writes them in place and copies once per "
        f"{data['block']}-token block.",
        "",
        table(["context", "transformers' cache (ms/token)", "blocks (ms/token)", "speed-up"], rows),
        "",
    ]


def session_section(reports: list[dict]) -> list[str]:
    """Section 13: a long CPU chat's memory with oneDNN's kernel caches bounded and at their default size."""
    reports = sorted(reports, key=lambda report: report["kernel_cache_entries"] == "default")
    entries = [report["kernel_cache_entries"] for report in reports]
    names = ["default caches (1024)" if entry == "default" else f"caches of {entry}" for entry in entries]
    header = ["answers"] + [cell for name in names for cell in (f"RSS added, {name}", "s per answer")]
    rows = []
    for same_point in zip(*(report["rows"] for report in reports), strict=True):
        cells = [str(same_point[0]["answers"])]
        for row in same_point:
            cells += [gib(row["rss_added_mib"] * 2**20), f"{row['median_s']:.2f}"]
        rows.append(cells)
    medians = ", ".join(f"{report['median_s']:.2f} s with {name}" for report, name in zip(reports, names, strict=True))
    return [
        "## 13. A long chat's memory on a CPU",
        "",
        "`python benchmarks/session_rss.py --answers N [--unbounded]` (two Mixtral-8x7B-shaped layers in bf16, "
        "k=2, prefetch 1, on the CPU; the same answers of 10-250 random words, 4 new tokens each; RSS above its "
        "size after a warm-up answer, and the median time of the last 5 answers). oneDNN compiles and keeps a "
        "matmul kernel for every shape it meets, and every expert sees a different token count; the engine bounds "
        f"both of its caches (`memory.bound_kernel_caches`). Median answer: {medians}.",
        "",
        table(header, rows),
        "",
    ]


def panels_section(data: dict) -> list[str]:
    """Section 12: the panels' drawing time at today's large MoE shapes."""
    rows = [[row["shape"], row["size"], row["panel"], f"{row['median_ms']:.2f}"] for row in data["rows"]]
    return [
        "## 12. Panels at 128-256 experts and 48-61 layers",
        "",
        f"`python benchmarks/panel_draw.py --runs {data['runs']}` (a telemetry snapshot after a prefill and 40 "
        "decode passes of skewed top-8 routing, k=16; each panel's render at the size it gets in an 80x24 and "
        "a 160x48 terminal; median). Goal: at most 5 ms per panel.",
        "",
        table(["shape", "terminal", "panel", "ms"], rows),
        "",
    ]


def fit_section(reports: list[dict]) -> list[str]:
    """Section 10: what an answer adds to memory against what the fit check counts for it, per model shape."""
    lines = [
        "## 10. An answer's memory against the fit check",
        "",
        "`python benchmarks/fit_check.py --model NAME --runs 3` (two layers of the model's real shapes in bf16, "
        "k=2, on the CPU, oneDNN's kernel caches bounded as the engine sets them (section 13); prompts prefilled "
        "in 512-token chunks; RSS sampled every 2 ms during the answer after glibc handed back what the process "
        "had freed, the highest of 3; counted: the KV cache of prompt and answer plus one chunk's activations "
        "(with eager attention, its score matrices against the whole context) and the logits, as `chat` checks "
        f"them before loading, besides a {gib(reports[0]['margin_cpu'])} margin).",
        "",
    ]

    def order(report: dict) -> tuple[bool, bool]:
        return report.get("model", "mixtral-8x7b") != "mixtral-8x7b", report.get("glibc") == "default"

    for data in sorted(reports, key=order):
        eager = data.get("attention") == "eager"
        header = ["tokens", "RSS added (peak)", "counted", "measured / counted"]
        if eager:
            header += ["counted without the scores", "measured / that"]
        rows = []
        for row in data["rows"]:
            cells = [str(row["tokens"]), gib(row["measured"]), gib(row["counted"])]
            cells.append(f"{row['measured'] / row['counted']:.2f}")
            if eager:
                without = row["counted_without_scores"]
                cells += [gib(without), f"{row['measured'] / without:.2f}"]
            rows.append(cells)
        model = data.get("model", "mixtral-8x7b")
        attention = data.get("attention", "sdpa")
        glibc = data.get("glibc", "default")
        kept = "glibc keeping freed blocks, as before the engine asked it not to" if glibc == "default" else glibc
        lines += [f"{model} ({attention} attention; {kept}):", "", table(header, rows), ""]
    return lines


def conversation_section(data: dict) -> list[str]:
    """Section 11: time to first token along a conversation, with and without the KV cache kept."""
    rows = [
        [
            str(row["turn"]),
            str(row["prompt_tokens"]),
            str(row["reused"]),
            f"{1000 * row['whole_ttft_s']:.1f}",
            f"{1000 * row['kept_ttft_s']:.1f}",
        ]
        for row in data["turns"]
    ]
    return [
        "## 11. Time to first token along a conversation",
        "",
        f"`python benchmarks/conversation_ttft.py --runs {data['runs']}` (demo model, k=2, prefetch 1, "
        f"{data['threads']} thread; 10 scripted turns, 24-token greedy answers; median of the runs, both ways "
        "alternating in one process).",
        "",
        table(["turn", "prompt tokens", "reused from the kept cache", "prefilled whole (ms)", "cache kept (ms)"], rows),
        "",
    ]


def checkpoint_section(data: dict) -> list[str]:
    """Section: a real-size checkpoint through load_offloaded, first and cached starts."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import real_checkpoint

    return [
        "## 8. A real-size checkpoint: first start, cached start, memory",
        "",
        f"`python benchmarks/real_checkpoint.py --layers {' '.join(str(c['layers']) for c in data['checkpoints'])}` "
        "(each start in a fresh process; its seconds are `load_offloaded`'s, imports of transformers' model code "
        "included, in the stage 'opening the model'; peak RSS above the process's RSS before loading, through a "
        "first forward pass that fills the expert slots; anonymous: "
        "RSS less the mapped shard files, which are the page cache's and reclaimable; predicted: the loader's "
        "memory check).",
        "",
        real_checkpoint.markdown(data),
        "",
    ]


def fit_verdict(model: dict) -> str:
    """One model's line of the CUDA check's fit step. Since the second GPU run the answer runs with PyTorch's
    allocator capped at the count; the first run compared the peak reserved memory with the count instead."""
    where = f"{model['model']} ({model['attention']}, {model['tokens']} tokens): "
    peak = f"peak reserved {gib(model['peak'])}, {gib(model['outside_allocator'])} outside PyTorch's allocator"
    if "out_of_memory" not in model:
        return where + f"{peak}, against {gib(model['counted'])} counted"
    verdict = "ran out of memory" if model["out_of_memory"] else "finished"
    return where + f"{verdict} with the allocator capped at the {gib(model['counted'])} counted; {peak}"


def cuda_section(data: dict, name: str) -> list[str]:
    """Section 8: what ``benchmarks/cuda_check.py`` found (or skipped, without a GPU)."""
    steps = data["steps"]
    gpu = data["gpu"] or "no GPU on the machine that ran it"
    chosen = [step for step, report in steps.items() if report.get("reason") != "--skip"]
    lines = [
        f"## 9. CUDA check: {gpu}, {data['when']}"
        + (" (--quick)" if data["quick"] else "")
        + (f" (steps run: {', '.join(chosen)})" if len(chosen) < len(steps) else ""),
        "",
        f"`python benchmarks/cuda_check.py` (torch {data['torch']}, CUDA {data['cuda']}); "
        f"`benchmarks/results/{name}`." + (f" {data['note']}" if data.get("note") else ""),
        "",
    ]
    rows = []
    for step, report in steps.items():
        detail = report.get("reason") or report.get("error") or report.get("summary") or ""
        if step == "streams" and "max_abs_difference" in report:
            detail = (
                f"delayed copies and computation: max |logit difference| {report['max_abs_difference']:.2e}; "
                f"without the ready wait (control): {report['control_max_abs_difference']:.2e}"
            )
        if step == "syncs" and "engine" in report:
            detail = (
                f"engine {report['engine']['prefill']} per prefill / {report['engine']['decode']} per decode pass, "
                f"resident {report['resident']['prefill']} / {report['resident']['decode']} "
                f"({report['moe_layers']} MoE layers)"
            )
        if step == "overhead" and "engine" in report:
            detail = (
                ", ".join(
                    f"{label} {report[label]['ms_per_token']:.1f} ms a token "
                    f"({report[label + '_ms_per_layer']:.2f} a layer, {report[label]['kernels_per_token']} kernels)"
                    for label in ("resident", "engine")
                )
                + f" ({report['layers']} layers of hidden size 64)"
            )
        if step == "transfer" and "pinned_gbps" in report:
            detail = f"pinned {report['pinned_gbps']:.1f} GB/s, pageable {report['pageable_gbps']:.1f} GB/s"
            if "store_gbps" in report:
                detail += (
                    f"; expert store registered with cudaHostRegister: {report['store_gbps']:.1f} GB/s, RSS grew "
                    f"{report['store_rss_growth'] / report['store_bytes']:.3f}x its size, pinned allocator "
                    f"{report['store_pinned_allocator_bytes']} B"
                )
                if "store_torch_is_pinned" in report:
                    detail += f", torch's is_pinned() said {report['store_torch_is_pinned']}"
        if step == "fit" and "models" in report:
            detail = "; ".join(fit_verdict(m) + f" (margin {gib(report['margin'])})" for m in report["models"])
        if step == "cli" and "runs" in report:
            runs = report["runs"].items()
            detail = ", ".join(f"{name} exit {run['rc']} in {run['seconds']:.0f} s" for name, run in runs)
            same = "the same" if report["greedy_text_same_on_cuda_and_cpu"] else "different"
            gpus = ", ".join(
                f"{gpu['name']} {gib(gpu['memory_used'] or 0)} used, this process {gib(gpu['process_allocated'] or 0)}"
                for gpu in report["probe"]["gpus"]
            )
            detail += f"; greedy answer on CUDA and CPU {same}; NVML: {gpus or report['probe']['gpu_status']}"
        if step == "kernels" and "rows" in report:
            shown = ("int4", "int8", "int8 (dequantized on use)")  # the last: runs before int8 did so on CUDA
            detail = ", ".join(
                f"{r['shape']} {r['format']} {1000 * r['median_s_1']:.2f} ms ({r['vs_bf16']:.2f}x bf16)"
                for r in report["rows"]
                if r["format"] in shown
            )
        if step == "mixtral" and report.get("configurations"):
            detail = "decode speeds in the table below"
        seconds = f"{report['seconds']:.0f}" if "seconds" in report else "-"  # a --skip never ran
        rows.append([step, report["status"], seconds, detail.replace("|", "/")])
    lines += [table(["step", "status", "s", "result"], rows), ""]
    mixtral = steps.get("mixtral", {})
    if mixtral.get("configurations"):
        config_rows = [
            [
                c["format"],
                str(c["k"]),
                str(c["prefetch"]),
                c.get("miss", "copy"),
                f"{c['tokens_per_s']:.1f}",
                f"{100 * c['hit_rate']:.1f}%",
                gib(c["copied_bytes_per_token"]),
                f"{c.get('host_per_token', 0.0):.1f}",
                "-" if c["copy_bound_tps"] is None else f"{c['copy_bound_tps']:.1f}",
                f"{c['build_s']:.0f}",
            ]
            for c in mixtral["configurations"]
        ]
        headers = [
            "experts", "k", "prefetch", "miss", "tok/s", "hit rate", "copied/token", "host/token", "copy bound tok/s",
            "build s",
        ]  # fmt: skip
        lines += [f"{mixtral['layers']} Mixtral-8x7B layers on the GPU:", "", table(headers, config_rows), ""]
    return lines


def real_headlines(data: dict) -> list[str]:
    """Headline lines for the real-shape steps, when they were measured."""
    lines = []
    if "real-shapes" in data:
        real = by_label(data["real-shapes"])
        resident = real["resident"]["decode_tokens_per_s"]

        def speed(label: str) -> str:
            return (
                f"{real[label]['decode_tokens_per_s']:.2f} tok/s ({real[label]['decode_tokens_per_s'] / resident:.2f}x)"
            )

        lines.append(
            f"- Two real-size Mixtral-8x7B layers on this CPU: resident bf16 {resident:.2f} tok/s; k=2 at 4 bits "
            f"(int4 kernel) {speed('k=2,bits=4,optimize=off')} with misses copied, "
            f"{speed('k=2,bits=4,optimize=off,miss=host')} computed on the host; the old unfused 4-bit path "
            f"{speed('k=2,bits=4,optimize=off,fused=off')}; 2 bits on the host in "
            f"{real['k=2,bits=2,optimize=off,miss=host'].get('expert_format') or 'hqq2'} "
            f"{speed('k=2,bits=2,optimize=off,miss=host')}."
        )
    if KERNELS in data:
        rows = {(r["shape"], r["format"]): r for r in data[KERNELS]["rows"]}
        int4, unfused = rows[("Mixtral-8x7B", "int4")], rows[("Mixtral-8x7B", "hqq4 (unfused)")]
        lines.append(
            f"- One Mixtral-8x7B expert, one token: int4 {1000 * int4['median_s_1']:.1f} ms = "
            f"**{1 / int4['vs_bf16']:.1f}x faster than bf16** and {unfused['median_s_1'] / int4['median_s_1']:.0f}x "
            f"faster than the unfused HQQ 4-bit path; {int4['vs_bound']:.2f}x its memory-bandwidth bound."
        )
        bf16 = rows[("Mixtral-8x7B", "bf16")]
        below = []
        for bits in (2, 3):
            ours, hqq = (
                rows.get(("Mixtral-8x7B", f"int{bits} (unfused)")),
                rows[("Mixtral-8x7B", f"hqq{bits} (unfused)")],
            )
            if ours is not None:
                faster = hqq["median_s_1"] / ours["median_s_1"]
                below.append(
                    f"int{bits} {1000 * ours['median_s_1']:.1f} ms ({ours['vs_bf16']:.2f}x bf16's time for "
                    f"{ours['nbytes'] / bf16['nbytes']:.2f}x its bytes), **{faster:.1f}x faster than HQQ's own "
                    f"{bits}-bit path**"
                )
        if below:
            lines.append(f"- Below 4 bits, expanded for the int4 kernel a block at a time: {'; '.join(below)}.")
    return lines


def real_shapes_section(data: dict, command: str, meta: dict) -> list[str]:
    """Section 6: the engine on two real-size Mixtral layers."""
    results = by_label(data)
    resident = results["resident"]["decode_tokens_per_s"]
    rows = []
    for r in data["results"]:
        engine = r["engine"] or {}
        rows.append(
            [
                r["label"],
                r.get("expert_format") or "bf16 (resident)",
                f"{r['decode_tokens_per_s']:.2f}",
                f"{r['decode_tokens_per_s'] / resident:.2f}",
                f"{1000 * r['ttft_s']:.0f}",
                "-" if not engine else f"{100 * engine['hit_rate']:.1f}%",
                "-" if not r.get("host_per_token") else f"{r['host_per_token']:.1f}",
                "-" if r["bytes_per_token"] is None else gib(r["bytes_per_token"]),
                gib(r["fast_peak_bytes"] or r["fast_tier_bytes"]),
                gib(r["slow_tier_bytes"]) if r["slow_tier_bytes"] else "-",
                gib(r["peak_rss_bytes"]),
            ]
        )
    headers = [
        "config", "experts", "decode tok/s", "x resident", "TTFT ms", "hit rate", "host/token", "moved/token",
        "fast tier", "slow tier", "peak RSS",
    ]  # fmt: skip
    when = meta.get("remeasured", {}).get("real-shapes")
    return [
        "## 6. Real shapes: two Mixtral-8x7B layers",
        "",
        f"Model: {data['model']}. Routing is the random routers' own (near uniform: k=2 of 8 hits about 25%)."
        + (f" Measured {when}." if when else ""),
        "",
        command,
        "",
        table(headers, rows),
        "",
        "On a CPU the fast tier is the host too, so a copied miss is a memcpy that computing from the store "
        "skips: `miss=host` never copies, and `miss=auto` measures both and picks the host here.",
        "",
    ]


def real_plan_section(plan: dict, measured: dict, command: str, meta: dict) -> list[str]:
    """Section 6's configurations next to the planner's estimate of them (``miss=auto`` has no plan row: it
    decides per pass)."""
    num_experts = plan["model"]["num_experts"]
    dtype = plan["model"]["dtype"]
    rows = []
    for r in measured["results"]:
        parts = bench_settings(r["label"])
        if r["label"] == "resident":
            estimate = planned(plan, num_experts, 0, dtype)
        elif set(parts) - {"miss"} == {"k", "bits", "optimize"} and parts.get("miss", "copy") != "auto":
            estimate = planned(plan, int(parts["k"]), 0, f"hqq{parts['bits']}", parts.get("miss", "copy"))
        else:
            continue
        if estimate is None:
            continue
        engine = r["engine"] or {}
        rows.append(
            [
                r["label"] + (" (plan: k=E)" if r["label"] == "resident" else ""),
                r.get("expert_format") or "bf16 (resident)",
                f"{100 * estimate['hit_rate']:.1f}%",
                "-" if not engine else f"{100 * engine['hit_rate']:.1f}%",
                f"{estimate['tokens_per_s']:.2f}",
                f"{r['decode_tokens_per_s']:.2f}",
                f"{r['decode_tokens_per_s'] / estimate['tokens_per_s']:.2f}",
                estimate["bound"],
            ]
        )
    names = plan["machine"]["formats"]
    rates = ", ".join(
        f"{names.get(name, name)} {rate / 1e9:.1f}"
        for name, rate in sorted(plan["machine"]["expert_bandwidth"].items())
    )
    headers = [
        "config", "experts", "hit rate (plan, uniform)", "hit rate (measured)", "estimate tok/s", "measured tok/s",
        "measured / estimate", "bound",
    ]  # fmt: skip
    when = meta.get("remeasured", {}).get("real-shapes-plan")
    return [
        "### The planner at real shapes",
        "",
        "`moe-tui plan` on the same model's config, in its own process"
        + (f" ({when})" if when else "")
        + f": expert bandwidth in GB/s {rates} ({plan['bandwidth_sources']['experts']}); compute "
        f"{plan['machine']['compute_bandwidth'] / 1e9:.1f} GB/s, transfer "
        f"{plan['machine']['transfer_bandwidth'] / 1e9:.1f} GB/s. The resident model is set against the plan's "
        "k=E (every expert in a slot); `miss=host` against the plan's host row (nothing copied, k=1), and "
        "`miss=auto`, which decides per pass, has none.",
        "",
        command,
        "",
        table(headers, rows),
        "",
    ]


def kernels_section(data: dict, meta: dict) -> list[str]:
    """Section 7: one expert per format, against the memory bound."""
    rows = [
        [
            r["shape"],
            r["format"],
            f"{r['nbytes'] / 2**20:.1f}",
            f"{1000 * r['median_s_1']:.2f}",
            f"{1000 * r['median_s_8']:.2f}",
            f"{1000 * r['bound_s']:.2f}",
            f"{r['vs_bound']:.2f}",
            f"{r['vs_bf16']:.2f}",
        ]
        for r in data["rows"]
    ]
    headers = ["expert", "format", "MiB", "1 token ms", "8 tokens ms", "bound ms", "x bound", "x bf16"]
    when = meta.get("remeasured", {}).get(KERNELS)
    return [
        "## 7. One expert per format at real shapes",
        "",
        f"`python benchmarks/expert_kernels.py {shlex.join(meta['argvs'].get(KERNELS, []))}`: median of "
        f"{data['runs']} runs of one expert's forward pass ({data['threads']} torch threads"
        + (f", measured {when}" if when else "")
        + f"). Bound: the format's bytes / {data['read_bandwidth'] / 1e9:.1f} GB/s, the streaming read "
        "bandwidth measured in the same run. Quantized with HQQ's min-max rounding (speed does not depend on it).",
        "",
        table(headers, rows),
        "",
    ]


if __name__ == "__main__":
    main()
