"""The machine a benchmark ran on and the report it writes."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from moe_tui.bench.measure import Result, Settings
from moe_tui.bench.models import BenchModel


# ----------------------------------------------------------------------------------------------- machine
def describe_machine() -> dict[str, Any]:
    """CPU model, cores, RAM, GPU (if any) and library versions, for the benchmark's output."""
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
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_bytes": psutil.virtual_memory().total,
        "gpu": gpu,
        "gpu_bytes": torch.cuda.get_device_properties(0).total_memory if gpu else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def tiers_note(device: str) -> str:
    """Which memory tiers are real on this run, said plainly."""
    if device == "cuda":
        return "fast tier: GPU memory; slow tier: pinned host RAM; copies cross the host-to-GPU bus"
    return (
        "fast tier and slow tier are both host RAM on this CPU-only run: an expert copy is a memcpy within RAM, "
        "not a bus transfer, so what the engine shows here is exact cache behaviour, not a GPU's speed-up"
    )


def report(source: BenchModel, settings: Settings, results: Sequence[Result], notes: Sequence[str] = ()) -> dict:
    """Everything ``--json`` prints: machine, model, settings, one entry per configuration with ratios."""
    first = results[0].decode_tps if results else 0.0
    entries = []
    for result in results:
        entry = result.to_dict()
        entry["decode_vs_first"] = result.decode_tps / first if first else None
        entries.append(entry)
    settings_data = replace(settings, prompts=[])
    return {
        "machine": describe_machine(),
        "tiers": tiers_note(settings.device),
        "model": source.description,
        "settings": {**asdict(settings_data), "prompts": len(settings.prompts)},
        "prompt_tokens": [len(p) for p in settings.prompts],
        "notes": list(notes),
        "results": entries,
    }


def dumps(data: dict) -> str:
    """The report as indented JSON."""
    return json.dumps(data, indent=1)
