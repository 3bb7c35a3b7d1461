"""Daily use in the app: copying without a mouse, regenerating, editing the last question, and renaming,
deleting and searching conversations (Pilot, with a fake model and a real SQLite history)."""

from __future__ import annotations

from dataclasses import replace

from textual.pilot import Pilot
from tui_fakes import FakeSession
from tui_helpers import main_screen, make_app, messages, run, send, wait_for

from moe_tui.tui.screens.dialogs import AskScreen, ConfirmScreen
from moe_tui.tui.screens.error import ErrorScreen
from moe_tui.tui.screens.main import MainScreen
from moe_tui.tui.widgets.chat import ChatLog, PromptInput, ThinkingView
from moe_tui.tui.widgets.conversations import ConversationList

ANSWER = (
    "Use zip:\n\n```python\npairs = list(zip(a, b))\n```\n\n"
    "or enumerate:\n\n```python\nfor i, x in enumerate(a):\n    print(i)\n```\n"
)


def answered(app) -> bool:
    screen = main_screen(app)
    return not screen.generating and bool(messages(app)) and messages(app)[-1][0] == "assistant"


def test_keys_copy_the_answer_a_selected_message_and_its_code_blocks(monkeypatch) -> None:
    monkeypatch.setenv("TMUX", "/tmp/tmux-0/default,1,0")
    app, _ = make_app(FakeSession(reply=ANSWER))
    notices: list[str] = []

    async def check(pilot: Pilot) -> None:
        app.notify = lambda message, **kwargs: notices.append(str(message))  # type: ignore[method-assign]
        await send(pilot, "how do I pair two lists?")
        await wait_for(pilot, lambda: answered(app))
        await pilot.press("f8")
        assert app.clipboard == ANSWER
        assert notices[-1].startswith(f"copied the answer ({len(ANSWER)} characters) to the clipboard")
        assert "set -g set-clipboard on" in notices[-1]  # inside tmux the notice says what it takes
        app.screen.query_one(ChatLog).focus()
        await pilot.press("b")
        assert app.clipboard == "pairs = list(zip(a, b))\n"
        assert "code block 1 of 2 (python, 1 line)" in notices[-1]
        await pilot.press("b")
        assert app.clipboard.startswith("for i, x in enumerate(a):") and "code block 2 of 2" in notices[-1]
        await pilot.press("up", "c")  # the message above the answer: the question
        assert app.clipboard == "how do I pair two lists?" and "copied your question" in notices[-1]
        await pilot.press("b")
        assert notices[-1] == "this message has no code block"

    run(check, app)


def test_regenerate_replaces_the_last_answer_and_edit_replaces_the_last_question() -> None:
    app, session = make_app(FakeSession(words=4))

    async def check(pilot: Pilot) -> None:
        screen = main_screen(app)
        await send(pilot, "first question")
        await wait_for(pilot, lambda: answered(app))
        await send(pilot, "second question")
        await wait_for(pilot, lambda: answered(app) and len(messages(app)) == 4)
        session.words = 6
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: answered(app) and len(messages(app)[-1][1].split()) == 6)
        assert [role for role, _ in messages(app)] == ["user", "assistant", "user", "assistant"]
        assert session.prompts[-1][-1] == {"role": "user", "content": "second question"}
        saved = screen.store.messages(screen.conversation_id)
        assert [m.content for m in saved][2:] == ["second question", messages(app)[-1][1]]

        await pilot.press("f9")
        prompt = app.screen.query_one(PromptInput)
        assert prompt.text == "second question" and screen.editing
        prompt.text = "the second question, better put"
        await pilot.press("ctrl+j")
        await wait_for(pilot, lambda: answered(app) and not screen.editing and len(messages(app)) == 4)
        saved = [m.content for m in screen.store.messages(screen.conversation_id)]
        assert saved[:3] == [messages(app)[0][1], messages(app)[1][1], "the second question, better put"]
        assert session.prompts[-1][-1]["content"] == "the second question, better put"
        assert len(session.prompts[-1]) == 3  # the old question and its answer are gone from the conversation

        await pilot.press("f9")
        await pilot.press("escape")  # cancel: nothing changes
        assert not screen.editing and app.screen.query_one(PromptInput).text == ""
        assert len(screen.store.messages(screen.conversation_id)) == 4

    run(check, app)


