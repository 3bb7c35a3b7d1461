"""Bad input and failures give a clear message inside the app, and the app stays usable afterwards."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from textual.pilot import Pilot
from textual.widgets import Static, Tree
from tui_fakes import FakeProbe, FakeSession, header, synthetic_events, write_trace
from tui_helpers import palette, send, type_text, wait_for

from moe_tui import paths
from moe_tui.engine_config import OffloadConfig
from moe_tui.errors import UserError
from moe_tui.params import load_config
from moe_tui.system import Nvml, SystemProbe
from moe_tui.tui.app import MoeTuiApp
from moe_tui.tui.backend import LaunchOptions, LiveBackend, load_backend
from moe_tui.tui.screens.dialogs import ConfirmScreen
from moe_tui.tui.screens.error import ErrorScreen
from moe_tui.tui.screens.loading import LoadingScreen
from moe_tui.tui.screens.main import MainScreen
from moe_tui.tui.widgets.chat import ChatView, MessageView, PromptInput
from moe_tui.tui.widgets.conversations import ConversationList
from moe_tui.tui.widgets.memory import MemoryView


def run(app: MoeTuiApp, test: Callable[[Pilot], object], size: tuple[int, int] = (120, 40)) -> None:
    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await wait_for(pilot, lambda: app.main and not isinstance(app.screen, LoadingScreen), timeout=60)
            await test(pilot)

    asyncio.run(main())


def error_text(app: MoeTuiApp) -> str:
    assert isinstance(app.screen, ErrorScreen)
    return f"{app.screen.title_text}: {app.screen.message}"


async def continue_without_model(pilot: Pilot, app: MoeTuiApp) -> None:
    """Dismiss the error and check the main screen still works: chats list, no model, palette."""
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, MainScreen))
    screen = app.screen
    assert screen.query_one(PromptInput).disabled
    await pilot.press("f2")
    assert screen.query_one(ConversationList).display
    await pilot.press("f2")
    await pilot.press("f1")
    await pilot.pause(0.1)
    assert app.screen.id == "help"
    await pilot.press("escape")


def real_app(options: LaunchOptions) -> MoeTuiApp:
    return MoeTuiApp(options, loader=load_backend, probe=FakeProbe())


def test_missing_model_path_shows_an_error_and_the_app_stays_usable(tmp_path: Path) -> None:
    app = real_app(LaunchOptions(model=str(tmp_path / "no-such-model")))

    async def check(pilot: Pilot) -> None:
        assert "Could not load the model" in error_text(app)
        assert "no-such-model" in error_text(app) and "Traceback" not in error_text(app)
        await continue_without_model(pilot, app)

    run(app, check)


@pytest.fixture
def llama_dir(tmp_path: Path) -> Path:
    """A dense (non-MoE) model directory with a real tokenizer."""
    directory = tmp_path / "tiny-llama"
    directory.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (paths.DEMO_MODEL_DIR / name).exists():
            shutil.copy(paths.DEMO_MODEL_DIR / name, directory / name)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "vocab_size": 4096,
        "max_position_embeddings": 128,
    }
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_non_moe_model_is_refused_in_the_app(llama_dir: Path) -> None:
    app = real_app(LaunchOptions(model=str(llama_dir)))

    async def check(pilot: Pilot) -> None:
        assert "not a Mixture-of-Experts model" in error_text(app)
        await continue_without_model(pilot, app)

    run(app, check)


def test_k_that_does_not_fit_the_model_is_refused_in_the_app() -> None:
    app = real_app(LaunchOptions(engine=OffloadConfig(cache_size=9)))

    async def check(pilot: Pilot) -> None:
        assert "cache size 9 is out of range: choose 1..8" in error_text(app)
        await continue_without_model(pilot, app)

    run(app, check)


@pytest.mark.parametrize("content", [None, "garbage\n", '{"type": "header", "schema": 99}\n'])
def test_unreadable_trace_is_reported_in_the_app(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "trace.jsonl"
    if content is not None:
        path.write_text(content)
    app = real_app(LaunchOptions(replay=str(path)))

    async def check(pilot: Pilot) -> None:
        assert "trace" in error_text(app) and str(path) in error_text(app)
        assert "Could not open the trace" in error_text(app) and "the model" not in error_text(app)
        await continue_without_model(pilot, app)

    run(app, check)


def test_unexpected_loader_failure_is_readable_with_details_folded() -> None:
    def broken(options, progress):
        progress("reading shards", 1, 4)
        raise RuntimeError("shard 2 is corrupt")

    app = MoeTuiApp(LaunchOptions(), loader=broken, probe=FakeProbe())

    async def check(pilot: Pilot) -> None:
        assert error_text(app) == "Loading failed unexpectedly: RuntimeError: shard 2 is corrupt"
        assert "Traceback" in app.screen.details
        await continue_without_model(pilot, app)

    run(app, check)


def test_the_first_loading_stage_is_the_one_that_imports_torch_and_transformers() -> None:
    """Seconds on a first import: they must show under the stage named for them, not under the next one."""
    code = """
