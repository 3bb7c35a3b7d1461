"""``moe-tui chat``: the dashboard, on the demo model, a model directory or hub id, or a replayed trace."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from moe_tui import engine_config
from moe_tui.commands import add_dtype_argument
from moe_tui.engine_config import OffloadConfig
from moe_tui.errors import UserError
from moe_tui.telemetry.trace import check_new_trace_path


def _checked(convert: Callable[[str], float], noun: str, valid: Callable[[float], bool], rule: str):
    """An argparse ``type`` that converts with ``convert`` and refuses values breaking ``rule`` in one line."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, not {text!r}") from None
        if not valid(value):
            raise argparse.ArgumentTypeError(f"{rule}, not {value}")
        return value

    return parse


_positive_int = _checked(int, "a whole number", lambda value: value >= 1, "must be at least 1")


def cache_sizes(text: str) -> int | list[int]:
    """An argparse ``type`` for ``--cache-size``: ``3`` for every MoE layer, or ``3,2,4,...`` one per layer (as
    ``moe-tui plan`` prints a per-layer plan)."""
    parts = [part.strip() for part in text.split(",")]
    try:
        sizes = [int(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or a comma list of them, not {text!r}") from None
    if any(k < 1 for k in sizes):
        raise argparse.ArgumentTypeError(f"every cache size must be at least 1, not {text!r}")
    return sizes[0] if len(sizes) == 1 else sizes


_non_negative_int = _checked(int, "a whole number", lambda value: value >= 0, "must be 0 or more")
_speed = _checked(float, "a number", lambda value: value > 0, "must be above 0")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the dashboard: the model and engine (:func:`add_engine_arguments`), the theme, replay and
    recording."""
    add_engine_arguments(parser)
    parser.add_argument("--theme", metavar="NAME", help="colour theme (moe-dark, moe-light, moe-contrast); remembered")
    parser.add_argument(
        "--replay", metavar="TRACE", help="drive every panel from a recorded trace, with no model ('-': stdin)"
    )
    parser.add_argument("--speed", type=_speed, default=1.0, help="replay speed (1 = as recorded; +/- in the app)")
    parser.add_argument(
        "--record",
        metavar="TRACE",
        help="write this session's routing trace (JSON Lines) to TRACE, a file not there yet",
    )


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The model and how the engine runs it: the options ``chat`` and ``ask`` share."""
    parser.add_argument(
        "--model",
        metavar="PATH_OR_HUB_ID",
        help="model directory or hub id in the local HF cache (default: demo-mixtral, the bundled demo model)",
    )
    parser.add_argument(
        "--cache-size",
        "-k",
        type=cache_sizes,
        metavar="K",
        help="expert slots per MoE layer in fast memory: one number, or a comma list with one per MoE layer",
    )
    parser.add_argument(
        "--prefetch",
        type=_non_negative_int,
        metavar="P",
        help="experts per layer to prefetch from the next layer's router (0 = off)",
    )
    parser.add_argument("--policy", choices=engine_config.POLICY_NAMES, help="cache eviction policy")
    parser.add_argument(
        "--expert-bits",
        type=int,
        choices=engine_config.EXPERT_BITS,
        metavar="B",
        help="HQQ bit width for experts (2, 3, 4, 8; default: unquantized)",
    )
    parser.add_argument(
        "--attn-bits",
        type=int,
        choices=engine_config.ATTN_BITS,
        metavar="B",
        help="HQQ bit width for attention and other layers (4, 8)",
    )
    parser.add_argument(
        "--miss",
        choices=engine_config.MISS_MODES,
        help="a missed expert is copied into a slot, computed on the host from the store, or either by a measured "
        "cost model (default: copy)",
    )
    parser.add_argument(
        "--store",
        choices=engine_config.STORES,
        help="where all experts live: host RAM (pinned with CUDA), or a memory-mapped file for stores larger than RAM",
    )
    add_dtype_argument(parser, "compute dtype; bf16, fp16 and fp32 are taken too (default: the checkpoint's own)")
    parser.add_argument("--group-size", type=_positive_int, metavar="G", help="HQQ group size (default 64)")
    parser.add_argument(
        "--quant-optimize",
        choices=("on", "off"),
        help="HQQ's optimiser when quantizing experts (default: on when quantizing on a GPU; off on a CPU, where it "
        "costs about 70x the time for 1.6 points of next-token agreement at 4 bits)",
    )
    parser.add_argument(
        "--context",
        type=_positive_int,
        metavar="TOKENS",
        help="tokens of conversation the KV cache holds; older turns are left out beyond it (default 4096, or the "
        "model's own limit when smaller)",
    )
    parser.add_argument(
        "--quant-cache",
        metavar="DIR",
        help="keep quantized expert stores here (default: the user cache directory; see `moe-tui cache`)",
    )
    parser.add_argument(
        "--no-quant-cache", action="store_true", help="quantize on every start and keep nothing on disk"
    )
    parser.add_argument(
        "--device",
        choices=engine_config.DEVICES,
        help="fast tier for the expert cache (default: auto)",
    )


def options_from_args(args: argparse.Namespace, saved: Mapping[str, Any] | None = None):
    """The app's launch options from parsed arguments (``ask``'s too: it has no replay or recording), over the
    engine settings ``saved`` in the settings file; contradictory ones raise UserError."""
    from moe_tui.tui.backend import LaunchOptions

    replay, record = getattr(args, "replay", None), getattr(args, "record", None)
    if replay and record:
        raise UserError("--record needs a model; it cannot be combined with --replay")
    if replay and args.model:
        raise UserError("choose either --model or --replay (a replay needs no model)")
    if record:
        check_new_trace_path(record)
    if args.quant_cache and args.no_quant_cache:
        raise UserError("choose either --quant-cache DIR or --no-quant-cache")
    chosen = {name: getattr(args, name) for name in engine_config.SAVED_FIELDS}  # each flag has the field's name
    chosen["quant_optimize"] = None if args.quant_optimize is None else args.quant_optimize == "on"
    flags = {name: value for name, value in chosen.items() if value is not None}
    engine = OffloadConfig(**{"device": "auto", **(saved or {}), **flags})
    return LaunchOptions(
        model=args.model,
        engine=engine,
        quant_cache=args.quant_cache,
        no_quant_cache=args.no_quant_cache,
        replay=replay,
        replay_speed=getattr(args, "speed", 1.0),
        record=record,
    )


def run(args: argparse.Namespace) -> int:
    """Start the dashboard; returns when the user quits."""
    from moe_tui import config

    settings, _ = config.load_settings()  # the app shows the file's problems once it is on screen
    options = options_from_args(args, settings.engine)
    if not sys.stdout.isatty():
        raise UserError("the dashboard needs an interactive terminal (stdout is not a TTY)")
    stdin_copy: Path | None = None
    if options.replay == "-":
        stdin_copy = _trace_from_stdin()
        options = replace(options, replay=str(stdin_copy))
    elif not _is_terminal(sys.stdin):  # the app would start and never see a key, ctrl+q included
        raise UserError(
            "the dashboard reads its keys from the terminal, but stdin is not one: run it without redirecting "
            "stdin (a question on stdin goes to `moe-tui ask -`, a trace to `moe-tui --replay -`)"
        )
    from moe_tui.tui.app import MoeTuiApp

    app = MoeTuiApp(options, theme=args.theme)

    def remove_stdin_copy() -> None:
        if stdin_copy is not None:
            shutil.rmtree(stdin_copy.parent, ignore_errors=True)

    return run_until_quit(app, remove_stdin_copy)


def run_until_quit(app: Any, cleanup: Callable[[], None] = lambda: None, **run_options: Any) -> int:
    """Run ``app`` (a Textual app with ``model_loading``) until the user quits, call ``cleanup``, and return
    its exit code; ``run_options`` go to ``app.run``.

    A model still loading when the user quits is in a worker thread that cannot be interrupted before its next
    progress report, and an import reports none: quitting during the demo's start waited 7 s with the terminal
    already given back. ``asyncio.run`` (what ``App.run`` uses by default) waits for that thread as it closes its
    loop, so the app runs on a loop of this function's own; when a load is still under way after the app has
    closed (the database, the settings, the probe: everything the user wrote is committed), the process ends at
    once, skipping the interpreter's shutdown, which would wait for the thread too; unless the load is writing a
    quantized store, which stops at its next expert and removes what it wrote (see :func:`_writing_a_store`).
    """
    loop = asyncio.new_event_loop()
    with contextlib.suppress(NotImplementedError):  # (Windows' loops take no signal handlers)
        loop.add_signal_handler(signal.SIGINT, app.exit)  # a SIGINT from outside quits, as under asyncio.run
    try:
        try:
            code = app.run(loop=loop, **run_options) or 0
        finally:
            cleanup()
        if app.model_loading and not _writing_a_store():
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())  # the app's other workers end on their own
    finally:
        loop.close()
    return code


def _writing_a_store() -> bool:
    """Whether the load is working on a saved quantized store: then it is waited for, since it stops at its next
    progress report (an expert) and removes its partial files. Asked without importing the engine, which the
    loading thread may be importing (waiting on that import would be the wait this avoids)."""
    store_lock = sys.modules.get("moe_tui.offload.store_lock")
    return store_lock is not None and store_lock.working_on_a_store()


def _is_terminal(stream: TextIO | None) -> bool:
    """Whether ``stream`` is an open terminal (False for a pipe, a file, a closed or missing stream)."""
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False


def _trace_from_stdin() -> Path:
    """Read a piped trace into a private temporary file and give the app the terminal for its keys."""
    text = sys.stdin.read()
    try:
        terminal = os.open("/dev/tty", os.O_RDONLY)
    except OSError:
        raise UserError("a trace on stdin needs a terminal for the app's keys, and this process has none") from None
    os.dup2(terminal, 0)
    os.close(terminal)
    sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115 (the process's own stdin, never closed)
    directory = Path(tempfile.mkdtemp(prefix="moe-tui-"))  # removed when the app ends (run_until_quit)
    path = directory / "stdin.jsonl"
    try:
        path.write_text(text, encoding="utf-8")
    except OSError:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return path
