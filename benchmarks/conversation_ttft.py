"""Time to first token along a conversation, with and without the KV cache kept between turns.

The bundled demo model (k=2, prefetch 1) answers a scripted 10-turn conversation (the questions of
``samples/prompts/bench.txt``, then ``python-builtins.txt``, each answer 24 greedy tokens, every earlier turn
kept in the prompt); for each turn the time from the call to the first streamed text is measured, once with
every turn prefilled whole (``keep_kv`` off, as before) and once reusing the previous answer's cache. Both
runs happen in this process, alternating, ``--runs`` times; the medians per turn are printed::

    python benchmarks/conversation_ttft.py --runs 3 --json benchmarks/results/conversation-ttft.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
TURNS = 10


def questions() -> list[str]:
    """The first ``TURNS`` different prompts of the benchmark prompt set, then of the built-ins set."""
    found: list[str] = []
    for name in ("bench.txt", "python-builtins.txt"):
        for line in (REPO / "samples" / "prompts" / name).read_text(encoding="utf-8").splitlines():
            if line and not line.startswith("#") and line not in found:
                found.append(line)
    return found[:TURNS]


def conversation(session, keep_kv: bool, new_tokens: int) -> list[dict]:
    """Answer every question in one conversation; per turn: seconds to first text, prompt and reused tokens."""
    from moe_tui.chat.generation import GenerationSettings

    session.keep_kv = keep_kv
    session.forget_conversation()
    settings = GenerationSettings(temperature=0, max_new_tokens=new_tokens)
    turns: list[dict[str, str]] = []
    rows = []
    for question in questions():
        turns.append({"role": "user", "content": question})
        first: list[float] = []
        started = time.perf_counter()
        result = session.generate(turns, settings, lambda _, first=first: first or first.append(time.perf_counter()))
        rows.append(
            {"ttft_s": first[0] - started, "prompt_tokens": result.prompt_tokens, "reused": result.reused_tokens}
        )
        turns.append({"role": "assistant", "content": result.text})
    return rows


def main() -> None:
    """Measure and print (and optionally write JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from moe_tui.chat.session import ChatSession
    from moe_tui.offload import OffloadConfig

    session = ChatSession.load(None, OffloadConfig(cache_size=2, prefetch=1), progress=lambda *a: None)
    runs: dict[str, list[list[dict]]] = {"whole": [], "kept": []}
    conversation(session, True, args.new_tokens)  # warm-up
    for _ in range(args.runs):
        for name, keep in (("whole", False), ("kept", True)):
            runs[name].append(conversation(session, keep, args.new_tokens))
    table = []
    for turn in range(TURNS):
        row = {"turn": turn + 1, "prompt_tokens": runs["kept"][0][turn]["prompt_tokens"]}
        for name in runs:
            row[f"{name}_ttft_s"] = statistics.median(run[turn]["ttft_s"] for run in runs[name])
        row["reused"] = runs["kept"][0][turn]["reused"]
        table.append(row)
        print(
            f"turn {row['turn']:2d}: prompt {row['prompt_tokens']:4d} tokens ({row['reused']:4d} reused) · first "
            f"token {1000 * row['whole_ttft_s']:6.1f} ms prefilled whole, {1000 * row['kept_ttft_s']:6.1f} ms "
            "with the cache kept"
        )
    if args.json:
        args.json.write_text(json.dumps({"turns": table, "runs": args.runs, "threads": args.threads}, indent=1))


if __name__ == "__main__":
    main()