import json, sys
from moe_tui.tui.backend import LaunchOptions, load_backend
seen = []
class Enough(Exception):
    pass
def progress(stage, done, total):
    seen.append([stage, done, "torch" in sys.modules, "transformers" in sys.modules])
    if stage != "importing torch and transformers":
        raise Enough
try:
    load_backend(LaunchOptions(), progress)
except Enough:
    print(json.dumps(seen))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    stage = "importing torch and transformers"
    assert json.loads(done.stdout) == [
        [stage, 0, False, False],
        [stage, 1, True, True],
        ["loading tokenizer", 0, True, True],
    ]


def test_loading_screen_shows_each_stage_and_a_later_model_can_be_loaded() -> None:
    release = threading.Event()
    session = FakeSession(words=2)
    calls: list[str | None] = []

    def slow(options, progress):
        calls.append(options.model)
        if options.model == "later":
            return LiveBackend(session)
        progress("reading shards", 1, 3)
        progress("quantizing experts", 5, 10)
        raise_error = options.model == "bad"
        while not release.is_set():
            import time

            time.sleep(0.01)
        if raise_error:
            raise UserError("bad model")
        return LiveBackend(session)

    app = MoeTuiApp(LaunchOptions(model="bad"), loader=slow, probe=FakeProbe())

    async def main() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            try:
                await wait_for(pilot, lambda: isinstance(app.screen, LoadingScreen) and len(app.screen.stages) == 2)
                stages = app.screen.stages
                # a new stage's bar is listed at once and moved once it is mounted
                await wait_for(pilot, lambda: stages["quantizing experts"].bar.progress == 5)
                assert stages["reading shards"].bar.progress == 1 and stages["reading shards"].bar.total == 3
                assert stages["quantizing experts"].bar.percentage == pytest.approx(0.5)
                app.load_model("later")  # refused while this load runs: two stores would be held at once
                await pilot.pause(0.1)
                assert any("a model is still loading" in note.message for note in app._notifications)
                assert calls == ["bad"]
            finally:
                release.set()  # a failed check must not leave the loader thread spinning (the test would hang)
            await wait_for(pilot, lambda: isinstance(app.screen, ErrorScreen))
            await pilot.press("enter")
            app.load_model("later")
            await wait_for(pilot, lambda: app.main.backend.can_chat)
            await send(pilot, "hello")
            await wait_for(pilot, lambda: len(app.main.query(MessageView)) == 2 and not app.main.generating)

    asyncio.run(main())
    assert calls == ["bad", "later"]


