"""The trace file: reading (every record checked against the header and the records before it) and the record
format the live aggregate writes."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from moe_tui.errors import UserError
from moe_tui.telemetry.events import (
    SCHEMA_VERSION,
    ConfigEvent,
    LayerStep,
    TokenEvent,
    TraceError,
    TraceEvent,
    TraceHeader,
)

# How a JSON value becomes a field of each annotated type (the records' dataclasses are the only list of fields).
_CONVERT: dict[str, Callable[[Any], Any]] = {
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "tuple[int, ...]": lambda values: tuple(int(v) for v in values),
    "tuple[float, ...]": lambda values: tuple(float(v) for v in values),
    "tuple[bool, ...]": lambda values: tuple(bool(v) for v in values),
    "tuple[int | None, ...]": lambda values: tuple(None if v is None else int(v) for v in values),
}
# Fields the live engine stamps itself (``time.time()``) that a trace may leave out: read as 0.
_ABSENT_AS = {"time": 0.0}


def from_record(cls: type, record: dict[str, Any]) -> Any:
    """An instance of the record dataclass ``cls`` from a JSON object: every field converted by its annotated
    type, a field left out taking its default (KeyError naming a required one); other keys are ignored."""
    values = {}
    for item in fields(cls):
        if item.name in record:
            values[item.name] = _CONVERT[item.type](record[item.name])
        elif item.name in _ABSENT_AS:
            values[item.name] = _ABSENT_AS[item.name]
        elif item.default is MISSING and item.default_factory is MISSING:
            raise KeyError(item.name)
    return cls(**values)


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, tuple) else value for key, value in record.items()}


def read_trace(path: str | Path, notes: list[str] | None = None) -> tuple[TraceHeader, list[TraceEvent]]:
    """Read a whole trace file (``-``: standard input); raises :class:`TraceError` naming the file and line on any
    problem.

    Every record is checked against the header and the records before it (see :func:`_check_step`). A last
    line cut off in the middle (a recording killed mid-write: no newline, not valid JSON) is left out and the
    rest is read; a sentence saying so is appended to ``notes`` when given.
    """
    if str(path) == "-":
        try:
            header, events = _parse_trace(sys.stdin, "stdin", notes if notes is not None else [])
            return header, list(events)
        except UnicodeDecodeError:
            raise TraceError("stdin is not a text trace") from None
    path = Path(path)
    try:
        if path.is_dir():
            raise TraceError(f"{path} is a directory, not a trace file{_traces_in(path)}")
        with path.open(encoding="utf-8") as handle:
            header, events = _parse_trace(handle, str(path), notes if notes is not None else [])
            return header, list(events)
    except OSError as error:
        raise TraceError(f"cannot read trace {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise TraceError(f"{path} is not a text trace file") from None


def _traces_in(directory: Path, shown: int = 4) -> str:
    """``" (traces in it: a.jsonl, b.jsonl)"``, naming up to ``shown`` of its ``*.jsonl`` files; empty if none."""
    try:
        names = sorted(entry.name for entry in directory.glob("*.jsonl") if entry.is_file())
    except OSError:
        return ""
    if not names:
        return ""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f" (traces in it: {', '.join(names[:shown])}{more})"


def check_new_trace_path(path: str | Path) -> None:
    """UserError when a new trace cannot be written at ``path`` (``--record``, checked before a model loads): a
    file already there (an earlier recording is not overwritten), or a folder that is missing or not writable."""
    target = Path(path).expanduser()
    if target.exists():
        raise UserError(f"{target} already exists: --record writes a new trace, so choose another name")
    folder = target.parent
    if not folder.is_dir():
        raise UserError(f"cannot write the trace file {target}: there is no folder {folder}")
    if not os.access(folder, os.W_OK):
        raise UserError(f"cannot write the trace file {target}: the folder {folder} is not writable")


def parse_trace_lines(
    lines: Iterable[str], name: str, notes: list[str] | None = None
) -> tuple[TraceHeader, Iterator[TraceEvent]]:
    """The header and a lazy iterator of checked events of trace ``lines`` (each with its newline); ``name``
    names the source in errors. A cut-off last line is skipped with a note (see :func:`read_trace`)."""
    return _parse_trace(lines, name, notes if notes is not None else [])


def _parse_trace(lines: Iterable[str], name: str, notes: list[str]) -> tuple[TraceHeader, Iterator[TraceEvent]]:
    iterator = iter(enumerate(lines, start=1))
    header: TraceHeader | None = None
    for number, line in iterator:
        if line.strip():
            header = _parse_header(_load_line(line, name, number), name, number)
            break
    if header is None:
        raise TraceError(f"{name} is empty: a trace starts with a header line")
    return header, _parse_events(iterator, header, name, notes)


def _parse_events(
    iterator: Iterator[tuple[int, str]], header: TraceHeader, name: str, notes: list[str]
) -> Iterator[TraceEvent]:
    order = _StepOrder(header)
    for number, line in iterator:
        if not line.strip():
            continue
        try:
            record = _load_line(line, name, number)
        except TraceError:
            if line.endswith("\n"):
                raise
            notes.append(
                f"{name}: line {number} is cut off (a recording stopped mid-line); read up to line {number - 1}"
            )
            return
        kind = record.pop("type", None)
        try:
            if kind == "step":
                event: TraceEvent = _parse_step(record, header)
                order.check(event)
            elif kind == "token":
                event = from_record(TokenEvent, record)
            elif kind == "config":
                event = from_record(ConfigEvent, record)
                order.configure(event)
            elif kind == "header":
                raise ValueError("a second header (traces cannot be concatenated)")
            else:
                raise ValueError(f"unknown record type {kind!r}")
        except (KeyError, TypeError, ValueError) as error:
            detail = f"missing field {error}" if isinstance(error, KeyError) else str(error)
            raise TraceError(f"{name}, line {number}: {detail}") from None
        yield event


def _parse_step(record: dict[str, Any], header: TraceHeader) -> LayerStep:
    step = from_record(LayerStep, record)
    if not 0 <= step.layer < header.num_layers:
        raise ValueError(f"layer {step.layer} is outside this model's {header.num_layers} MoE layers")
    lengths = {len(step.experts), len(step.counts), len(step.weights), len(step.hits), len(step.prefetch_hits)}
    if len(lengths) != 1:
        raise ValueError("experts, counts, weights, hits and prefetch_hits must have the same length")
    if step.host and (
        len(step.host) != len(step.experts) or any(h and hit for h, hit in zip(step.host, step.hits, strict=True))
    ):
        raise ValueError("host must be empty or one flag per expert, set only where hits is false")
    held = [s for s in step.slots if s is not None]
    for expert in (*step.experts, *step.prefetch_issued, *step.prefetch_guesses, *held):
        if not 0 <= expert < header.num_experts:
            raise ValueError(f"expert {expert} is outside this model's {header.num_experts} experts")
    _check_step(step, header, held)
    return step


def _check_step(step: LayerStep, header: TraceHeader, held: list[int]) -> None:
    """The rules one step must follow by itself (its order among the others: :class:`_StepOrder`)."""
    if step.n_tokens < 1:
        raise ValueError(f"n_tokens must be at least 1, not {step.n_tokens}")
    if len(set(step.experts)) != len(step.experts) or len(set(held)) != len(held):
        raise ValueError("an expert is listed twice (in experts or in slots)")
    picks = step.n_tokens * header.top_k
    if len(step.experts) > picks:
        raise ValueError(f"{len(step.experts)} experts for {step.n_tokens} token(s) at top-{header.top_k}")
    if any(count < 1 for count in step.counts) or sum(step.counts) > picks:
        raise ValueError(f"counts must be >= 1 and add up to at most n_tokens x top_k = {picks}")
    if any(used and not hit for used, hit in zip(step.prefetch_hits, step.hits, strict=True)):
        raise ValueError("a prefetch hit must also be a hit")
    if any(not math.isfinite(w) or w < 0 for w in step.weights):
        raise ValueError("weights must be finite and not negative")
    if step.bytes_loaded < 0 or step.load_s < 0 or step.compute_s < 0:
        raise ValueError("bytes_loaded, load_s and compute_s cannot be negative")


class _StepOrder:
    """Steps must come in order: step numbers never go back, each layer at most once per step, and a layer
    never holds more slots than its cache size at the time (from the header and config records)."""

    def __init__(self, header: TraceHeader):
        self.sizes = list(header.cache_size)
        self.step = 0
        self.layers: set[int] = set()

    def configure(self, event: ConfigEvent) -> None:
        """Cache sizes change from here on."""
        if len(event.cache_size) != len(self.sizes):
            raise ValueError(f"cache_size has {len(event.cache_size)} entries for {len(self.sizes)} layers")
        self.sizes = list(event.cache_size)

    def check(self, step: LayerStep) -> None:
        """Raise ValueError when ``step`` is out of order or overfills its layer's slots."""
        if step.step < self.step:
            raise ValueError(f"step {step.step} comes after step {self.step}: steps must not go back")
        if step.step > self.step:
            self.step, self.layers = step.step, set()
        if step.layer in self.layers:
            raise ValueError(f"layer {step.layer} appears twice in step {step.step}")
        self.layers.add(step.layer)
        if len(step.slots) > self.sizes[step.layer]:
            raise ValueError(
                f"{len(step.slots)} slots listed for layer {step.layer}, whose cache holds {self.sizes[step.layer]}"
            )


def _parse_header(record: dict[str, Any], name: str, number: int) -> TraceHeader:
    if record.get("type") != "header":
        raise TraceError(f"{name}, line {number}: a trace starts with a header line, found {record.get('type')!r}")
    if record.get("schema") != SCHEMA_VERSION:
        raise TraceError(f"{name}: trace schema {record.get('schema')!r} is not supported (expected {SCHEMA_VERSION})")
    try:
        return from_record(TraceHeader, record)
    except KeyError as error:
        raise TraceError(f"{name}, line {number}: header is missing field {error}") from None
    except (TypeError, ValueError) as error:
        raise TraceError(f"{name}, line {number}: {error}") from None


def _load_line(line: str, name: str, number: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise TraceError(f"{name}, line {number}: not valid JSON ({error.msg})") from None
    if not isinstance(record, dict):
        raise TraceError(f"{name}, line {number}: expected a JSON object")
    return record
