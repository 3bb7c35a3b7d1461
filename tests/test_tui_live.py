"""The dashboard on the real stack: the bundled demo model through the offloading engine and chat session."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Tree
from textual.widgets.tree import TreeNode
from tui_fakes import FakeProbe
from tui_helpers import cache_slot_counts, palette, send, wait_for

from moe_tui import config, paths
from moe_tui.engine_config import OffloadConfig
from moe_tui.precision import format_bytes
from moe_tui.tui.app import MoeTuiApp
from moe_tui.tui.backend import LaunchOptions, LiveBackend, load_backend
from moe_tui.tui.widgets.chat import ChatView, MessageView
from moe_tui.tui.widgets.memory import MemoryView


def walk_tree(node: TreeNode) -> list[TreeNode]:
    """``node`` and everything under it in a Textual tree."""
    return [node, *(below for child in node.children for below in walk_tree(child))]


pytestmark = pytest.mark.skipif(
    not (paths.DEMO_MODEL_DIR / "model.safetensors").exists(), reason="the bundled demo model is not there"
)


def test_demo_model_chat_k_change_lab_and_panels(tmp_path: Path) -> None:
    config.save_settings(config.Settings(generation={"temperature": 0.0, "max_new_tokens": 12}))
    trace = tmp_path / "session.jsonl"
    options = LaunchOptions(engine=OffloadConfig(cache_size=2, prefetch=1, device="cpu"), record=str(trace))
    app = MoeTuiApp(options, loader=load_backend, probe=FakeProbe())

    async def check(pilot: Pilot) -> None:
        await wait_for(pilot, lambda: app.main is not None and app.main.backend.can_chat, timeout=120)
        screen = app.main
        backend = screen.backend
        assert isinstance(backend, LiveBackend)
        layers = backend.snapshot().header.num_layers
        await send(pilot, "What is a list?")
        await wait_for(pilot, lambda: len(screen.query(MessageView)) == 2 and not screen.generating, timeout=60)
        await pilot.pause(0.3)
        assert screen.query_one(ChatView).streamed_pieces >= 2
        answer = screen.query(MessageView).last().source
        assert answer, "the model answered (what it says is the demo model's business)"
        assert app.store.messages(screen.conversation_id)[-1].content == answer
        assert cache_slot_counts(app) == [2] * layers
        assert backend.snapshot().tokens >= 2
        budget = screen.panels["memory"].query_one(MemoryView).budget
        assert budget is not None and budget.expert_bytes == backend.engine.memory()["expert_bytes"]
        # the kept KV cache, read again with each memory sample (one may have been read mid-answer)
        view = screen.panels["memory"].query_one(MemoryView)
        await wait_for(pilot, lambda: view.budget.kv_tokens == backend.session.kv_tokens > 0, timeout=5)
        assert view.budget.kv_bytes == backend.session.kv_bytes > 0
        assert view.budget.context == 512  # the demo model's limit
        tree = screen.panels["params"].query_one(Tree)
        await wait_for(pilot, lambda: tree.display)
        assert "Mixtral" in str(tree.root.label)
        experts = next(node for node in walk_tree(tree.root) if node.data.kind == "experts")
        header = backend.snapshot().header
        held = header.expert_bytes * header.num_layers * header.num_experts
        assert str(experts.label).endswith(format_bytes(held)), "the experts as the engine holds them"

        await palette(pilot, "k 3")
        await send(pilot, "And a tuple?")
        await wait_for(pilot, lambda: len(screen.query(MessageView)) == 4 and not screen.generating, timeout=60)
        await pilot.pause(0.3)
        assert backend.engine.cache_sizes == [3] * layers
        assert cache_slot_counts(app) == [3] * layers

        await pilot.press("f4")
        await wait_for(pilot, lambda: app.screen.id == "lab")
        table = app.screen.query_one(DataTable)
        await wait_for(pilot, lambda: table.row_count == backend.snapshot().header.num_experts, timeout=30)

    async def main() -> None:
        async with app.run_test(size=(140, 44)) as pilot:
            await check(pilot)

    asyncio.run(main())
    assert trace.stat().st_size > 0, "the recording is flushed when the app closes"


def test_out_of_memory_mid_answer_keeps_the_answer_and_the_app_usable() -> None:
    import torch

    config.save_settings(config.Settings(generation={"temperature": 0.0, "max_new_tokens": 24}))
    app = MoeTuiApp(
        LaunchOptions(engine=OffloadConfig(cache_size=2, prefetch=1, device="cpu")),
        loader=load_backend,
        probe=FakeProbe(),
    )

    async def check(pilot: Pilot) -> None:
        await wait_for(pilot, lambda: app.main is not None and app.main.backend.can_chat, timeout=120)
        screen = app.main
        engine = screen.backend.engine.engine
        real, calls = engine.run_layer, {"n": 0}
        layers = len(screen.backend.engine.caches)

        def run_layer(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == layers * 6:  # the prefill and four decoded tokens went through
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
            return real(*args, **kwargs)

        engine.run_layer = run_layer
        await send(pilot, "What is a list?")
        await wait_for(pilot, lambda: calls["n"] >= layers * 6 and not screen.generating, timeout=60)
        await pilot.pause(0.3)
        notes = [note.message for note in app._notifications]
        assert any(n.startswith("ran out of GPU memory; what would fit: cache size k=1") for n in notes), notes
        partial = app.store.messages(screen.conversation_id)[-1]
        assert partial.role == "assistant" and partial.content  # the tokens before the failure are saved
        assert partial.content in screen.query(MessageView).last().source  # and still on screen
        await send(pilot, "And a tuple?")
        await wait_for(pilot, lambda: len(app.store.messages(screen.conversation_id)) == 4 and not screen.generating)
        assert app.store.messages(screen.conversation_id)[-1].content  # answered: the app stayed usable

    async def main() -> None:
        async with app.run_test(size=(140, 44)) as pilot:
            await check(pilot)

    asyncio.run(main())