def test_a_load_is_cancelled_from_the_loading_screen_or_the_palette_and_the_app_goes_on_without_a_model() -> None:
    """A model picked by mistake can take an hour to quantize: c on the loading screen (or the palette's "Cancel
    loading" once the screen is hidden) stops it at its next progress report."""
    import time

    reports: list[str | None] = []
    STEPS = 60

    def loader(options, progress):
        for step in range(STEPS):  # at most 15 s, so a failing check cannot hang the test
            progress("quantizing experts to 4 bits", step, STEPS)
            reports.append(options.model)
            time.sleep(0.25)  # a busier stream of reports keeps Pilot's key presses waiting for an idle app
        return LiveBackend(FakeSession())

    app = MoeTuiApp(LaunchOptions(model="first"), loader=loader, probe=FakeProbe())

    def cancelled() -> bool:  # said in a notice (one that has not timed out yet)
        return any(note.message == "loading the model was cancelled" for note in app._notifications)

    async def main() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, LoadingScreen) and len(reports) > 1)
            await pilot.press("c")  # asks first: a stray key must not end the load
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("n")
            await wait_for(pilot, lambda: isinstance(app.screen, LoadingScreen))
            shown = len(reports)
            await wait_for(pilot, lambda: len(reports) > shown)  # still loading
            await pilot.press("c", "y")
            await wait_for(pilot, lambda: isinstance(app.screen, MainScreen) and cancelled() and not app.model_loading)
            assert len(reports) < STEPS
            status = app.main.chat.query_one("#chat-status", Static)
            assert not app.main.backend.can_chat and "no model loaded" in str(status.render())
            app.load_model("second")
            await wait_for(pilot, lambda: isinstance(app.screen, LoadingScreen) and "second" in reports)
            await pilot.press("escape")  # use the app while it loads
            await wait_for(pilot, lambda: isinstance(app.screen, MainScreen))
            app.clear_notifications()
            await palette(pilot, "cancel loading")
            await wait_for(pilot, lambda: isinstance(app.screen, MainScreen) and cancelled() and not app.model_loading)
            assert reports.count("second") < STEPS and not app.main.backend.can_chat
            assert not any(isinstance(screen, (LoadingScreen, ErrorScreen)) for screen in app.screen_stack)

    asyncio.run(main())


def test_quitting_during_a_load_stops_the_loading_thread() -> None:
    """The process waits for its threads at exit: quitting during a long quantization blanked the terminal and
    left the process quantizing to the end. The load now stops at its next progress report."""
    import time

    reports: list[int] = []
    ended = threading.Event()

    def loader(options, progress):
        try:
            for step in range(60):  # at most 15 s, so a failing check cannot hang the test
                progress("quantizing experts to 4 bits", step, 60)
                reports.append(step)
                time.sleep(0.25)
            return LiveBackend(FakeSession())
        finally:
            ended.set()

    app = MoeTuiApp(LaunchOptions(model="slow"), loader=loader, probe=FakeProbe())

    async def main() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, LoadingScreen) and len(reports) > 1)
            await pilot.press("ctrl+q")

    asyncio.run(main())
    assert ended.wait(2.0) and len(reports) < 60


@pytest.mark.parametrize("outcome", ["loaded", "failed"])
def test_a_load_that_ends_under_the_help_screen_does_not_leave_the_loading_screen_behind(outcome: str) -> None:
    """Help (or the palette) opened over the loading screen may still be open when the load ends: closing it
    shows the model (or the error), not a loading screen that counts seconds forever."""
    from moe_tui.tui.screens.help import HelpScreen

    release = threading.Event()

    def slow(options, progress):
        progress("reading shards", 1, 3)
        if not release.wait(timeout=30):
            raise RuntimeError("the test never released the load")
        if outcome == "failed":
            raise UserError("bad model")
        return LiveBackend(FakeSession(words=2))

    app = MoeTuiApp(LaunchOptions(), loader=slow, probe=FakeProbe())

    async def main() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            try:
                await wait_for(pilot, lambda: isinstance(app.screen, LoadingScreen) and len(app.screen.stages) == 1)
                await pilot.press("f1")
                await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
            finally:
                release.set()
            await wait_for(pilot, lambda: app.loading_screen is None and not app.model_loading)
            if outcome == "failed":
                await wait_for(pilot, lambda: isinstance(app.screen, ErrorScreen))
                await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
            await pilot.press("escape")
            await wait_for(pilot, lambda: isinstance(app.screen, MainScreen))
            await pilot.pause(0.2)
            assert isinstance(app.screen, MainScreen) and len(app.screen_stack) == 2  # the default screen, main
            assert app.main.backend.can_chat == (outcome == "loaded")

    asyncio.run(main())


