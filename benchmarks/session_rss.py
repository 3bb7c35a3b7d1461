"""Does a long chat on a CPU fast tier hold its memory steady?

Two Mixtral-8x7B-shaped layers (random bf16 weights, k=2, prefetch 1, offloaded on the CPU) answer ``--answers``
prompts of 10-250 random words (4 new tokens each, the KV cache dropped between answers); the process's RSS
above its size after a warm-up answer is printed every 5 answers, with the median time of those answers. A
steady chat levels off. It did not until the engine bounded oneDNN's kernel caches
(``memory.bound_kernel_caches``); ``--unbounded`` leaves them at their default of 1024 shapes, to compare::

    python benchmarks/session_rss.py --answers 80 --json benchmarks/results/session-rss.json
    python benchmarks/session_rss.py --answers 80 --unbounded --json benchmarks/results/session-rss-unbounded.json
    python benchmarks/session_rss.py --answers 80 --trim  # glibc hands freed memory back after each answer
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

import psutil
from fit_check import answering_session, question, shaped_model


def main() -> None:
    """Answer the prompts and print the RSS growth every 5 answers."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answers", type=int, default=80)
    parser.add_argument("--trim", action="store_true", help="call glibc's malloc_trim(0) after every answer")
    parser.add_argument(
        "--unbounded", action="store_true", help="leave oneDNN's kernel caches at their default size (1024 shapes)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file (for results.py)")
    args = parser.parse_args()
    from moe_tui.chat.generation import GenerationSettings
    from moe_tui.offload import OffloadConfig, memory, offload_model

    if args.unbounded:  # before the engine sets them, and before torch's first matmul reads them
        os.environ.update(dict.fromkeys(memory.KERNEL_CACHE_VARIABLES, "1024"))

    engine = offload_model(
        shaped_model("mixtral-8x7b"), OffloadConfig(cache_size=2, prefetch=1), progress=lambda *a: None
    )
    session = answering_session(engine, "mixtral-8x7b")
    settings = GenerationSettings(temperature=0, max_new_tokens=4)
    process = psutil.Process()
    session.generate(question(20), settings, lambda _: None)
    start = process.memory_info().rss
    words = random.Random(0)
    seconds = []
    rows = []
    for answer in range(1, args.answers + 1):
        began = time.perf_counter()
        session.generate(question(words.randint(10, 250)), settings, lambda _: None)
        seconds.append(time.perf_counter() - began)
        if args.trim:
            memory.hand_back_freed()
        if answer % 5 == 0:
            grown = (process.memory_info().rss - start) / 2**20
            took = statistics.median(seconds[-5:])
            print(f"after {answer:3d} answers: RSS {grown:5.0f} MiB above the start, {took:.2f} s an answer")
            rows.append({"answers": answer, "rss_added_mib": grown, "median_s": took})
    print(f"median answer {statistics.median(seconds):.2f} s")
    if args.json:
        caches = "default" if args.unbounded else os.environ.get(memory.KERNEL_CACHE_VARIABLES[0], "default")
        report = {"kernel_cache_entries": caches, "trim": args.trim, "median_s": statistics.median(seconds)}
        args.json.write_text(json.dumps({**report, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
