"""The top-level command: subcommands listed, the default subcommand, and bad input as one line with exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moe_tui import __version__, cli, engine_config

ROOT = Path(__file__).resolve().parent.parent


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in cli.SUBCOMMANDS:
        assert name in out
    assert "default" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"moe-tui {__version__}"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], ["chat"]),
        (["--theme", "moe-light"], ["chat", "--theme", "moe-light"]),
        (["params", "mixtral-8x7b"], ["params", "mixtral-8x7b"]),
        (["-h"], ["-h"]),
    ],
)
def test_chat_is_the_default_subcommand(argv: list[str], expected: list[str]) -> None:
    assert cli._with_default_subcommand(argv) == expected


def test_every_subcommand_parses_its_own_help(capsys: pytest.CaptureFixture[str]) -> None:
    for name in cli.SUBCOMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([name, "--help"])
        assert exit_info.value.code == 0
        assert f"moe-tui {name}" in capsys.readouterr().out


def test_an_unknown_option_is_named_under_its_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["ask", "--bogus", "hi"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "moe-tui ask: error: unrecognized arguments: --bogus" in err and "usage: moe-tui ask" in err


def test_params_and_plan_take_the_model_either_way(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["params", "mixtral-8x7b", "--json"]) == 0
    positional = capsys.readouterr().out
    assert cli.main(["params", "--model", "mixtral-8x7b", "--json"]) == 0
    assert capsys.readouterr().out == positional
    assert cli.main(["params", "mixtral-8x7b", "--model", "mixtral-8x7b", "--depth", "0"]) == 0, "the same twice"
    capsys.readouterr()
    for argv, message in [
        (
            ["plan", "mixtral-8x7b", "--model", "olmoe-1b-7b"],
            "two models given, mixtral-8x7b and olmoe-1b-7b: give one",
        ),
        (["plan"], "which model? give one as MODEL or --model (see --help)"),
        (["params"], "which model? give one as MODEL or --model (see --help)"),
    ]:
        assert cli.main(argv) == 2
        assert capsys.readouterr().err == f"moe-tui: error: {message}\n"


def test_user_error_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "config.json"
    assert cli.main(["params", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moe-tui: error: ")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_unknown_option_exits_2_without_a_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "moe_tui", "params", "mixtral-8x7b", "--no-such-option"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "unrecognized arguments: --no-such-option" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA device")
@pytest.mark.parametrize("command", [["ask", "hi"], ["bench", "--tokens", "2", "--runs", "1"]])
@pytest.mark.parametrize(("cuda_build", "reason"), [(None, "CPU-only build"), ("12.8", "finds no CUDA device")])
def test_device_cuda_without_a_gpu_says_why_in_one_line(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
    cuda_build: str | None,
    reason: str,
) -> None:
    """``ask`` and ``bench`` give the same message, and it tells a CPU-only PyTorch from a missing driver."""
    monkeypatch.setattr(torch.version, "cuda", cuda_build)
    assert cli.main([*command, "--device", "cuda"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("moe-tui: error: --device cuda was asked for, but ") and reason in line
    assert line.endswith("; use --device cpu")


def test_the_command_line_settles_the_cuda_allocator_before_anything_starts_cuda(monkeypatch, tmp_path: Path) -> None:
    """PyTorch reads its allocator's configuration as CUDA starts, so ``moe-tui`` sets it first of all."""
    for name in engine_config.ALLOCATOR_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["cache", "--json", "--dir", str(tmp_path)]) == 0
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