def test_generation_error_is_shown_and_the_question_goes_back_to_the_prompt() -> None:
    """A question that fails before any answer leaves the conversation for the prompt: kept there, a question
    too long for the context was merged with every later one, which then failed as well."""
    session = FakeSession(words=2)
    app = MoeTuiApp(LaunchOptions(), loader=lambda options, progress: LiveBackend(session), probe=FakeProbe())

    async def check(pilot: Pilot) -> None:
        prompt = app.main.query_one(PromptInput)
        await send(pilot, "first")
        await wait_for(pilot, lambda: len(session.prompts) == 1 and not app.main.generating)
        session.fail = "out of memory while generating; try a smaller cache size"
        await send(pilot, "boom")
        await wait_for(pilot, lambda: len(session.prompts) == 2 and not app.main.generating and prompt.text)
        assert any("out of memory" in note.message for note in app._notifications)
        assert "your question is back in the prompt" in str(app.main.query_one("#chat-status").render())
        assert prompt.text == "boom", "the question that got no answer is back in the prompt"
        assert [view.role for view in app.main.query(MessageView)] == ["user", "assistant"]
        saved = app.store.messages(app.main.conversation_id)
        assert [m.role for m in saved] == ["user", "assistant"] and saved[0].content == "first", "nothing of it kept"
        session.fail = ""
        await pilot.press("ctrl+j")
        await wait_for(pilot, lambda: len(session.prompts) == 3 and not app.main.generating)
        assert session.prompts[-1][-1] == {"role": "user", "content": "boom"}, "not merged with a failed copy"
        assert app.main.query(MessageView).last().source.startswith("The expert")

    run(app, check)


def test_a_failed_question_goes_back_before_what_was_typed_meanwhile() -> None:
    session = FakeSession(words=2, fail="out of memory while generating")
    session.fail_when = threading.Event()
    app = MoeTuiApp(LaunchOptions(), loader=lambda options, progress: LiveBackend(session), probe=FakeProbe())

    async def check(pilot: Pilot) -> None:
        prompt = app.main.query_one(PromptInput)
        await send(pilot, "boom")
        await wait_for(pilot, lambda: app.main.generating and prompt.text == "")
        await type_text(pilot, "next one")
        session.fail_when.set()
        await wait_for(pilot, lambda: not app.main.generating and prompt.text != "next one")
        assert prompt.text == "boom\n\nnext one", "nothing typed is lost, and the question comes first"
        assert not app.main.query(MessageView)

    run(app, check)


def test_no_gpu_memory_panel_with_nvml_unavailable() -> None:
    class NoLibrary(Exception):
        pass

    def missing_driver():
        module = type("pynvml", (), {})()

        def init() -> None:
            raise NoLibrary("NVML Shared Library Not Found")

        module.nvmlInit = init
        return module

    probe = SystemProbe(nvml=Nvml(loader=missing_driver))
    app = MoeTuiApp(LaunchOptions(), loader=lambda options, progress: LiveBackend(FakeSession()), probe=probe)

    async def check(pilot: Pilot) -> None:
        view = app.main.query_one(MemoryView)
        await wait_for(pilot, lambda: view.sample is not None)
        text = str(view.render())
        assert "no NVIDIA GPU: the NVIDIA driver library (libnvidia-ml) is not installed" in text
        assert "showing host memory only" in text and "RAM" in text and "RSS" in text
        assert "engine slots" in text

    run(app, check)


def test_60x20_terminal_stays_usable_and_smaller_says_so() -> None:
    session = FakeSession(words=3)
    app = MoeTuiApp(LaunchOptions(), loader=lambda options, progress: LiveBackend(session), probe=FakeProbe())

    async def check(pilot: Pilot) -> None:
        screen = app.main
        assert screen.has_class("-narrow") and screen.has_class("-one-pane")
        assert "f6 chat/panels" in str(screen.query_one("#status").render())
        await send(pilot, "small")
        await wait_for(pilot, lambda: len(screen.query(MessageView)) == 2 and not screen.generating)
        assert screen.query_one(ChatView).display and screen.query_one("#dashboard").region.width == 0
        await pilot.press("f6")
        await pilot.pause(0.1)
        assert screen.has_class("show-panels") and screen.panels["heatmap"].region.width > 0
        focused = screen.focused
        assert focused is screen.panels["heatmap"]
        await pilot.resize_terminal(50, 15)
        await pilot.pause(0.2)
        too_small = screen.query_one("#too-small", Static)
        assert too_small.region.width > 0 and "Terminal too small: 50x15" in str(too_small.render())
        # keys typed at a window the user cannot read do nothing: no question sent, no chat started or panel moved
        await send(pilot, "unseen")
        await pilot.press("ctrl+n", "f6", "f2")
        await pilot.pause(0.2)
        assert len(screen.query(MessageView)) == 2 and not screen.generating
        assert screen.query_one(PromptInput).text == "" and screen.has_class("show-panels")
        assert not screen.query_one(ConversationList).display
        await pilot.resize_terminal(100, 30)
        await pilot.pause(0.2)
        assert too_small.region.width == 0 and screen.query_one("#body").region.height > 0
        assert screen.focused is focused  # the keys go on where they went
        await pilot.click(PromptInput)
        await send(pilot, "seen")
        await wait_for(pilot, lambda: len(screen.query(MessageView)) == 4 and not screen.generating)

    run(app, check, size=(60, 20))