def test_regenerating_a_greedy_answer_says_why_it_comes_out_the_same() -> None:
    app, session = make_app(FakeSession(words=4))
    notices: list[str] = []

    async def check(pilot: Pilot) -> None:
        app.notify = lambda message, **kwargs: notices.append(str(message))  # type: ignore[method-assign]
        screen = main_screen(app)
        screen.generation = replace(screen.generation, temperature=0.7)
        await send(pilot, "a question")
        await wait_for(pilot, lambda: answered(app))
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: answered(app) and len(session.prompts) == 2)
        assert not any("greedy" in notice for notice in notices)  # sampling: a new answer may differ
        screen.generation = replace(screen.generation, temperature=0.0)
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: answered(app) and len(session.prompts) == 3)
        assert "temperature is 0 (greedy)" in notices[-1]  # still answered again: the model may have changed

    run(check, app)


def test_conversations_are_renamed_deleted_and_searched_from_the_list() -> None:
    app, _ = make_app(FakeSession(words=3))

    async def check(pilot: Pilot) -> None:
        screen = main_screen(app)
        await send(pilot, "tell me about lighthouses")
        await wait_for(pilot, lambda: answered(app))
        first = screen.conversation_id
        await pilot.press("ctrl+n")
        await send(pilot, "what is a generator")
        await wait_for(pilot, lambda: answered(app))
        await pilot.press("f2")
        listing = app.screen.query_one(ConversationList)
        await wait_for(pilot, lambda: app.focused is listing)

        await pilot.press("slash")
        await wait_for(pilot, lambda: isinstance(app.screen, AskScreen))
        await pilot.press(*"lighthouse", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, MainScreen) and listing.query_text == "lighthouse")
        assert listing.option_count == 1 and listing.highlighted_id == first
        assert "[lighthouses]" in str(listing.get_option_at_index(0).prompt)

        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, AskScreen))
        app.screen.query_one("#ask-input").value = "Lights at sea"
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.store.conversation(first).title == "Lights at sea")

        await pilot.press("escape")  # back to every chat
        await wait_for(pilot, lambda: listing.query_text == "" and listing.option_count == 2)
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, MainScreen))
        assert len(screen.store.list_conversations()) == 2
        current = listing.highlighted_id
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: len(screen.store.list_conversations()) == 1)
        assert current not in [c.id for c in screen.store.list_conversations()]

    run(check, app)


def test_a_thinking_models_reasoning_is_shown_folded_apart_from_its_answer() -> None:
    reply = "<think>\nThey ask about zip; keep it short.\n</think>\n\nzip pairs items."
    app, _ = make_app(FakeSession(reply=reply))

    async def check(pilot: Pilot) -> None:
        screen = main_screen(app)
        await send(pilot, "what is zip?")
        await wait_for(pilot, lambda: answered(app))
        thinking = app.screen.query_one(ThinkingView)
        assert thinking.collapsed and thinking.text.strip() == "They ask about zip; keep it short."
        assert messages(app)[-1] == ("assistant", "zip pairs items.")
        assert screen.store.messages(screen.conversation_id)[-1].content == reply  # the history keeps it all
        await pilot.press("f8")
        assert app.clipboard == "zip pairs items."
        await pilot.press("ctrl+n")
        await screen.open_conversation(screen.store.list_conversations()[0].id)
        await pilot.pause(0.1)
        assert app.screen.query_one(ThinkingView).text.strip() == "They ask about zip; keep it short."
        assert messages(app)[-1] == ("assistant", "zip pairs items.")

    run(check, app)


