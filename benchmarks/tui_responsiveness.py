"""The dashboard's cost while the demo model generates: decode speed vs headless, redraw rate, key latency.

One process loads the bundled demo model twice through the real chat session (same offload settings):

* ``headless``: the engine and chat session with no UI and no trace file, as a script would use them;
* ``dashboard``: the app as shipped (``MoeTuiApp`` with its real loader, so the session records its
  temporary trace for the cache lab), in Textual's headless driver at 160x48, every panel shown, the
  system probe sampling once a second.

Runs alternate (headless, dashboard, headless, ...) so machine drift hits both alike; besides the ratio of the
medians, the median of each back-to-back pair's ratio is reported (steadier on a shared machine). Each run answers the
same prompt greedily with ``--tokens`` new tokens; decode speed is (pieces - 1) / (time of the last piece -
time of the first piece), i.e. without the prefill. During every dashboard run this script also:

* counts panel redraws (each panel's own counter) and snapshot versions per second.

Then three more dashboard runs type a key into the prompt every 50 ms while the answer streams and measure
how long the app takes to put each key in the text (kept apart so typing does not count against speed).

Usage: ``python benchmarks/tui_responsiveness.py [--runs 5] [--tokens 96] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROMPT = "What does a list comprehension do?"
KEY_RUNS = 3


def decode_rate(times: list[float]) -> float:
    """Pieces per second between the first and the last piece."""
    if len(times) < 2 or times[-1] <= times[0]:
        return 0.0
    return (len(times) - 1) / (times[-1] - times[0])


def headless_run(session, settings) -> float:
    """One answer with no UI; returns decode pieces/s."""
    times: list[float] = []
    session.generate([{"role": "user", "content": PROMPT}], settings, lambda piece: times.append(time.perf_counter()))
    return decode_rate(times)


async def dashboard_run(app, pilot, type_keys: bool) -> dict[str, object]:
    """One answer in the running app (typing into the prompt meanwhile when ``type_keys``): speed, redraws,
    key latencies."""
    from textual import events

    from moe_tui.tui.widgets.chat import PromptInput
    from moe_tui.tui.widgets.panel import SnapshotView

    screen = app.main
    backend = screen.backend
    times: list[float] = []
    original = backend.generate
    running = threading.Event()
    finished = threading.Event()

    def timed(messages, settings, on_text, stop_event):
        def on_piece(piece: str) -> None:
            times.append(time.perf_counter())
            on_text(piece)

        running.set()
        try:
            return original(messages, settings, on_piece, stop_event)
        finally:
            finished.set()

    backend.generate = timed
    await pilot.press("ctrl+n")
    prompt = screen.query_one(PromptInput)
    prompt.focus()
    prompt.text = PROMPT
    views = list(screen.query(SnapshotView))
    redraws_before = [view.redraws for view in views]
    version_before = backend.snapshot().version
    app._driver.send_message(events.Key("ctrl+j", None))
    deadline = time.perf_counter() + 60
    while not running.is_set():
        if time.perf_counter() > deadline:
            raise RuntimeError("the dashboard never started generating")
        await asyncio.sleep(0.001)
    started = time.perf_counter()
    latencies: list[float] = []
    while not finished.is_set() and not type_keys:
        await asyncio.sleep(0.005)
    while not finished.is_set():
        before = prompt.text
        sent = time.perf_counter()
        app._driver.send_message(events.Key("z", "z"))
        while prompt.text == before and time.perf_counter() - sent < 5:
            await asyncio.sleep(0.0005)
        if prompt.text != before:
            latencies.append(time.perf_counter() - sent)
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    while screen.generating:
        await asyncio.sleep(0.01)
    backend.generate = original
    prompt.text = ""
    redraws = [view.redraws - before for view, before in zip(views, redraws_before, strict=True)]
    return {
        "decode_tok_s": decode_rate(times),
        "seconds": elapsed,
        "max_panel_redraws_per_s": max(redraws) / elapsed,
        "panel_redraws_per_s": {
            type(view).__name__: count / elapsed for view, count in zip(views, redraws, strict=True)
        },
        "snapshot_versions_per_s": (backend.snapshot().version - version_before) / elapsed,
        "key_latencies_ms": [latency * 1000 for latency in latencies],
    }


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="moe-tui-bench-")
    os.environ["MOE_TUI_DATA_DIR"] = f"{home}/data"
    os.environ["MOE_TUI_CONFIG_DIR"] = f"{home}/config"
    sys.path.insert(0, str(REPO))

    from moe_tui import config
    from moe_tui.chat.generation import GenerationSettings
    from moe_tui.chat.session import ChatSession
    from moe_tui.offload import OffloadConfig
    from moe_tui.tui.app import MoeTuiApp
    from moe_tui.tui.backend import LaunchOptions

    offload = {"cache_size": 2, "prefetch": 1, "device": "cpu"}
    settings = GenerationSettings(temperature=0.0, max_new_tokens=args.tokens)
    config.save_settings(config.Settings(generation={"temperature": 0.0, "max_new_tokens": args.tokens}))
    session = ChatSession.load(None, OffloadConfig(**offload))
    headless_run(session, settings)  # warm-up
    app = MoeTuiApp(LaunchOptions(engine=OffloadConfig(**offload)))
    load_before = os.getloadavg()
    headless: list[float] = []
    dashboard: list[dict[str, object]] = []
    typing: list[dict[str, object]] = []

    async def drive() -> None:
        async with app.run_test(size=(160, 48)) as pilot:
            while app.main is None or not app.main.backend.can_chat:
                await asyncio.sleep(0.05)
            await dashboard_run(app, pilot, type_keys=False)  # warm-up
            for _ in range(args.runs):
                worker = threading.Thread(target=lambda: headless.append(headless_run(session, settings)))
                worker.start()
                while worker.is_alive():  # keep the app's loop alive but idle while the headless run goes
                    await asyncio.sleep(0.05)
                dashboard.append(await dashboard_run(app, pilot, type_keys=False))
            for _ in range(KEY_RUNS):
                typing.append(await dashboard_run(app, pilot, type_keys=True))

    asyncio.run(drive())
    load_after = os.getloadavg()
    session.close()
    latencies = [latency for run in typing for latency in run["key_latencies_ms"]]
    dash_rates = [run["decode_tok_s"] for run in dashboard]
    summary = {
        "tokens": args.tokens,
        "runs": args.runs,
        "offload": offload,
        "headless_decode_tok_s": headless,
        "dashboard_decode_tok_s": dash_rates,
        "ratio_of_medians": statistics.median(dash_rates) / statistics.median(headless),
        "median_pairwise_ratio": statistics.median(d / h for d, h in zip(dash_rates, headless, strict=True)),
        "max_panel_redraws_per_s": max(run["max_panel_redraws_per_s"] for run in dashboard),
        "snapshot_versions_per_s_median": statistics.median(run["snapshot_versions_per_s"] for run in dashboard),
        "key_latency_ms": {
            "count": len(latencies),
            "median": statistics.median(latencies),
            "p95": percentile(latencies, 0.95),
            "max": max(latencies),
        },
        "decode_tok_s_while_typing": [run["decode_tok_s"] for run in typing],
        "runs_detail": dashboard + typing,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "cpus": os.cpu_count(),
    }
    print(f"machine: {os.cpu_count()} CPUs, load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print(f"demo model, k=2, prefetch 1, CPU, greedy, {args.tokens} new tokens, {args.runs} runs each (interleaved)")
    print(f"decode tok/s headless : median {statistics.median(headless):.1f}  {[round(r, 1) for r in headless]}")
    print(f"decode tok/s dashboard: median {statistics.median(dash_rates):.1f}  {[round(r, 1) for r in dash_rates]}")
    print(
        f"dashboard / headless  : {summary['ratio_of_medians']:.2f} (ratio of medians),"
        f" {summary['median_pairwise_ratio']:.2f} (median of the back-to-back pairs' ratios)"
    )
    print(
        f"panel redraws/s (max over panels and runs): {summary['max_panel_redraws_per_s']:.1f};"
        f" snapshot versions/s (median): {summary['snapshot_versions_per_s_median']:.0f}"
    )
    key = summary["key_latency_ms"]
    print(
        f"key latency while generating: median {key['median']:.1f} ms, p95 {key['p95']:.1f} ms,"
        f" max {key['max']:.1f} ms ({key['count']} keys;"
        f" decode meanwhile {[round(run['decode_tok_s'], 1) for run in typing]} tok/s)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