def test_the_conversation_list_on_a_medium_terminal_makes_chat_and_panels_take_turns() -> None:
    app = MoeTuiApp(LaunchOptions(), loader=lambda options, progress: LiveBackend(FakeSession()), probe=FakeProbe())

    async def check(pilot: Pilot) -> None:
        screen = app.main
        chat, dashboard = screen.query_one(ChatView), screen.query_one("#dashboard")
        assert not screen.has_class("-one-pane") and dashboard.region.width > 0
        await pilot.press("f2")
        await pilot.pause(0.1)
        assert screen.has_class("-one-pane")  # 30 columns of list would leave chat and panels ~25 each
        assert dashboard.region.width == 0 and chat.region.width >= 60
        assert "f6 chat/panels" in str(screen.query_one("#status").render())
        await pilot.press("f6")
        await pilot.pause(0.1)
        assert chat.region.width == 0 and screen.panels["heatmap"].region.width >= 55
        await pilot.resize_terminal(140, 30)  # room for all three
        await pilot.pause(0.2)
        assert not screen.has_class("-one-pane") and chat.region.width > 0 and dashboard.region.width > 0
        await pilot.resize_terminal(90, 30)
        await pilot.press("f2")  # the list closes: side by side again
        await pilot.pause(0.1)
        assert not screen.has_class("-one-pane") and chat.region.width > 0 and dashboard.region.width > 0

    run(app, check, size=(90, 30))


def test_replay_drives_the_panels_and_speed_keys(tmp_path: Path) -> None:
    head = header(layers=4)
    path = write_trace(tmp_path / "t.jsonl", head, synthetic_events(head, tokens=30))
    app = MoeTuiApp(LaunchOptions(replay=str(path), replay_speed=8.0), loader=load_backend, probe=FakeProbe())

    async def check(pilot: Pilot) -> None:
        screen = app.main
        replay = screen.backend.replay
        assert screen.query_one(PromptInput).disabled
        await wait_for(pilot, lambda: replay.position > 10)
        await pilot.press("minus")
        assert replay.speed == 4.0
        await pilot.press("space")
        assert replay.paused
        await pilot.press("space")
        await wait_for(pilot, lambda: replay.finished)
        await pilot.pause(0.2)
        assert screen.query(MessageView).last().source.startswith("The expert cache")
        assert "finished" in str(screen.query_one("#status").render())
        await pilot.press("space", "ctrl+r")
        await wait_for(pilot, lambda: replay.position == 0 and replay.snapshot().tokens == 0)
        await wait_for(pilot, lambda: "paused" in str(screen.query_one("#status").render()))
        await pilot.press("f4")
        await wait_for(pilot, lambda: app.screen.id == "lab")
        await wait_for(pilot, lambda: app.screen.query_one("DataTable").row_count == head.num_experts)

    run(app, check)


def test_a_model_loaded_during_a_replay_stops_it_and_starts_with_an_empty_chat(tmp_path: Path) -> None:
    """The replay's thread stops when a model replaces the trace, so its text does not go on streaming into the
    chat, and the replayed answer (not a conversation) is cleared for the model's own."""
    head = header(layers=4)
    path = write_trace(tmp_path / "t.jsonl", head, synthetic_events(head, tokens=400))
    session = FakeSession(words=2)

    def loader(options, progress):
        return load_backend(options, progress) if options.replay else LiveBackend(session)

    app = MoeTuiApp(LaunchOptions(replay=str(path), replay_speed=0.5), loader=loader, probe=FakeProbe())

    async def check(pilot: Pilot) -> None:
        screen = app.main
        replay = screen.backend.replay
        await wait_for(pilot, lambda: replay.position > 0 and bool(screen.query(MessageView)))
        app.load_model(None)
        await wait_for(pilot, lambda: screen.backend.can_chat)
        await pilot.pause(0.2)
        position = replay.position
        await pilot.pause(1.0)
        assert replay.position == position, "the replay stopped"
        assert not screen.query(MessageView)
        await send(pilot, "hello")
        await wait_for(pilot, lambda: len(screen.query(MessageView)) == 2 and not screen.generating)

    run(app, check)


