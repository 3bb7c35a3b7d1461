"""Record the routing traces shipped in ``samples/traces/`` from the bundled demo model.

One trace per prompt set in ``samples/prompts/`` (built-in functions, the language, off-topic chat): each
prompt is a chat turn answered greedily with 48 new tokens by the offloading engine at k=2 with one-expert
prefetch, so the trace holds real routing, the engine's hits and misses, and its prefetch guesses (which
``moe-tui lab`` replays as ``lru+prefetch``). The first prompt also serves as the warm-up and appears twice.

Usage: ``python benchmarks/record_traces.py`` (about a minute per trace on 2 CPU cores).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROMPT_SETS = ("python-builtins", "python-language", "off-topic")
CONFIG = "k=2,prefetch=1"
NEW_TOKENS = 48


def record(name: str) -> Path:
    """Record the trace of one prompt set; returns its path."""
    target = REPO / "samples" / "traces" / f"demo-{name}.jsonl"
    target.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "moe_tui", "bench",
        "--config", CONFIG, "--record", str(target),
        "--prompts", str(REPO / "samples" / "prompts" / f"{name}.txt"),
        "--tokens", str(NEW_TOKENS), "--runs", "1", "--json",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    subprocess.run(command, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    return target


def main() -> None:
    """Record every prompt set's trace."""
    for name in PROMPT_SETS:
        path = record(name)
        print(f"recorded {path.relative_to(REPO)} ({path.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
