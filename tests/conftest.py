"""Shared test set-up: no network, no writes outside temporary directories, small thread counts."""

from __future__ import annotations

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the history database, settings, quantized stores and the Hugging Face cache every test sees in fresh
    temporary directories (so no model of this machine's own cache shows up in a test)."""
    import huggingface_hub.constants

    base = tmp_path_factory.mktemp("user")
    monkeypatch.setenv("MOE_TUI_DATA_DIR", str(base / "data"))
    monkeypatch.setenv("MOE_TUI_CONFIG_DIR", str(base / "config"))
    monkeypatch.setenv("MOE_TUI_CACHE_DIR", str(base / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(base / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(base / "hub"))
