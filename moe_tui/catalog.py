"""The models this machine can open without downloading: the bundled demo, the directories loaded before and the
local Hugging Face cache, each described for the model picker (what it is, whether moe-tui can offload it, its
total and active parameters, and what the planner suggests for this machine's memory).

Describing reads ``config.json``, checks that the weights (a safetensors file or index and its shards) and a tokenizer
are there, and builds the parameter tree on the meta device: no weight is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moe_tui import paths
from moe_tui.errors import UserError
from moe_tui.import_lock import TRANSFORMERS_IMPORTS
from moe_tui.precision import HQQ_BITS, format_bytes, format_count

QUALITY_ORDER: tuple[int | None, ...] = (None, 8, 4, 3, 2)  # expert bit widths, most faithful first


@dataclass(frozen=True)
class ModelEntry:
    """A model on this machine: what to load (``spec``: a directory or a hub id), its name, and where it was
    found (``demo``, ``recent`` or ``hub cache``)."""

    spec: str
    name: str
    directory: Path
    source: str


@dataclass(frozen=True)
class Suggestion:
    """The planner's choice for this machine: cache size k, expert bits (None: unquantized), prefetch."""

    cache_size: int
    expert_bits: int | None
    prefetch: int
    fast_bytes: int

    def describe(self) -> str:
        """``k=3 at 4 bits, prefetch 1 (12.1 GiB fast tier)``; ``no prefetch`` when it is off."""
        bits = f"{self.expert_bits} bits" if self.expert_bits else "full precision"
        prefetch = f"prefetch {self.prefetch}" if self.prefetch else "no prefetch"
        return f"k={self.cache_size} at {bits}, {prefetch} ({format_bytes(self.fast_bytes)} fast tier)"


@dataclass(frozen=True)
class ModelReport:
    """What the picker shows for one model: ``problem`` says why it cannot be offloaded ("" when it can)."""

    entry: ModelEntry
    problem: str = ""
    total: int | None = None
    active: int | None = None
    suggestion: Suggestion | None = None

    def summary(self) -> str:
        """One line: parameters and the suggestion, or the problem."""
        if self.problem:
            return self.problem
        sizes = (
            f"{format_count(self.total)} total, {format_count(self.active)} active"
            if self.total and self.active
            else ""
        )
        fit = f"fits: {self.suggestion.describe()}" if self.suggestion else "does not fit this machine's memory"
        return " · ".join(part for part in ("MoE", sizes, fit) if part)


def local_models(recent: tuple[str, ...] = ()) -> list[ModelEntry]:
    """The demo model, then the recent directories that still hold a model, then every model in the local
    Hugging Face cache (its newest snapshot), each once."""
    entries = [ModelEntry("", "demo-mixtral (bundled)", paths.DEMO_MODEL_DIR, "demo")]
    for directory in recent:
        path = Path(directory).expanduser()
        if (path / "config.json").is_file():
            entries.append(ModelEntry(str(path), path.name, path, "recent"))
    entries += _hub_cache_models()
    seen: set[Path] = set()
    unique = []
    for entry in entries:
        key = entry.directory.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(entry)
    return unique


def typed_entry(spec: str) -> ModelEntry:
    """The model a user typed (a directory or a hub id in the local Hugging Face cache), resolved and named as a
    chat session resolves and names it; :class:`UserError` in one line when it is neither."""
    from moe_tui.chat.session import resolve_model

    directory, name = resolve_model(spec)
    return ModelEntry(spec, name, directory, "typed")


def _hub_cache_models() -> list[ModelEntry]:
    try:
        from huggingface_hub import constants, scan_cache_dir

        cache = scan_cache_dir(constants.HF_HUB_CACHE)  # where snapshot_download looks (HF_HUB_CACHE, HF_HOME)
    except Exception:  # no cache directory, or one the hub library cannot read: nothing to list
        return []
    entries = []
    for repo in sorted(cache.repos, key=lambda repo: repo.repo_id.lower()):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        newest = max(repo.revisions, key=lambda revision: revision.last_modified)
        if (Path(newest.snapshot_path) / "config.json").is_file():
            entries.append(ModelEntry(repo.repo_id, repo.repo_id, Path(newest.snapshot_path), "hub cache"))
    return entries


def describe(entry: ModelEntry, host_bytes: int, gpu_bytes: int | None) -> ModelReport:
    """Read the model's config and say whether moe-tui can offload it, its parameters, and the planner's
    suggestion for ``host_bytes`` of RAM and ``gpu_bytes`` of VRAM (None: a CPU-only machine)."""
    from moe_tui.chat.session import check_model
    from moe_tui.params import build_tree
    from moe_tui.params.config import one_line

    try:
        with TRANSFORMERS_IMPORTS:  # another thread may be loading a model (and importing transformers' code)
            config = check_model(entry.directory)
            tree = build_tree(config)
            suggestion = suggest(config, host_bytes, gpu_bytes)
    except UserError as error:
        return ModelReport(entry, str(error))
    except Exception as error:  # one model's odd config must not stop the picker describing the others
        return ModelReport(entry, f"cannot read its config: {one_line(error)}")
    return ModelReport(entry, "", tree.total, tree.active, suggestion)


def suggest(config: Any, host_bytes: int, gpu_bytes: int | None) -> Suggestion | None:
    """The most faithful expert precision at which at least top-k experts per layer fit, with the largest k that
    fits there (prefetch 1 unless every expert fits, other weights unquantized); when no precision holds top-k,
    the most faithful one where any k fits. None when nothing fits. The sums are the planner's
    (:func:`moe_tui.plan.estimate`): weights, slots, KV cache, activations and margin."""
    from moe_tui import plan
    from moe_tui.precision import precision_for_bits

    try:
        facts = plan.model_facts(config)
    except UserError:
        return None
    machine = plan.Machine(host_bytes=host_bytes, fast_bytes=gpu_bytes)
    fallback = None
    for bits in QUALITY_ORDER:
        precision = precision_for_bits(bits, facts.dtype)
        if precision not in facts.expert_bytes:
            continue
        fitting = [
            candidate
            for k in range(1, facts.num_experts + 1)
            if plan.fits(candidate := plan.estimate(facts, machine, precision, facts.dtype, k, 1, (0, 0, 0)), machine)
        ]
        if not fitting:
            continue
        best = fitting[-1]
        prefetch = 0 if best.cache_size == facts.num_experts else 1  # every expert cached: nothing to guess
        suggestion = Suggestion(best.cache_size, HQQ_BITS.get(precision), prefetch, best.fast_bytes)
        if best.cache_size >= facts.top_k:
            return suggestion
        fallback = fallback or suggestion
    return fallback
