"""How much one streamed piece costs the chat history: ``HistoryStore.append_to_message`` commits every piece.

Prints the median time per append (over several runs) while one answer grows piece by piece, for answers of
several lengths, next to the same loop with ``synchronous=FULL`` (an fsync per commit) as the baseline that a
naive durable store would pay. Run: ``.venv/bin/python benchmarks/chat_history_append.py``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

from moe_tui.chat.history import HistoryStore

PIECE = "word "


def time_appends(pieces: int, synchronous: str) -> float:
    """Seconds per append while one assistant message grows to ``pieces`` pieces, in a fresh database."""
    with tempfile.TemporaryDirectory() as directory, HistoryStore(Path(directory) / "history.sqlite3") as store:
        store._connection.execute(f"PRAGMA synchronous={synchronous}")
        chat = store.create_conversation()
        store.add_message(chat.id, "user", "question")
        answer = store.add_message(chat.id, "assistant")
        started = time.perf_counter()
        for _ in range(pieces):
            store.append_to_message(answer.id, PIECE)
        return (time.perf_counter() - started) / pieces


def main() -> None:
    """Measure and print one line per answer length."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--lengths", type=int, nargs="+", default=[200, 2000, 20000])
    args = parser.parse_args()
    print(f"# {platform.platform()}, Python {platform.python_version()}, median of {args.runs} runs")
    print("pieces  answer_kB  us/append(NORMAL, used)  us/append(FULL, fsync)  ratio")
    for length in args.lengths:
        normal = statistics.median(time_appends(length, "NORMAL") for _ in range(args.runs))
        full = statistics.median(time_appends(length, "FULL") for _ in range(max(1, args.runs // 2)))
        kilobytes = length * len(PIECE) / 1000
        print(f"{length:6d}  {kilobytes:9.1f}  {normal * 1e6:23.1f}  {full * 1e6:22.1f}  {full / normal:5.1f}x")


if __name__ == "__main__":
    main()