def test_command_line_rejects_contradictions(capsys: pytest.CaptureFixture[str]) -> None:
    from moe_tui.cli import main

    assert main(["chat", "--replay", "t.jsonl", "--record", "u.jsonl"]) == 2
    assert "cannot be combined" in capsys.readouterr().err
    assert main(["chat", "--replay", "t.jsonl", "--model", "m"]) == 2
    assert main(["--theme", "moe-light", "--speed", "2"]) == 2, "not a terminal under pytest"
    assert "interactive terminal" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["chat", "--cache-size", "0"])
    assert exit_info.value.code == 2


def test_a_recording_that_cannot_be_written_is_refused_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--record used to be opened after the whole model had loaded (minutes for a real one), and then the model
    was dropped; an earlier recording at that path was overwritten without a word."""
    from moe_tui.cli import main

    earlier = tmp_path / "earlier.jsonl"
    earlier.write_text("an earlier recording\n")
    assert main(["chat", "--record", str(earlier)]) == 2
    assert "already exists: --record writes a new trace" in capsys.readouterr().err
    assert earlier.read_text() == "an earlier recording\n"
    assert main(["chat", "--record", str(tmp_path / "missing" / "t.jsonl")]) == 2
    assert f"there is no folder {tmp_path / 'missing'}" in capsys.readouterr().err


def test_chat_command_starts_and_closes_the_app(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from moe_tui.commands import chat
    from moe_tui.tui import app as app_module

    started: list[LaunchOptions] = []

    def fake_run(self, **run_options) -> int:
        started.append(self.options)
        return 0

    monkeypatch.setattr(app_module.MoeTuiApp, "run", fake_run)
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    from moe_tui.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n"))  # piped: the app would never see a key
    assert main(["-k", "3"]) == 2 and not started
    assert "stdin is not one" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    assert main(["--theme", "moe-light", "-k", "3", "--prefetch", "0", "--record", "t.jsonl"]) == 0
    assert started[0].engine.cache_size == 3 and started[0].engine.prefetch == 0 and started[0].record == "t.jsonl"
    assert chat.options_from_args(chat_args(["--replay", "x.jsonl", "--speed", "4"])).replay_speed == 4.0


def chat_args(argv: list[str]):
    from moe_tui.cli import build_parser

    return build_parser().parse_args(["chat", *argv])


def test_loading_another_model_frees_the_first_before_the_second_takes_memory() -> None:
    first, second = FakeSession(), FakeSession()
    seen_closed: list[bool] = []

    def loader(options, progress):
        if options.model == "second":
            seen_closed.append(first.closed)  # what the new load finds: the old engine already released
            return LiveBackend(second)
        return LiveBackend(first)

    app = MoeTuiApp(LaunchOptions(model="first"), loader=loader, probe=FakeProbe())

    async def main() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: app.main is not None and app.main.backend.can_chat)
            await wait_for(pilot, lambda: app.screen is app.main)
            app.load_model("second")
            await wait_for(pilot, lambda: app.main.backend.can_chat and app.main.backend.session is second)
            await send(pilot, "hello")
            await wait_for(pilot, lambda: len(app.main.query(MessageView)) == 2 and not app.main.generating)
            assert not second.closed

    asyncio.run(main())
    assert seen_closed == [True]


def test_a_failed_load_after_a_model_leaves_no_parameter_tree_of_the_model_before() -> None:
    """The panels forget the model that was dropped for the load; the parameter tree used to stay under its
    "no model loaded" note."""
    first = FakeSession()
    first.engine.model = SimpleNamespace(config=load_config("mixtral-8x7b"), dtype="torch.bfloat16")
    first.engine.config = OffloadConfig()

    def loader(options, progress):
        if options.model == "bad":
            raise UserError("cannot load the tokenizer of bad")
        return LiveBackend(first)

    app = MoeTuiApp(LaunchOptions(model="first"), loader=loader, probe=FakeProbe())

    async def check(pilot: Pilot) -> None:
        panel = app.main.panels["params"]
        tree, note = panel.query_one(Tree), panel.query_one("#params-note", Static)
        await wait_for(pilot, lambda: tree.display and "Mixtral" in str(tree.root.label))
        app.load_model("bad")
        await wait_for(pilot, lambda: isinstance(app.screen, ErrorScreen))
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is app.main)
        await pilot.pause(0.2)
        assert str(note.render()) == "no model loaded"
        assert not tree.display and not tree.root.children

    run(app, check)


def test_a_recording_that_fills_the_disk_is_stopped_with_one_notice_and_the_answers_go_on() -> None:
    """With --record on a disk that filled, every answer failed ("No space left on device") and quitting ended
    with a traceback; now the recording stops, the app says so once, and the chat carries on."""
    from tui_fakes import FullDisk

    from moe_tui.telemetry import Telemetry, TokenEvent

    session = FakeSession(words=4)
    session.engine.telemetry = Telemetry(session.engine.header, trace=FullDisk(room=5))
    backend = LiveBackend(session, trace_path=FullDisk.name)
    app = MoeTuiApp(LaunchOptions(), loader=lambda options, progress: backend, probe=FakeProbe())

    def notices() -> list[str]:
        return [note.message for note in app._notifications if note.title == "Recording"]

    async def check(pilot: Pilot) -> None:
        for turn, question in enumerate(("first", "second"), start=1):
            await send(pilot, question)
            await wait_for(pilot, lambda turn=turn: len(app.main.query(MessageView)) == 2 * turn)
            await wait_for(pilot, lambda: not app.main.generating)
        await wait_for(pilot, lambda: bool(notices()))
        await pilot.pause(0.3)
        assert notices() == ["recording stopped: cannot write /mnt/full/session.jsonl (No space left on device)"]
        assert all(view.source for view in app.main.query(MessageView))  # both answered
        _, events, _ = backend.routing_trace()  # the lab studies what the engine kept, not the cut file
        assert sum(isinstance(event, TokenEvent) for event in events) == 8

    run(app, check)


def test_a_history_that_fills_mid_answer_lets_the_answer_finish_and_says_what_was_not_saved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The answer used to stop at the piece the history could not take ("error: chat history ...: database or
    disk is full"): the model had answered, the user could not read it."""
    from moe_tui.chat.history import HistoryStore

    saved = HistoryStore.append_to_message
    room = {"pieces": 2}

    def append_until_full(self, message_id: int, text: str) -> None:
        if room["pieces"] == 0:
            raise UserError(f"chat history {self.path}: database or disk is full")
        room["pieces"] -= 1
        saved(self, message_id, text)

    monkeypatch.setattr(HistoryStore, "append_to_message", append_until_full)
    session = FakeSession(words=6)
    app = MoeTuiApp(LaunchOptions(), loader=lambda options, progress: LiveBackend(session), probe=FakeProbe())

    def notices() -> list[str]:
        return [note.message for note in app._notifications if note.title == "Chat history"]

    async def check(pilot: Pilot) -> None:
        await send(pilot, "tell me")
        await wait_for(pilot, lambda: len(app.main.query(MessageView)) == 2)
        await wait_for(pilot, lambda: not app.main.generating and bool(notices()))
        assert len(app.main.query(MessageView).last().source.split()) == 6  # the whole answer is on screen
        full = f"chat history {app.store.path}: database or disk is full"
        assert notices() == [f"{full}; the rest of this answer is not saved"]
        assert "error" not in str(app.main.query_one("#chat-status").render())

    run(app, check)


