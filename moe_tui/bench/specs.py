"""Inputs of a benchmark: the prompt file and the configurations to compare (``k=2,prefetch=1,...``).

A configuration is ``resident``, ``hf-offload`` or the engine's settings as ``key=value`` pairs joined by commas;
``k`` may be one number per MoE layer, its list continuing after the comma (``k=3,2,2,2,prefetch=1``), so that
the list ``moe-tui plan --trace`` prints can be pasted after ``k=``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from moe_tui.engine_config import OffloadConfig
from moe_tui.errors import UserError
from moe_tui.paths import SAMPLES_DIR

DEFAULT_PROMPTS = SAMPLES_DIR / "prompts" / "bench.txt"
DEFAULT_COMPARE = ("resident", "k=E", "k=2", "k=2,prefetch=1", "k=4", "hf-offload")
BASELINES = ("resident", "hf-offload")
_SPEC_KEYS = {
    "k", "prefetch", "policy", "bits", "attn-bits", "group", "store", "miss", "fused", "optimize", "telemetry",
    "record",
}  # fmt: skip
SPEC_FORM = (
    "k=N[,prefetch=P][,policy=lru][,bits=B][,attn-bits=B][,group=G][,store=ram|mmap][,miss=copy|host|auto]"
    "[,fused=on|off][,optimize=on|off|auto][,telemetry=on|off][,record=on|off] (k=3,2,2,...: one k per MoE layer)"
)


# ----------------------------------------------------------------------------------------------- inputs
def load_prompts(path: str | os.PathLike[str]) -> list[str]:
    """The prompts of a prompt file: one per line, blank lines and ``#`` comments skipped; UserError if none."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"prompt file {path} is not UTF-8 text") from None
    except OSError as error:
        raise UserError(f"cannot read prompt file {path}: {error.strerror or error}") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise UserError(f"prompt file {path} holds no prompts (one per line; # starts a comment)")
    return prompts


@dataclass(frozen=True)
class Spec:
    """One configuration to benchmark (see the module docstring for the text form). ``engine`` holds the
    engine's settings for kind ``engine`` (the run fills in its device, dtype, trace file and quantized-store
    directory); the baselines have none."""

    label: str
    kind: str  # "resident" | "hf-offload" | "engine"
    engine: OffloadConfig | None = None
    record: bool = False
    trace_path: Path | None = None  # where a recorded trace goes (record=on without it: a temporary file)


def parse_spec(text: str, num_experts: int, group_size: int = 64) -> Spec:
    """Read one configuration (``resident``, ``hf-offload`` or ``k=...,key=value``); UserError when malformed.

    The keys are the engine's settings under short names (``bits`` is ``expert_bits``, ``group`` is
    ``group_size``, ``optimize`` is ``quant_optimize``), checked by :class:`~moe_tui.engine_config.OffloadConfig`;
    ``group_size`` is the group size of a configuration that names none. Unlike ``chat``, prefetch is off unless
    asked for, so ``k=2`` measures the cache alone.
    """
    text = text.strip()
    if text in BASELINES:
        return Spec(label=text, kind=text)
    values = _pairs(text)
    if "k" not in values:
        raise UserError(f"configuration {text!r} needs k=N (slots per MoE layer, or k=E for all experts)")
    every = values["k"].upper() == "E"
    sizes = [num_experts] if every else [_whole(k, "k", text) for k in values["k"].split(",")]
    if not all(1 <= k <= num_experts for k in sizes):
        raise UserError(f"configuration {text!r}: k must be 1..{num_experts} (this model's experts per layer)")
    label = text.replace("k=E", f"k={num_experts}") if every else text
    optimize = values.get("optimize", "auto")
    try:
        engine = OffloadConfig(
            cache_size=sizes[0] if len(sizes) == 1 else sizes,
            prefetch=_whole(values.get("prefetch", "0"), "prefetch", text),
            policy=values.get("policy", "lru"),
            expert_bits=_whole(values["bits"], "bits", text) if "bits" in values else None,
            attn_bits=_whole(values["attn-bits"], "attn-bits", text) if "attn-bits" in values else None,
            group_size=_whole(values["group"], "group", text) if "group" in values else group_size,
            store=values.get("store", "ram"),
            miss=values.get("miss", "copy").lower(),
            fused=_switch(values.get("fused", "on"), "fused", text),
            quant_optimize=None if optimize == "auto" else _switch(optimize, "optimize", text),
            telemetry=_switch(values.get("telemetry", "on"), "telemetry", text),
        )
    except UserError as error:
        if str(error).startswith("configuration "):
            raise
        raise UserError(f"configuration {text!r}: {error}") from None
    return Spec(label=label, kind="engine", engine=engine, record=_switch(values.get("record", "off"), "record", text))


def _pairs(text: str) -> dict[str, str]:
    """The ``key=value`` pairs of an engine configuration; bare numbers after ``k=`` extend its list."""
    values: dict[str, str] = {}
    key = ""
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name, value = name.strip().lower(), value.strip()
        if not sep and key == "k" and name.isdigit():
            values["k"] += f",{name}"
            continue
        if not sep or name not in _SPEC_KEYS or not value:
            raise UserError(f"cannot read configuration {text!r}: write resident, hf-offload, or {SPEC_FORM}")
        if name in values:
            raise UserError(f"configuration {text!r} sets {name} twice")
        key = name
        values[name] = value
    return values


def _whole(value: str, key: str, text: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UserError(f"configuration {text!r}: {key} must be a whole number, not {value!r}") from None


def _switch(value: str, key: str, text: str) -> bool:
    if value.lower() not in ("on", "off"):
        raise UserError(f"configuration {text!r}: {key} must be on or off, not {value!r}")
    return value.lower() == "on"