def test_load_model_lists_local_models_with_what_fits_and_presets_the_planners_choice(tmp_path) -> None:
    import json

    from moe_tui import config
    from moe_tui.tui.screens.models import LoadOptionsScreen, ModelPickerScreen

    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    dense = tmp_path / "llama"
    dense.mkdir()
    (dense / "config.json").write_text(
        json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
                    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100})
    )  # fmt: skip
    config.save_settings(config.Settings(recent_models=(str(bert), str(dense), str(tmp_path / "gone"))))
    loaded = []
    session = FakeSession(words=2)

    def loader(options, progress):
        from moe_tui.tui.backend import LiveBackend

        loaded.append(options)
        return LiveBackend(session)

    from tui_fakes import FakeProbe

    from moe_tui.tui.app import MoeTuiApp
    from moe_tui.tui.backend import LaunchOptions

    app = MoeTuiApp(LaunchOptions(), loader=loader, probe=FakeProbe())

    async def check(pilot: Pilot) -> None:
        await wait_for(pilot, lambda: main_screen(app).backend.can_chat)
        main_screen(app).set_policy("lfu")  # as the palette switches them while a model runs
        main_screen(app).set_miss("host")
        main_screen(app).action_load_model()
        await wait_for(pilot, lambda: isinstance(app.screen, ModelPickerScreen))
        picker = app.screen
        assert [entry.source for entry in picker.entries] == ["demo", "recent", "recent"]  # "gone" is left out
        await wait_for(pilot, lambda: len(picker.reports) == 3, timeout=60)
        summaries = [picker.reports[index].summary() for index in range(3)]
        assert summaries[0].startswith("MoE · ") and "fits: k=8 at full precision" in summaries[0]
        assert summaries[1] == "bert is not a causal language model (BertModel): there is nothing to chat with"
        assert "not a Mixture-of-Experts model" in summaries[2]
        await pilot.press("down", "enter")  # bert: refused with its reason, the picker stays
        assert isinstance(app.screen, ModelPickerScreen)
        await pilot.press("up", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, LoadOptionsScreen))
        assert app.screen.query_one("#load-k").value == "8" and app.screen.query_one("#load-bits").value == "none"
        assert app.screen.query_one("#load-prefetch").value == "0"  # every expert cached: nothing to prefetch
        # the running engine's policy and miss mode, switched above, are what the next model starts with
        assert app.screen.query_one("#load-policy").value == "lfu"
        fields = ["load-k", "load-bits", "load-prefetch", "load-policy", "load-miss"]
        assert app.focused.id == fields[0]  # enter loads the suggestion as it stands
        for field in fields[1:] + fields[:1]:  # tab goes from field to field, never to the scrolling box
            await pilot.press("tab")
            assert app.focused.id == field
        assert app.screen.query_one("#load-miss").value == "host"
        app.screen.query_one("#load-miss").value = "sometimes"
        app.screen.query_one("#load-miss").focus()
        await pilot.press("enter")
        assert "unknown miss mode 'sometimes'" in str(app.screen.query_one("#load-error").render())
        app.screen.query_one("#load-miss").value = "Auto"
        app.screen.query_one("#load-bits").value = "5"
        app.screen.query_one("#load-bits").focus()
        await pilot.press("enter")
        assert "expert bits must be 2, 3, 4, 8 or none" in str(app.screen.query_one("#load-error").render())
        app.screen.query_one("#load-bits").value = "4"
        app.screen.query_one("#load-k").value = "3"
        app.screen.query_one("#load-prefetch").value = "1"
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(loaded) == 2 and main_screen(app).backend.can_chat)
        chosen = loaded[-1].engine
        assert (loaded[-1].model, chosen.cache_size, chosen.expert_bits, chosen.prefetch) == (
            None, 3, 4, 1,
        )  # fmt: skip
        assert (chosen.policy, chosen.miss) == ("lfu", "auto")

    run(check, app)


def test_a_typed_model_is_read_before_the_model_in_use_is_unloaded(tmp_path) -> None:
    """A path or hub id typed in Load model… is resolved and described like a listed model: a wrong one is
    refused in the picker with the model in use still loaded, a right one asks for its settings."""
    import json

    from moe_tui import paths
    from moe_tui.tui.screens.models import LoadOptionsScreen, ModelPickerScreen

    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_bytes((paths.DEMO_MODEL_DIR / "config.json").read_bytes())
    loaded = []
    session = FakeSession(words=2)

    def loader(options, progress):
        from moe_tui.tui.backend import LiveBackend

        loaded.append(options)
        return LiveBackend(session)

    app, _ = make_app(session)
    app.loader = loader

    async def typed(pilot: Pilot, text: str) -> None:
        field = app.screen.query_one("#model-path")
        field.focus()
        field.value = text
        await pilot.press("enter")

    def note() -> str:
        return str(app.screen.query_one("#model-note").render())

    async def check(pilot: Pilot) -> None:
        screen = main_screen(app)
        screen.action_load_model()
        await wait_for(
            pilot, lambda: isinstance(app.screen, ModelPickerScreen) and bool(app.screen.query("#model-path"))
        )
        await typed(pilot, str(tmp_path / "nowhere"))
        await wait_for(pilot, lambda: "neither a model directory nor a model" in note(), timeout=60)
        assert isinstance(app.screen, ModelPickerScreen) and app.screen.query_one("#model-note").has_class("-problem")
        await typed(pilot, str(bert))
        await wait_for(pilot, lambda: note().startswith("bert: bert is not a causal language model"), timeout=60)
        await typed(pilot, str(config_only))  # a MoE config alone: nothing to load
        await wait_for(pilot, lambda: note().startswith(f"config-only: {config_only} has no model.safetensors"))
        assert len(loaded) == 1 and screen.backend.can_chat  # the start's load only: nothing was unloaded
        await typed(pilot, str(paths.DEMO_MODEL_DIR))
        await wait_for(pilot, lambda: isinstance(app.screen, LoadOptionsScreen), timeout=60)
        assert str(app.screen.query_one(".dialog-title").render()) == "Load demo-mixtral"
        app.screen.query_one("#load-k").focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(loaded) == 2 and screen.backend.can_chat)
        assert loaded[1].model == str(paths.DEMO_MODEL_DIR)

    run(check, app)


