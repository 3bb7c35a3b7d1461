"""Reading a trace for a subcommand: a bad one is a one-line UserError, and what reading noticed goes to stderr."""

from __future__ import annotations

import sys
from pathlib import Path

from moe_tui.errors import UserError


def read_trace_for_command(path: str | Path) -> tuple:
    """The trace's header and events; UserError naming the line of the first bad record; notes (a cut-off last
    line) printed to stderr as ``moe-tui: note: ...``."""
    from moe_tui.telemetry import TraceError, read_trace

    notes: list[str] = []
    try:
        header, events = read_trace(path, notes)
    except TraceError as error:
        raise UserError(str(error)) from None
    for note in notes:
        print(f"moe-tui: note: {note}", file=sys.stderr)
    return header, events
