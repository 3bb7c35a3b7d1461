"""How long ``moe-tui`` takes to become interactive, and to have the demo model loaded behind the loading screen.

Two measurements, each in fresh processes, ``--runs`` times (median and max reported):

* ``headless``: a child interpreter starts the real app (``MoeTuiApp`` with the real loader, demo model) in
  Textual's headless driver and reports, in seconds since the parent spawned it: ``first screen`` (the
  loading screen is up), ``interactive`` (a key sent right then has been handled: F1 opened the help screen,
  while the model loads in its worker) and ``model ready`` (the demo model loaded, the prompt enabled);
* ``tmux``: ``python -m moe_tui`` in a real terminal (a detached 120x40 tmux session), polled every 20 ms with
  ``tmux capture-pane``: ``first screen`` when the loading screen is drawn, ``interactive`` when F1 (sent at
  that moment) has drawn the help screen, ``model ready`` when the main screen says the model is ready;
  skipped when tmux is missing.

Also printed: the floor of importing Textual alone and of importing torch + transformers (what loading any
model must pay), and the machine's load average, since other processes slow everything on a shared machine.
Usage: ``python benchmarks/tui_startup.py [--runs 5] [--json benchmarks/results/tui-startup.json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
READY_TEXT = " ready · "  # the status line once the model is loaded ("demo-mixtral ready · esc stops an answer")
LOADING_TEXT = "Loading the demo model"
HELP_TEXT = "moe-tui keys"


def child() -> None:
    """Run the app headless and print when it became interactive and when the model was ready; exit 1 when a
    screen no longer shows the text the tmux measure waits for (which would then wait in vain)."""
    started = float(os.environ["MOE_TUI_BENCH_T0"])
    sys.path.insert(0, str(REPO))
    from textual import events
    from textual.widgets import Static

    from moe_tui.offload import OffloadConfig
    from moe_tui.tui.app import MoeTuiApp
    from moe_tui.tui.backend import LaunchOptions
    from moe_tui.tui.screens.help import HelpScreen
    from moe_tui.tui.screens.loading import LoadingScreen

    app = MoeTuiApp(LaunchOptions(engine=OffloadConfig(device="cpu")))
    times: dict[str, float] = {}
    unseen: list[str] = []

    def shows(screen, text: str) -> bool:
        return any(text in str(widget.content) for widget in screen.query(Static))

    async def expect(screen, text: str) -> None:
        """Note ``text`` as unseen unless ``screen`` shows it within 30 s (its widgets may still be mounting)."""
        deadline = time.monotonic() + 30
        while not shows(screen, text) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if not shows(screen, text):
            unseen.append(text)

    async def main() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            while not isinstance(app.screen, LoadingScreen):
                await asyncio.sleep(0.001)
            times["first screen"] = time.time() - started
            loading = app.screen
            app._driver.send_message(events.Key("f1", None))
            while not isinstance(app.screen, HelpScreen):
                await asyncio.sleep(0.001)
            times["interactive"] = time.time() - started
            await expect(app.screen, HELP_TEXT)  # the texts are checked after the times they would delay
            await expect(loading, LOADING_TEXT)
            await pilot.press("escape")
            while not app.main.backend.can_chat:
                await asyncio.sleep(0.005)
            times["model ready"] = time.time() - started
            await expect(app.screen, READY_TEXT)

    asyncio.run(main())
    if unseen:
        sys.exit(f"the app no longer shows {unseen}: update this script's texts")
    print(json.dumps(times))


def headless_run(env: dict[str, str]) -> dict[str, float]:
    """One fresh process; returns its times."""
    env = {**env, "MOE_TUI_BENCH_T0": repr(time.time())}
    output = subprocess.run(
        [sys.executable, __file__, "--child"], env=env, cwd=REPO, capture_output=True, text=True, check=True
    )
    return json.loads(output.stdout.strip().splitlines()[-1])


def tmux_run(env: dict[str, str]) -> dict[str, float]:
    """``python -m moe_tui`` in a detached tmux session; returns when its screens appeared."""
    session = f"moe-tui-bench-{os.getpid()}"
    exports = " ".join(f"{key}={value}" for key, value in env.items() if key.startswith("MOE_TUI_"))
    command = f"cd {REPO} && env {exports} {sys.executable} -m moe_tui chat --device cpu"
    started = time.time()
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "40", command], check=True)
    times: dict[str, float] = {}
    try:
        deadline = started + 180
        while "model ready" not in times and time.time() < deadline:
            screen = subprocess.run(
                ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True
            ).stdout
            now = time.time() - started
            if "first screen" not in times and (LOADING_TEXT in screen or READY_TEXT in screen):
                times["first screen"] = now
                subprocess.run(["tmux", "send-keys", "-t", session, "F1"], check=True)
            elif "first screen" in times and "interactive" not in times and HELP_TEXT in screen:
                times["interactive"] = now
                subprocess.run(["tmux", "send-keys", "-t", session, "Escape"], check=True)
            if READY_TEXT in screen and "interactive" in times:
                times["model ready"] = now
            time.sleep(0.02)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    return times


def floor(code: str) -> float:
    """Wall seconds of ``python -c code`` in a fresh process."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    return time.perf_counter() - started


def summary(runs: list[dict[str, float]], key: str) -> str:
    values = [run[key] for run in runs if key in run]
    if not values:
        return "n/a"
    return f"median {statistics.median(values):.2f} s, max {max(values):.2f} s ({len(values)} runs)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child()
        return
    with tempfile.TemporaryDirectory(prefix="moe-tui-bench-") as home:
        env = {**os.environ, "MOE_TUI_DATA_DIR": f"{home}/data", "MOE_TUI_CONFIG_DIR": f"{home}/config"}
        load_before = os.getloadavg()
        textual_floor = statistics.median(floor("import textual.app, textual.widgets") for _ in range(3))
        torch_floor = statistics.median(floor("import torch, transformers") for _ in range(3))
        headless = [headless_run(env) for _ in range(args.runs)]
        terminal = [tmux_run(env) for _ in range(args.runs)] if shutil.which("tmux") else []
        load_after = os.getloadavg()
    result = {
        "headless": headless,
        "tmux": terminal,
        "floor_textual_s": textual_floor,
        "floor_torch_transformers_s": torch_floor,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "cpus": os.cpu_count(),
    }
    print(f"machine: {os.cpu_count()} CPUs, load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print(f"floor: import textual {textual_floor:.2f} s, import torch + transformers {torch_floor:.2f} s")
    for name, runs in (("headless", headless), ("tmux", terminal)):
        for key in ("first screen", "interactive", "model ready"):
            if runs:
                print(f"{name:9} {key + ':':14} {summary(runs, key)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
