"""The machine a benchmark ran on and the report it writes: typed results, as a table or as JSON."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from moe_tui.bench.measure import Result, Settings
from moe_tui.bench.models import BenchModel


# ----------------------------------------------------------------------------------------------- machine
@dataclass(frozen=True)
class Machine:
    """CPU model, cores, RAM, GPU (if any) and library versions."""

    cpu: str
    cores: int | None
    torch_threads: int
    ram_bytes: int
    gpu: str | None
    gpu_bytes: int | None
    os: str
    python: str
    torch: str
    transformers: str

    def describe(self) -> str:
        """One line for the report's head."""
        from moe_tui.precision import format_bytes

        gpu = f"{self.gpu} ({format_bytes(self.gpu_bytes or 0)})" if self.gpu else "no GPU"
        return (
            f"{self.cpu}, {self.cores} cores, {format_bytes(self.ram_bytes)} RAM, {gpu}; "
            f"torch {self.torch} ({self.torch_threads} threads), transformers {self.transformers}"
        )


def describe_machine() -> Machine:
    """The machine this process runs on."""
    import psutil
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return Machine(
        cpu=cpu,
        cores=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        ram_bytes=psutil.virtual_memory().total,
        gpu=gpu,
        gpu_bytes=torch.cuda.get_device_properties(0).total_memory if gpu else None,
        os=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        torch=torch.__version__,
        transformers=transformers.__version__,
    )


def tiers_note(device: str) -> str:
    """Which memory tiers are real on this run, said plainly."""
    if device == "cuda":
        return "fast tier: GPU memory; slow tier: pinned host RAM; copies cross the host-to-GPU bus"
    return (
        "fast tier and slow tier are both host RAM on this CPU-only run: an expert copy is a memcpy within RAM, "
        "not a bus transfer, so what the engine shows here is exact cache behaviour, not a GPU's speed-up"
    )


# ----------------------------------------------------------------------------------------------- report
@dataclass(frozen=True)
class BenchReport:
    """A benchmark's outcome: where and what it ran, and one result per configuration, in the order run."""

    machine: Machine
    model: str
    settings: Settings
    results: list[Result]
    notes: list[str]

    @property
    def tiers(self) -> str:
        """Which memory tiers were real (see :func:`tiers_note`)."""
        return tiers_note(self.settings.device)

    def decode_vs_first(self, result: Result) -> float | None:
        """A result's decode speed against the first configuration's (None when that one decoded nothing)."""
        first = self.results[0].decode_tps
        return result.decode_tps / first if first else None

    def to_dict(self) -> dict[str, Any]:
        """Everything ``--json`` prints: machine, model, settings, one entry per configuration with ratios."""
        settings = self.settings
        return {
            "machine": asdict(self.machine),
            "tiers": self.tiers,
            "model": self.model,
            "settings": {**asdict(replace(settings, prompts=[])), "prompts": len(settings.prompts)},
            "prompt_tokens": [len(p) for p in settings.prompts],
            "notes": list(self.notes),
            "results": [
                {**result.to_dict(), "decode_vs_first": self.decode_vs_first(result)} for result in self.results
            ],
        }


def report(source: BenchModel, settings: Settings, results: Sequence[Result], notes: Sequence[str] = ()) -> BenchReport:
    """The report of results measured on this machine."""
    return BenchReport(describe_machine(), source.description, settings, list(results), list(notes))


def dumps(report: BenchReport) -> str:
    """The report as indented JSON."""
    return json.dumps(report.to_dict(), indent=1)


TABLE_HEADERS = (
    "config", "experts", "decode tok/s", "x first", "prefill tok/s", "TTFT ms", "hit rate", "host/token",
    "prefetch used/issued", "recall", "moved/token", "stall ms/token", "fast tier", "slow tier", "peak RSS",
)  # fmt: skip
TABLE_LEGEND = (
    "experts: the engine's expert format (unfused: dequantized before every use); "
    "decode tok/s: median over generations of (new tokens - 1) / time after the first new token; "
    "host/token: missed experts computed on the host from the store per generated token; "
    "x first: against the first configuration; moved/token: expert bytes copied per generated token "
    "(prefill copies included); stall: time spent copying experts (0 when telemetry is off); fast tier: "
    "weights and slots kept there (CUDA: peak allocated); slow tier: expert store (hf-offload: its offload "
    "folder on disk); peak RSS: the whole process while the configuration ran."
)


def format_report(report: BenchReport) -> str:
    """The benchmark as text: machine, model, settings, then one row per configuration."""
    from moe_tui.sim.table import format_table

    settings = report.settings
    lengths = [len(p) for p in settings.prompts]
    lines = [
        f"machine: {report.machine.describe()}",
        f"model: {report.model}",
        f"runs: {len(settings.prompts)} prompts ({min(lengths)}-{max(lengths)} tokens), {settings.new_tokens} new "
        f"tokens each, {settings.runs} measured passes after a warm-up, greedy, batch 1, "
        f"device {settings.device}",
        f"tiers: {report.tiers}",
        *(f"note: {note}" for note in report.notes),
        "",
        format_table(list(TABLE_HEADERS), [_row(report, result) for result in report.results]),
        "\n" + TABLE_LEGEND,
    ]
    return "\n".join(lines)


def _row(report: BenchReport, result: Result) -> list[str]:
    from moe_tui.precision import format_bytes
    from moe_tui.sim.table import percent

    counters = result.stats
    ratio = report.decode_vs_first(result)
    stall = result.per_token("load_s")
    host = result.per_token("host")
    moved = result.per_token("bytes_loaded")
    return [
        result.label,
        result.expert_format or "-",
        f"{result.decode_tps:.2f}",
        "-" if ratio is None else f"{ratio:.2f}x",
        f"{result.prefill_tps:.1f}",
        f"{1000 * result.ttft_s:.0f}",
        "-" if counters is None else percent(counters.hit_rate),
        "-" if not host else f"{host:.1f}",
        "-" if counters is None else f"{counters.prefetch_used}/{counters.prefetch_issued}",
        "-" if counters is None or not counters.prefetch_issued else percent(counters.prefetch_recall),
        "-" if moved is None else format_bytes(moved),
        "-" if not stall else f"{1000 * stall:.1f}",
        format_bytes(result.fast_peak_bytes or result.fast_tier_bytes),
        format_bytes(result.slow_tier_bytes) if result.slow_tier_bytes else "-",
        format_bytes(result.peak_rss_bytes),
    ]
