"""The model catalog: models found on this machine and the planner's suggestion for each."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from moe_tui import catalog, fit, plan
from moe_tui.params import load_config

GIB = 1024**3


def test_the_local_hugging_face_cache_is_listed_by_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--acme--tiny-moe" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "mixtral"}))
    (cache / "models--acme--tiny-moe" / "refs").mkdir()
    (cache / "models--acme--tiny-moe" / "refs" / "main").write_text("abc123")
    (cache / "models--acme--tiny-moe" / "blobs").mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    entries = catalog.local_models((str(snapshot),))  # the same directory given as a recent one: listed once
    assert [(entry.spec, entry.source) for entry in entries] == [("", "demo"), (str(snapshot), "recent")]
    entries = catalog.local_models()
    assert [(entry.spec, entry.source) for entry in entries] == [("", "demo"), ("acme/tiny-moe", "hub cache")]


def test_the_suggestion_is_the_most_faithful_precision_where_top_k_experts_fit() -> None:
    mixtral = load_config("mixtral-8x7b")
    # 24 GiB GPU, 64 GiB RAM: bf16 experts (84 GiB) do not fit the host; 8-bit ones do, with k=3.
    suggestion = catalog.suggest(mixtral, 64 * GIB, 24 * GIB)
    assert suggestion is not None and (suggestion.expert_bits, suggestion.cache_size) == (8, 3)
    facts = plan.model_facts(mixtral)
    need = plan.fast_tier_need(facts, "hqq8", facts.dtype, 3, fit.DEFAULT_CONTEXT, device="cuda").total
    assert suggestion.fast_bytes == need <= 24 * GIB
    assert plan.fast_tier_need(facts, "hqq8", facts.dtype, 4, fit.DEFAULT_CONTEXT, device="cuda").total > 24 * GIB
    # 10 GiB holds top-2 experts per layer only at 2 bits; 8 GiB nowhere, so the most faithful that fits at all.
    assert (
        catalog.suggest(mixtral, 64 * GIB, 10 * GIB).expert_bits,
        catalog.suggest(mixtral, 64 * GIB, 10 * GIB).cache_size,
    ) == (2, 3)
    assert (
        catalog.suggest(mixtral, 64 * GIB, 8 * GIB).expert_bits,
        catalog.suggest(mixtral, 64 * GIB, 8 * GIB).cache_size,
    ) == (4, 1)
    assert catalog.suggest(mixtral, 64 * GIB, 6 * GIB) is None  # nothing fits
    assert suggestion.prefetch == 1 and "prefetch 1" in suggestion.describe()
    # 120 GiB of VRAM holds every bf16 expert (84 GiB): nothing is left to prefetch.
    everything = catalog.suggest(mixtral, 200 * GIB, 120 * GIB)
    assert everything is not None and (everything.expert_bits, everything.cache_size) == (None, 8)
    assert everything.prefetch == 0 and "no prefetch" in everything.describe()


def test_models_are_described_while_another_thread_loads_one() -> None:
    """The picker's worker reads configs while the app's loading worker imports transformers and loads the demo
    model: in a fresh interpreter, with both started together, both finish (the description failed with
    "cannot import name 'AutoConfig' from 'transformers'" before they took turns)."""
    code = """
import threading
from moe_tui.catalog import describe, local_models, typed_entry
from moe_tui.tui.backend import LaunchOptions, load_backend
failures = []
def load():
    load_backend(LaunchOptions(), lambda stage, done, total: None)
def read():
    try:
        report = describe(typed_entry(str(local_models()[0].directory)), 8 << 30, None)
        failures.extend([report.problem] if report.problem else [])
    except ImportError as error:
        failures.append(str(error))
threads = [threading.Thread(target=load), threading.Thread(target=read)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(failures)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert done.stdout.strip() == "[]"


def test_a_model_directory_without_weights_or_tokenizer_is_described_as_a_problem(tmp_path: Path) -> None:
    """A directory holding only a config (``hf download ... config.json``, as for ``plan``) is listed but cannot
    be loaded: the picker says so before the model in use is unloaded, as it does for a model that is not MoE."""
    from moe_tui import paths

    model = tmp_path / "config-only"
    model.mkdir()
    shutil.copy(paths.DEMO_MODEL_DIR / "config.json", model)
    entry = catalog.typed_entry(str(model))

    def problem() -> str:
        return catalog.describe(entry, 8 * GIB, None).problem

    assert (
        problem()
        == f"{model} has no model.safetensors or model.safetensors.index.json (only safetensors checkpoints load)"
    )
    (model / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"lm_head.weight": "part-1.safetensors"}})
    )
    assert (
        problem()
        == f"{model / 'model.safetensors.index.json'} refers to part-1.safetensors, which is missing from {model}"
    )
    (model / "model.safetensors.index.json").unlink()
    (model / "model.safetensors").symlink_to(paths.DEMO_MODEL_DIR / "model.safetensors")
    assert problem().startswith(f"{model} has no tokenizer (tokenizer.json, ")
    shutil.copy(paths.DEMO_MODEL_DIR / "tokenizer.json", model)
    assert problem() == ""