def test_panels_draw_a_newly_loaded_model_at_once_and_drop_one_that_is_gone() -> None:
    """A model loaded in place of another is drawn before its first token, even when its telemetry has seen as
    many events as the last one's (both fresh); after a load that fails the panels say there is no model
    instead of showing the last one's routing."""
    from moe_tui.errors import UserError
    from moe_tui.tui.backend import LiveBackend
    from moe_tui.tui.widgets.panel import SnapshotView

    first, last = FakeSession(words=2), FakeSession(words=2)
    outcomes: list[object] = [first, last, UserError("no such model")]

    def loader(options, progress):
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return LiveBackend(outcome)

    app, _ = make_app(first)
    app.loader = loader

    def views():
        return [
            panel.query_one(SnapshotView) for panel in main_screen(app).panels.values() if panel.query(SnapshotView)
        ]

    def showing(session: FakeSession) -> bool:
        return bool(views()) and all(view.snapshot is session.engine.snapshot() for view in views())

    async def check(pilot: Pilot) -> None:
        screen = main_screen(app)
        await wait_for(pilot, lambda: showing(first))
        app.load_model("another")
        await wait_for(pilot, lambda: screen.backend.can_chat and screen.backend.session is last)
        await wait_for(pilot, lambda: showing(last), timeout=2)
        await send(pilot, "a question")
        await wait_for(pilot, lambda: answered(app))
        app.load_model("elsewhere")
        await wait_for(pilot, lambda: isinstance(app.screen, ErrorScreen))
        await pilot.press("enter")
        assert {str(view.render()) for view in views()} == {"no model loaded"}
        assert screen.query_one(PromptInput).placeholder == "no model to chat with"

    run(check, app)


def test_a_worker_error_nobody_handled_is_shown_not_swallowed() -> None:
    """Workers report the failures they expect themselves; one they did not expect is still one notification
    (the model picker once said "reading its config…" for ever because its worker's ImportError vanished)."""
    app, _ = make_app(FakeSession())
    notices: list[tuple[str, str]] = []

    async def check(pilot: Pilot) -> None:
        app.notify = lambda message, **kwargs: notices.append((kwargs.get("title"), str(message)))  # type: ignore[method-assign]

        def fail() -> None:
            raise RuntimeError("the disk\nwent away")

        main_screen(app).run_worker(fail, thread=True, exit_on_error=False, group="describe-models")
        await wait_for(pilot, lambda: bool(notices))
        assert notices == [("describe-models failed", "RuntimeError: the disk went away")]

    run(check, app)


def test_a_problem_in_load_model_is_scrolled_into_view_on_a_short_terminal(tmp_path) -> None:
    """At 60x20 the model list, the field and a three-line problem do not all fit: the dialog scrolls to show
    the problem whole (it used to be cut after two lines)."""
    from moe_tui.tui.screens.models import ModelPickerScreen

    app, _ = make_app()

    async def check(pilot: Pilot) -> None:
        main_screen(app).action_load_model()
        await wait_for(
            pilot, lambda: isinstance(app.screen, ModelPickerScreen) and bool(app.screen.query("#model-path"))
        )
        field = app.screen.query_one("#model-path")
        field.focus()
        field.value = str(tmp_path / "nowhere" / "a-model-directory-with-a-rather-long-name")
        await pilot.press("enter")
        note = app.screen.query_one("#model-note")
        box = app.screen.query_one("#models-box")
        await wait_for(pilot, lambda: note.has_class("-problem"), timeout=60)
        await wait_for(pilot, lambda: box.content_region.contains_region(note.region), timeout=2)
        assert note.size.height >= 3, "the problem takes three lines here, and all three are in view"

    run(check, app, size=(60, 20))
