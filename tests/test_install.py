"""A non-editable install finds its bundled demo model, configs and themes: the wheel is built from this
checkout, installed into a directory of its own and run from outside the repository (its dependencies come
from the test environment)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FIRST_SCREEN = textwrap.dedent(
    """
    import asyncio, sys
    import moe_tui
    from moe_tui.tui.app import MoeTuiApp
    from moe_tui.tui.backend import LaunchOptions

    assert moe_tui.__file__.startswith(sys.argv[1]), moe_tui.__file__

    async def main():
        app = MoeTuiApp(LaunchOptions())
        async with app.run_test(size=(100, 30)) as pilot:
            while not (app.main and app.main.backend.can_chat):
                await pilot.pause(0.1)
            print("themes", sorted(app.moe_themes))
            print("model", app.main.backend.name)

    asyncio.run(main())
    """
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout, installed into its own directory (no editable links to the repository)."""
    wheels = tmp_path_factory.mktemp("wheels")
    target = tmp_path_factory.mktemp("site")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-w", str(wheels)], check=True)
    (wheel,) = wheels.glob("moe_tui-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    return target


def run_installed(installed: Path, tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(installed), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240, check=False
    )


def test_the_installed_package_reads_its_bundled_configs(installed: Path, tmp_path: Path) -> None:
    done = run_installed(installed, tmp_path, "-m", "moe_tui", "params", "mixtral-8x7b")
    assert done.returncode == 0, done.stderr
    assert "46.70 B" in done.stdout and "12.88 B" in done.stdout


def test_the_installed_app_opens_on_its_bundled_demo_model_and_themes(installed: Path, tmp_path: Path) -> None:
    script = tmp_path / "first_screen.py"
    script.write_text(FIRST_SCREEN)
    done = run_installed(installed, tmp_path, str(script), str(installed))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "themes ['moe-contrast', 'moe-dark', 'moe-light']" in done.stdout
    assert "model demo-mixtral" in done.stdout
