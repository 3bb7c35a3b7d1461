"""The start-up benchmark's measuring child, run once: it must still drive the real app to a loaded model.

It rotted twice unseen: ``LaunchOptions`` lost its ``device`` argument, then the loading screen lost its id,
and the tmux measure waited for a status text the app no longer showed (three minutes per run, in vain).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_startup_benchmark_times_the_real_app_to_a_loaded_model(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "MOE_TUI_BENCH_T0": repr(time.time()),
        "MOE_TUI_DATA_DIR": str(tmp_path / "data"),
        "MOE_TUI_CONFIG_DIR": str(tmp_path / "config"),
        "MOE_TUI_CACHE_DIR": str(tmp_path / "cache"),
    }
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "tui_startup.py"), "--child"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]  # also fails when a screen lost the text tmux waits for
    times = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0 < times["first screen"] <= times["interactive"] <= times["model ready"]