def run_app_script(script: str, tmp_path: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """Run ``script`` (Python that drives the app with ``run_until_quit``) in a fresh process, with the test
    helpers importable and the app's directories under ``tmp_path``: its exit is what these tests judge."""
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parent),
        **{f"MOE_TUI_{kind}_DIR": str(tmp_path / kind.lower()) for kind in ("DATA", "CONFIG", "CACHE")},
    }
    return subprocess.run(
        [sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


QUIT_WHILE_LOADING = """
import asyncio, sys, threading, time
from pathlib import Path
from tui_fakes import FakeProbe
from moe_tui.commands.chat import run_until_quit
from moe_tui.tui.app import MoeTuiApp
from moe_tui.tui.backend import LaunchOptions

loading = threading.Event()

def slow_loader(options, progress):
    loading.set()
    time.sleep(120)  # one call without a progress report, as importing torch is: it cannot be interrupted

async def quit_once_loading(pilot):
    while not loading.is_set():
        await asyncio.sleep(0.01)
    await pilot.press("ctrl+q")

app = MoeTuiApp(LaunchOptions(), loader=slow_loader, probe=FakeProbe())
run_until_quit(app, lambda: Path(sys.argv[1]).write_text("cleaned up"), headless=True, auto_pilot=quit_once_loading)
print("returned, so the process would have waited for the load")
"""


def test_quitting_while_a_model_loads_ends_the_process_without_waiting_for_the_load(tmp_path: Path) -> None:
    """Quitting during the demo's start (torch's import) waited 7 s for the load with the terminal given back."""
    marker = tmp_path / "cleanup"
    # the load sleeps 120 s: a process that waited for it would run past this timeout and fail the test
    done = run_app_script(QUIT_WHILE_LOADING, tmp_path, str(marker), timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "returned" not in done.stdout
    assert marker.read_text() == "cleaned up"


QUIT_WHILE_SAVING = """
import asyncio, sys, threading, time
from pathlib import Path
from tui_fakes import FakeProbe
from moe_tui.commands.chat import run_until_quit
from moe_tui.offload.store_lock import store_lock
from moe_tui.tui.app import MoeTuiApp
from moe_tui.tui.backend import LaunchOptions

entry = Path(sys.argv[1])
writing = threading.Event()

def saving_loader(options, progress):
    with store_lock(entry, progress):  # as a build does, which removes its partial file when it is stopped
        partial = entry / "experts.bin.partial"
        entry.mkdir()
        partial.write_bytes(bytes(1000))
        writing.set()
        try:
            for expert in range(60):
                time.sleep(2)  # an expert under HQQ's optimiser: the app closes well before the next report
                progress("quantizing experts to 4 bits", expert, 60)  # raises once the app is closed
        finally:
            partial.unlink()

async def quit_while_writing(pilot):
    while not writing.is_set():
        await asyncio.sleep(0.01)
    await pilot.press("ctrl+q")

app = MoeTuiApp(LaunchOptions(), loader=saving_loader, probe=FakeProbe())
print("returned", run_until_quit(app, headless=True, auto_pilot=quit_while_writing))
"""


def test_quitting_while_a_store_is_written_waits_for_the_load_to_remove_its_partial_file(tmp_path: Path) -> None:
    entry = tmp_path / "entry"
    done = run_app_script(QUIT_WHILE_SAVING, tmp_path, str(entry), timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "returned 0"  # the load was waited for, not cut off
    assert entry.is_dir() and not any(entry.iterdir())


def test_quitting_after_the_load_returns_the_exit_code_and_cleans_up() -> None:
    from moe_tui.commands.chat import run_until_quit

    def failing_loader(options: LaunchOptions, progress) -> None:
        raise UserError("no such model")

    async def quit_after_the_load(pilot: Pilot) -> None:
        await wait_for(pilot, lambda: pilot.app.loading_screen is None and not pilot.app.model_loading, timeout=30)
        pilot.app.exit()

    cleaned: list[str] = []
    app = MoeTuiApp(LaunchOptions(), loader=failing_loader, probe=FakeProbe())
    code = run_until_quit(app, lambda: cleaned.append("done"), headless=True, auto_pilot=quit_after_the_load)
    assert code == 0 and cleaned == ["done"]


INTERRUPTED = """
import asyncio, os, signal
from tui_fakes import FakeProbe
from moe_tui.commands.chat import run_until_quit
from moe_tui.errors import UserError
from moe_tui.tui.app import MoeTuiApp
from moe_tui.tui.backend import LaunchOptions

def failing_loader(options, progress):
    raise UserError("no such model")

async def interrupt(pilot):
    while pilot.app.loading_screen is not None or pilot.app.model_loading:
        await asyncio.sleep(0.01)
    os.kill(os.getpid(), signal.SIGINT)  # the app must quit by itself now

app = MoeTuiApp(LaunchOptions(), loader=failing_loader, probe=FakeProbe())
print("returned", run_until_quit(app, headless=True, auto_pilot=interrupt))
"""


def test_a_sigint_from_outside_quits_the_app_cleanly(tmp_path: Path) -> None:
    """Under asyncio.run a SIGINT quit the app; on run_until_quit's own loop it first went unnoticed, then left
    the terminal unrestored with exit code 130."""
    done = run_app_script(INTERRUPTED, tmp_path, timeout=50)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "returned 0"
