"""A process killed (SIGKILL) while it writes settings, the chat history or a quantized store leaves the previous
file intact or the new one complete: never a half-written file that is read as valid."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from moe_tui import config

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "HF_HUB_OFFLINE": "1"}


def kill_when_ready(script: str, args: list[str], delay_s: float, marker: str = "READY") -> None:
    """Run ``script``, wait for it to print ``marker``, let it work ``delay_s`` more, then SIGKILL it."""
    process = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line or line.strip() == marker:
                break
        time.sleep(delay_s)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


_SETTINGS_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from moe_tui import config
    path = Path(sys.argv[1])
    versions = [
        config.Settings(theme="moe-light", keymap={"chat.stop": "ctrl+x"}),
        config.Settings(theme="moe-dark", generation={"system_prompt": "x" * 200_000}),
    ]
    config.save_settings(versions[0], path)
    print("READY", flush=True)
    n = 0
    while True:
        n += 1
        config.save_settings(versions[n % 2], path)
    """
)


@pytest.mark.parametrize("delay_s", [0.0, 0.003, 0.01, 0.03, 0.1])
def test_a_kill_during_a_settings_write_leaves_one_whole_version(tmp_path: Path, delay_s: float) -> None:
    path = tmp_path / "settings.toml"
    kill_when_ready(_SETTINGS_WRITER, [str(path)], delay_s)
    settings, warning = config.load_settings(path)
    assert warning == ""
    assert settings.theme in ("moe-light", "moe-dark")
    if settings.theme == "moe-dark":
        assert settings.generation["system_prompt"] == "x" * 200_000
    assert not list(tmp_path.glob("*.broken-*"))


_HISTORY_WRITER = textwrap.dedent(
    """
    import sys
    from moe_tui.chat.history import HistoryStore
    store = HistoryStore(sys.argv[1])
    print("READY", flush=True)
    n = 0
    while True:
        n += 1
        chat = store.create_conversation(model="m")
        store.add_message(chat.id, "user", "q" * 1000)
        answer = store.add_message(chat.id, "assistant", "")
        for _ in range(20):
            store.append_to_message(answer.id, "piece ")
        store.rename_conversation(chat.id, f"chat {n}")
    """
)


@pytest.mark.parametrize("delay_s", [0.0, 0.01, 0.05, 0.2])
def test_a_kill_during_history_writes_leaves_a_sound_database(tmp_path: Path, delay_s: float) -> None:
    from moe_tui.chat.history import HistoryStore

    path = tmp_path / "history.sqlite3"
    kill_when_ready(_HISTORY_WRITER, [str(path)], delay_s)
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    with HistoryStore(path) as store:
        for conversation in store.list_conversations():
            messages = store.messages(conversation.id)
            assert [m.role for m in messages][:1] in ([], ["user"])
            for message in messages:
                assert message.content in ("q" * 1000,) or set(message.content.split()) <= {"piece"}


_STORE_WRITER = textwrap.dedent(
    """
    import sys
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM
    from moe_tui.offload import OffloadConfig, offload_model
    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=64, hidden_size=256, intermediate_size=2048, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2)
    model = MixtralForCausalLM(config).eval()
    def progress(stage, done, total):
        if stage == "saving expert store" and done == 0:
            print("READY", flush=True)
    offload_model(model, OffloadConfig(cache_size=2, quant_cache_dir=sys.argv[1]), progress=progress)
    print("SAVED", flush=True)
    """
)


def _reference_store(cache: Path):
    """A store built in this process with the writer's weights and settings (quantized-store cache in ``cache``)."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    from moe_tui.offload import OffloadConfig, offload_model

    torch.manual_seed(0)
    config = MixtralConfig(
        vocab_size=64, hidden_size=256, intermediate_size=2048, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2,
    )  # fmt: skip
    return offload_model(MixtralForCausalLM(config).eval(), OffloadConfig(cache_size=2, quant_cache_dir=cache))


@pytest.mark.parametrize("seed", range(4))
def test_a_kill_during_a_quantized_store_write_is_never_reused_half_written(tmp_path: Path, seed: int) -> None:
    cache = tmp_path / "quantized"
    kill_when_ready(_STORE_WRITER, [str(cache)], random.Random(seed).uniform(0.0, 1.5))  # the save takes ~1 s
    reopened = _reference_store(cache)
    clean = _reference_store(tmp_path / "clean")
    assert reopened.load_info["store"] in ("reused", "built")
    for layer in range(4):
        for expert in range(8):
            assert bytes(reopened.store.row(layer, expert).numpy()) == bytes(clean.store.row(layer, expert).numpy())
