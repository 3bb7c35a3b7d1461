"""Does a long chat on a CPU fast tier hold its memory steady?

Two Mixtral-8x7B-shaped layers (random bf16 weights, k=2, prefetch 1, offloaded on the CPU) answer ``--answers``
prompts of 10-250 random words (4 new tokens each, the KV cache dropped between answers); the process's RSS
above its size after a warm-up answer is printed every 5 answers. A steady chat would level off; this one did
not (issue 10's closing note)::

    python benchmarks/session_rss.py --answers 80
    ONEDNN_PRIMITIVE_CACHE_CAPACITY=0 python benchmarks/session_rss.py --answers 80  # without oneDNN's cache
    python benchmarks/session_rss.py --answers 80 --trim  # glibc hands freed memory back after each answer
"""

from __future__ import annotations

import argparse
import random

import psutil
from fit_check import answering_session, question, shaped_model


def main() -> None:
    """Answer the prompts and print the RSS growth every 5 answers."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answers", type=int, default=80)
    parser.add_argument("--trim", action="store_true", help="call glibc's malloc_trim(0) after every answer")
    args = parser.parse_args()

    from moe_tui.chat.generation import GenerationSettings
    from moe_tui.offload import OffloadConfig, memory, offload_model

    engine = offload_model(
        shaped_model("mixtral-8x7b"), OffloadConfig(cache_size=2, prefetch=1), progress=lambda *a: None
    )
    session = answering_session(engine, "mixtral-8x7b")
    settings = GenerationSettings(temperature=0, max_new_tokens=4)
    process = psutil.Process()
    session.generate(question(20), settings, lambda _: None)
    start = process.memory_info().rss
    words = random.Random(0)
    for answer in range(1, args.answers + 1):
        session.generate(question(words.randint(10, 250)), settings, lambda _: None)
        if args.trim:
            memory.hand_back_freed()
        if answer % 5 == 0:
            grown = (process.memory_info().rss - start) / 2**20
            print(f"after {answer:3d} answers: RSS {grown:5.0f} MiB above the start", flush=True)


if __name__ == "__main__":
    main()
