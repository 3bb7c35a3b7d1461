"""The main screen: chat on the left, live panels on the right, a status bar and the keys in the footer.

Data flow: the generation worker (a thread) streams text to the chat view with ``post_message`` and writes it
to the history store as it arrives; the engine folds routing events into its telemetry; a 10 Hz timer here
polls the telemetry's versioned snapshot and hands it to the visible panels, which redraw only when the
version changed. System memory is sampled in a thread worker once a second, the next sample being asked for
only after the last one was drawn; the engine's budget is read again with it (the KV cache grows with
the conversation).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

from textual import on, work
from textual.binding import BindingType
from textual.containers import Horizontal
from textual.events import Resize
from textual.message import Message
from textual.reactive import reactive
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Static

from moe_tui.chat.active import ActiveChat
from moe_tui.chat.answer import Answer
from moe_tui.chat.generation import GenerationSettings
from moe_tui.chat.history import HistoryStore
from moe_tui.config import Settings
from moe_tui.errors import UserError
from moe_tui.system import Probe, SystemSample
from moe_tui.telemetry import Snapshot, TokenEvent
from moe_tui.tui import keys
from moe_tui.tui.backend import Backend, NoBackend
from moe_tui.tui.pacing import FramePacer
from moe_tui.tui.palette import Command, MainCommands, main_commands
from moe_tui.tui.widgets.chat import AnswerFeed, ChatView, PromptInput
from moe_tui.tui.widgets.conversations import ConversationList
from moe_tui.tui.widgets.dashboard import Dashboard
from moe_tui.tui.widgets.memory import MemoryPanel
from moe_tui.tui.widgets.panel import Panel
from moe_tui.tui.widgets.params import ParamsPanel
from moe_tui.tui.widgets.statusbar import StatusBar
from moe_tui.tui.workers import ReportsWorkerErrors

if TYPE_CHECKING:
    from collections.abc import Callable

    from moe_tui.tui.app import MoeTuiApp
    from moe_tui.tui.params_view import HeldPrecisions

REFRESH_HZ = 10.0
MIN_REFRESH_HZ = 2.0
UI_CPU_BUDGET = 0.05  # share of one core the UI thread may use for drawing before redraws slow down
SAMPLE_INTERVAL_S = 1.0
MIN_WIDTH, MIN_HEIGHT = 60, 20
ONE_PANE_WIDTH = 80  # below this the chat and the panels take turns (f6 switches) ...
ONE_PANE_WIDTH_WITH_LIST = 110  # ... and below this too while the conversation list is open


class SystemSampled(Message):
    """A new system sample from the sampling worker."""

    def __init__(self, sample: SystemSample | None, error: str = "") -> None:
        super().__init__()
        self.sample = sample
        self.error = error


class GenerationFinished(Message):
    """The generation worker is done with ``answer`` (``error`` is empty when it ended normally or was stopped)."""

    def __init__(self, serial: int, answer: Answer, error: str = "") -> None:
        super().__init__()
        self.serial = serial
        self.answer = answer
        self.error = error


class ReplayEnded(Message):
    """The replayed trace has been played to its end."""


class MainScreen(ReportsWorkerErrors, Screen):
    """Chat plus dashboard; everything reachable from the keyboard."""

    COMMANDS: ClassVar[set] = {MainCommands}
    BINDINGS: ClassVar[list[BindingType]] = keys.bindings_where("main screen") + keys.bindings_where("replay")
    HORIZONTAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [
        (0, "-tiny"),
        (MIN_WIDTH, "-narrow"),
        (80, "-medium"),
        (140, "-wide"),
    ]
    VERTICAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [(0, "-short"), (MIN_HEIGHT, "-tall")]

    # What the status bar says besides the snapshot's figures; a change redraws it (watch_ methods below).
    generating: reactive[bool] = reactive(False, init=False)
    loading_note: reactive[str] = reactive("", init=False)

    def __init__(
        self, store: HistoryStore | None, probe: Probe, settings: Settings, generation: GenerationSettings
    ) -> None:
        super().__init__(id="main")
        self.store = store
        self.conversation = ActiveChat(store)
        self.probe = probe
        self.settings = settings
        self.generation = generation
        self.generation_sources: dict[str, str] = {}
        self.backend: Backend = NoBackend()
        self.editing = False  # the prompt holds the last question, to replace it when sent
        self.redraws = 0
        self.too_small = False  # below MIN_WIDTH x MIN_HEIGHT: the body is hidden and takes no keys
        self._focus_before_small: Widget | None = None
        self._serial = 0
        self._stop = threading.Event()
        self._replay_stop = threading.Event()
        self._drawn_version = -1
        self._recording_said = ""  # the last "recording stopped" notice shown
        self._sampling = True
        self._generation_idle = threading.Event()
        self._generation_idle.set()
        self.pacer = FramePacer(max_hz=REFRESH_HZ, min_hz=MIN_REFRESH_HZ, budget=UI_CPU_BUDGET)
        self.dashboard = Dashboard(settings.panel_order, settings.hidden_panels)
        self.panels: dict[str, Panel] = self.dashboard.panels

    # ----------------------------------------------------------------- layout
    def compose(self):
        """Status bar, conversation list, chat, dashboard of panels, footer."""
        yield StatusBar(id="status")
        yield Static("", id="too-small", markup=False)
        with Horizontal(id="body"):
            yield ConversationList(id="conversations")
            yield ChatView(id="chat")
            yield self.dashboard
        yield Footer()

    def on_mount(self) -> None:
        """Apply the saved layout, start polling and sampling."""
        self.set_class("chat" in self.settings.hidden_panels, "-chat-hidden")
        self.set_class(not self.dashboard.any_shown(), "-no-panels")
        self.query_one(ConversationList).display = False
        self.query_one(PromptInput).use_keys(self.moe_app.keymap)
        self.set_interval(1 / REFRESH_HZ, self.tick)
        self._request_sample()
        self.attach(self.backend)
        self.query_one(PromptInput).focus()

    @property
    def chat(self) -> ChatView:
        """The chat pane."""
        return self.query_one(ChatView)

    def palette_commands(self) -> list[Command]:
        """The command palette's entries for the screen's current state."""
        return main_commands(self)

    @property
    def moe_app(self) -> MoeTuiApp:
        """The app, with its settings and model loading."""
        return cast("MoeTuiApp", self.app)

    def _key(self, binding_id: str) -> str:
        """The key that does ``binding_id`` now (the user's keymap, else the default), for hints and notices."""
        return self.moe_app.key_for(binding_id)

    @property
    def memory_panel(self) -> MemoryPanel:
        """The Memory panel."""
        return cast(MemoryPanel, self.panels["memory"])

    @property
    def params_panel(self) -> ParamsPanel:
        """The Parameters panel."""
        return cast(ParamsPanel, self.panels["params"])

    def on_resize(self, event: Resize) -> None:
        """Lay chat and panels side by side or one at a time for the new width, and say so when the terminal is
        too small to be useful."""
        width, height = event.size
        self.update_one_pane(width)
        self.query_one("#too-small", Static).update(
            f"Terminal too small: {width}x{height}. moe-tui needs at least {MIN_WIDTH}x{MIN_HEIGHT}.\n"
            f"Enlarge the window (or reduce the font size). {self._key('app.quit')} quits."
        )
        self._set_too_small(width < MIN_WIDTH or height < MIN_HEIGHT)
        self.refresh_status()

    def _set_too_small(self, small: bool) -> None:
        """While the terminal is too small the body is disabled, so keys typed at a window the user cannot read
        neither type nor send, and the screen's bindings are off; enlarged again, focus returns where it was."""
        if small == self.too_small:
            return
        self.too_small = small
        if small:
            self._focus_before_small = self.focused
        self.query_one("#body").disabled = small
        if not small:
            before, self._focus_before_small = self._focus_before_small, None
            if before is not None and before.is_attached and before.focusable:
                before.focus()
            else:
                self.query_one(PromptInput).focus()
        self.refresh_bindings()

    def update_one_pane(self, width: int) -> None:
        """Show the chat and the panels side by side, or one at a time (f6 switches) where both would be cramped:
        under 80 columns, or under 110 while the conversation list takes 30 of them."""
        listing = self.query_one(ConversationList).display
        self.set_class(width < (ONE_PANE_WIDTH_WITH_LIST if listing else ONE_PANE_WIDTH), "-one-pane")

    # ---------------------------------------------------------------- backend
    def attach(self, backend: Backend) -> None:
        """Show a newly loaded model or trace (or none)."""
        leaving_replay = self.backend.mode == "replay" and backend is not self.backend
        if leaving_replay:  # the replay's thread must not go on writing its text into the chat
            self._replay_stop.set()
            self.call_later(self.chat.show_messages, [])  # a replayed answer is not a conversation to continue
        self.backend = backend
        self._drawn_version = -1
        self._apply_generation_defaults()
        prompt = self.query_one(PromptInput)
        prompt.disabled = not backend.can_chat
        prompt.placeholder = prompt.hint if backend.can_chat else "no model to chat with"
        if not backend.can_chat:
            self.chat.log_view.focus()
        if backend.mode == "replay":
            key = self._key
            self.chat.set_status(
                f"replay: {key('replay.faster')}/{key('replay.slower')} speed · {key('replay.pause')} pause"
                f" · {key('replay.restart')} restart"
            )
            self._start_replay()
        elif backend.can_chat:
            self.chat.set_status(f"{backend.name} ready · {self._key('chat.stop')} stops an answer")
            self.call_after_refresh(prompt.focus)
        elif self.loading_note:
            self._say_loading()
        else:
            self.chat.set_status(
                f"no model loaded · {self._key('app.palette')} → Load model…"
                f" · earlier chats: {self._key('chat.conversations')}"
            )
        if backend.snapshot() is None:  # no model: nothing of the last one stays on the panels
            note = "the model is loading…" if self.loading_note else "no model loaded"
            for panel in self.panels.values():
                panel.forget(note)
        self.memory_panel.show_budget(backend.budget())
        self._show_params()
        self.refresh_panels()

    def _show_params(self) -> None:
        panel = self.panels["params"]
        assert isinstance(panel, ParamsPanel)
        config = self.backend.model_config()
        held = None if config is None else self.backend.held_precisions()
        if config is None or held is None:
            note = "replayed trace: no model to break down" if self.backend.mode == "replay" else "no model loaded"
            panel.show_note(note)
            return
        panel.show_note("building the parameter tree…")
        self._build_params(config, held)

    @work(thread=True, exclusive=True, group="params", exit_on_error=False)
    def _build_params(self, config: Any, held: HeldPrecisions) -> None:
        from moe_tui.tui.params_view import params_tree

        try:
            root, size_of, note = params_tree(config, held)
        except Exception as error:  # a model family the breakdown does not know must not break the dashboard
            self.app.call_from_thread(self._show_built_params, config, None, None, f"no parameter breakdown: {error}")
            return
        self.app.call_from_thread(self._show_built_params, config, root, size_of, note)

    def _show_built_params(self, config: Any, root: Any, size_of: Callable[[Any], int] | None, note: str) -> None:
        if self.backend.model_config() is not config:
            return  # built for a model that has gone since: its tree must not stand for what is there now
        if root is None or size_of is None:
            self.params_panel.show_note(note)
        else:
            self.params_panel.show_tree(root, size_of, note)

    # ---------------------------------------------------------------- polling
    async def tick(self) -> None:
        """The redraw tick (paced, at most 10 Hz): held-back answer text and the panels, in one screen update."""
        if not self.pacer.due():
            return
        self.chat.min_interval = self.pacer.interval
        await self.chat.flush()
        self.refresh_panels()

    def refresh_panels(self) -> None:
        """Hand the current snapshot to visible panels; each redraws only if it has not drawn this version."""
        snapshot = self.backend.snapshot()
        if snapshot is None:
            return
        dashboard_shown = bool(self.dashboard.display)
        for panel in self.panels.values():
            if self._visible(panel, dashboard_shown) and panel.show(snapshot):
                self.redraws += 1
        if snapshot.version != self._drawn_version:
            self._drawn_version = snapshot.version
            self._show_status(snapshot)
            if snapshot.recording_stopped and snapshot.recording_stopped != self._recording_said:
                self._recording_said = snapshot.recording_stopped  # said once; the answers go on without it
                self.notify(snapshot.recording_stopped, title="Recording", severity="warning", timeout=15)

    def _visible(self, panel: Panel, dashboard_shown: bool) -> bool:
        maximized = self.maximized
        if maximized is not None:
            return maximized is panel
        return dashboard_shown and bool(panel.display) and panel.region.height > 0

    def _show_status(self, snapshot: Snapshot | None) -> None:
        if self.generating:
            activity = f"generating… ({self._key('chat.stop')} stops)"
        elif self.backend.mode == "replay":
            replay = self.backend.replay
            state = "finished" if replay.finished else "paused" if replay.paused else "playing"
            activity = f"replay ×{replay.speed:g} {state}"
        elif self.loading_note:
            activity = self.loading_note
        else:
            activity = "" if self.backend.can_chat else "no model"
        if self.has_class("-one-pane"):
            switch = f"{self._key('view.switch')} chat/panels"
            activity = f"{activity} │ {switch}" if activity else switch
        self.query_one(StatusBar).show_status(self.backend.name, self.backend.mode, snapshot, activity)

    def show_loading(self, note: str) -> None:
        """Say in the status bar that (and how far) a model is loading ("" when done)."""
        self.loading_note = note
        if self.is_mounted and note and not self.backend.can_chat:
            self._say_loading()

    def watch_generating(self) -> None:
        """An answer started or ended: the status bar says so."""
        self.refresh_status()

    def watch_loading_note(self) -> None:
        """Loading progressed: the status bar says how far."""
        self.refresh_status()

    def refresh_status(self) -> None:
        """Redraw the status bar from the current snapshot and state."""
        if self.is_mounted:
            self._show_status(self.backend.snapshot())

    def _say_loading(self) -> None:
        self.query_one(PromptInput).placeholder = "the model is loading…"
        key = self._key
        self.chat.set_status(
            f"the model is loading · earlier chats: {key('chat.conversations')} · help: {key('app.help')}"
        )

    # --------------------------------------------------------------- sampling
    def _request_sample(self) -> None:
        if self._sampling:
            self._sample_system()

    @work(thread=True, exclusive=True, group="system", exit_on_error=False)
    def _sample_system(self) -> None:
        try:
            self.post_message(SystemSampled(self.probe.sample()))
        except Exception as error:  # a probe must never take the dashboard down
            self.post_message(SystemSampled(None, error=f"{type(error).__name__}: {error}"))

    def on_system_sampled(self, message: SystemSampled) -> None:
        """Draw the sample, then schedule the next one."""
        if message.sample is not None:
            self.memory_panel.show_sample(message.sample)
            self.memory_panel.show_budget(self.backend.budget())  # the KV cache grows with the conversation
        elif message.error:
            self.notify(f"memory probe failed: {message.error}", severity="warning")
        self.set_timer(SAMPLE_INTERVAL_S, self._request_sample)

    def on_unmount(self) -> None:
        """Stop the workers' loops."""
        self.shutdown()

    def shutdown(self) -> None:
        """Ask every worker thread to end: sampling, the answer in progress, the replay."""
        self._sampling = False
        self._stop.set()
        self._replay_stop.set()

    # ------------------------------------------------------------------- chat
    @on(PromptInput.Submitted)
    async def _on_prompt(self, message: PromptInput.Submitted) -> None:
        if not self._can_answer():
            return
        if self.editing:  # the edited question replaces the last one and its answer
            self.editing = False
            if not await self._drop_last_turn(keep_question=False):
                return
        await self._answer_next(message.text)

    def _can_answer(self) -> bool:
        if not self.backend.can_chat:
            self.notify(
                f"no model is loaded: load one from the command palette ({self._key('app.palette')})",
                severity="warning",
            )
            return False
        if self.generating:
            self.notify(f"still answering: press {self._key('chat.stop')} to stop first", severity="warning")
            return False
        return True

    @property
    def conversation_id(self) -> int | None:
        """The open conversation's id in the history (None until its first question is saved)."""
        return self.conversation.id

    async def _answer_next(self, question: str | None) -> None:
        """Ask ``question`` (saved first), or with None answer the conversation's last question again."""
        history = self.conversation.turns()
        if question is not None:
            history.append({"role": "user", "content": question})
        answer = self.conversation.begin_answer(self.backend.name, question)
        if answer.warning:
            self.notify(answer.warning, severity="warning")
        self._serial += 1
        if question is not None:
            feed = await self.chat.begin_answer(question, self._serial)
        else:
            feed = await self.chat.answer_again(self._serial)
        self._stop = threading.Event()
        self.generating = True
        self._generation_idle.clear()
        self._generate(feed, self.chat, history, self.generation, answer, self._stop)

    async def action_regenerate(self) -> None:
        """Answer the last question again, replacing its answer in the chat and the history."""
        if not self._can_answer():
            return
        if await self._drop_last_turn(keep_question=True):
            if self.generation.temperature == 0:
                self.notify("temperature is 0 (greedy): the same model gives the same answer; Settings can raise it")
            await self._answer_next(None)

    def action_edit_last(self) -> None:
        """Put the last question into the prompt; sending it replaces that question and its answer."""
        if self.generating:
            self.notify(f"still answering: press {self._key('chat.stop')} to stop first", severity="warning")
            return
        question = self.conversation.last_question()
        if question is None:
            self.notify("no question to edit in this chat yet", severity="warning")
            return
        prompt = self.query_one(PromptInput)
        prompt.text = question
        prompt.focus()
        prompt.move_cursor(prompt.document.end)
        self.editing = True
        key = self._key
        self.chat.set_status(
            f"editing your last question · {key('chat.send')} resends it (replacing its answer)"
            f" · {key('chat.stop')} cancels"
        )

    async def _drop_last_turn(self, keep_question: bool) -> bool:
        """Remove the last answer (and with ``keep_question`` False the question before it) from the history and
        the screen; False (with a notice) when the chat has no question yet or the history refused."""
        try:
            left = self.conversation.drop_last_turn(keep_question)
        except UserError as error:
            self.notify(f"chat history: {error}", severity="error")
            return False
        if left is None:
            self.notify("no question in this chat yet", severity="warning")
            return False
        await self.chat.show_messages(left)
        return True

    @work(thread=True, exclusive=True, group="generate", exit_on_error=False)
    def _generate(
        self,
        feed: AnswerFeed,
        chat: ChatView,
        messages: list[dict[str, str]],
        settings: GenerationSettings,
        answer: Answer,
        stop: threading.Event,
    ) -> None:
        """Generate one answer (in a worker thread), streaming it to the chat view and into the history; one
        message back when it is done."""
        error = ""
        try:
            error, note = self._answer(feed, messages, settings, answer, stop)
            chat.post_message(ChatView.AnswerEnded(feed.serial, note, failed=bool(error)))
        finally:
            self._generation_idle.set()
        self.post_message(GenerationFinished(feed.serial, answer, error=error))

    def _answer(
        self,
        feed: AnswerFeed,
        messages: list[dict[str, str]],
        settings: GenerationSettings,
        answer: Answer,
        stop: threading.Event,
    ) -> tuple[str, str]:
        """Run the backend's generation; returns the error ("" when none) and the note the chat shows."""

        def on_text(piece: str) -> None:
            answer.append(piece)
            feed.put(piece)

        try:
            result = self.backend.generate(messages, settings, on_text, stop)
        except UserError as error:
            return str(error), f"error: {error}"
        except Exception as error:  # shown in the app; the session stays usable for the next prompt
            detail = traceback.format_exception_only(type(error), error)[-1].strip()
            return detail, f"generation failed: {detail}"
        return "", answer_note(result)

    async def on_generation_finished(self, message: GenerationFinished) -> None:
        """Back to idle; close the answer in the history; report errors. A question that failed before any of
        its answer goes back into the prompt, out of the conversation (the next question would be merged with
        it, so a question too long for the context would make every later one too long as well)."""
        self.generating = False
        answer = message.answer
        unanswered = bool(message.error) and not answer.text and answer.question is not None and not answer.warning
        answer.end(failed=bool(message.error))
        if answer.unsaved:
            self.notify(answer.unsaved, title="Chat history", severity="warning", timeout=10)
        if message.error:
            returned = unanswered and await self._return_question(answer.question or "")
            note = " · your question is back in the prompt" if returned else ""
            if returned:  # the chat was redrawn without the question, and the answer's own note with it
                self.chat.set_status(f"error: {message.error}{note}")
            self.notify(message.error + note, title="Generation failed", severity="error", timeout=8)
        if self.query_one(ConversationList).display:
            self._refresh_conversations()

    async def _return_question(self, question: str) -> bool:
        """Move ``question`` from the conversation into the prompt, before anything typed there since; False when
        it is no longer the open chat's last question (another chat was opened meanwhile) or the history refused
        (with a notice), and then it stays where it is."""
        if self.conversation.last_question() != question:
            return False
        try:
            left = self.conversation.withdraw_question()
        except UserError as error:
            self.notify(f"chat history: {error}", severity="error")
            return False
        await self.chat.show_messages(left or [])
        prompt = self.query_one(PromptInput)
        prompt.text = f"{question}\n\n{prompt.text}" if prompt.text.strip() else question
        prompt.move_cursor(prompt.document.end)
        return True

    async def stop_generation(self, timeout: float) -> None:
        """Stop the answer being generated and wait (up to ``timeout`` s) for the generating thread to return."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        while not self._generation_idle.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def action_stop(self) -> None:
        """Stop the answer being generated (or cancel editing the last question, or restore a maximised panel)."""
        if self.generating:
            self._stop.set()
            self.chat.set_status("stopping…")
        elif self.editing:
            self.editing = False
            self.query_one(PromptInput).clear()
            self.chat.set_status("edit cancelled")
        elif self.maximized is not None:
            self.minimize()

    def action_copy_answer(self) -> None:
        """Copy the selected message, or the last answer, to the clipboard."""
        self.chat.log_view.action_copy_message()

    async def action_new_chat(self) -> None:
        """Start an empty conversation (stopping an answer in progress)."""
        stopped = self._stop_for_another_chat()
        self.editing = False
        self.conversation.start_new()
        await self.chat.show_messages([])
        self.chat.set_status(f"new chat{stopped}")
        self.query_one(PromptInput).focus()
        if self.query_one(ConversationList).display:
            self._refresh_conversations()

    def action_toggle_conversations(self) -> None:
        """Show or hide the conversation list."""
        listing = self.query_one(ConversationList)
        listing.display = not listing.display
        self.set_class(listing.display, "-conversations")
        self.update_one_pane(self.size.width)
        self.refresh_status()
        if listing.display:
            self._refresh_conversations()
            listing.focus()
        else:
            self.query_one(PromptInput).focus()

    def _refresh_conversations(self) -> None:
        listing = self.query_one(ConversationList)
        if self.store is None:
            listing.show_conversations([], None)
            return
        listing.show_conversations(self.store.list_conversations(), self.conversation_id)

    @on(ConversationList.Opened)
    async def _on_conversation_opened(self, message: ConversationList.Opened) -> None:
        await self.open_conversation(message.conversation_id)

    @on(ConversationList.Requested)
    def _on_conversation_request(self, message: ConversationList.Requested) -> None:
        """Rename, delete or search conversations, or list them all again."""
        from moe_tui.tui.screens.dialogs import AskScreen, ConfirmScreen

        if self.store is None:
            self.notify("there is no chat history in this session", severity="warning")
            return
        listing = self.query_one(ConversationList)
        target = message.conversation_id
        if message.what == "all":
            self._refresh_conversations()
        elif message.what == "search":

            def search(text: str | None) -> None:
                if text:
                    hits = self.store.search(text)
                    listing.show_hits(text, hits, self.conversation_id, self._key("conversations.all"))
                    listing.focus()

            self.app.push_screen(AskScreen("Search every chat for:", listing.query_text), search)
        elif message.what == "rename" and target is not None:

            def rename(title: str | None) -> None:
                if title:
                    self._change_history(lambda: self.store.rename_conversation(target, title), f"renamed to “{title}”")

            self.app.push_screen(AskScreen("New title:", self.store.conversation(target).title), rename)
        elif message.what == "delete" and target is not None:
            title = self.store.conversation(target).title

            def delete(yes: bool | None) -> None:
                if yes:
                    self._change_history(lambda: self._delete_conversation(target), f"deleted “{title}”")

            self.app.push_screen(ConfirmScreen(f"Delete “{title}” and all its messages?"), delete)

    def _change_history(self, change: Any, note: str) -> None:
        try:
            change()
        except UserError as error:
            self.notify(str(error), severity="error")
            return
        self.notify(note)
        listing = self.query_one(ConversationList)
        if listing.query_text:
            hits = self.store.search(listing.query_text)
            listing.show_hits(listing.query_text, hits, self.conversation_id, self._key("conversations.all"))
        else:
            self._refresh_conversations()

    def _delete_conversation(self, conversation_id: int) -> None:
        if conversation_id == self.conversation_id and self.generating:
            raise UserError(f"this chat is still being answered: stop the answer first ({self._key('chat.stop')})")
        self.store.delete_conversation(conversation_id)
        if conversation_id == self.conversation_id:
            self.conversation.start_new()
            self.call_later(self.chat.show_messages, [])
            self.chat.set_status("the open chat was deleted · a new chat starts here")

    async def open_conversation(self, conversation_id: int) -> None:
        """Show a saved conversation (stopping an answer in progress)."""
        if self.store is None:
            return
        stopped = self._stop_for_another_chat()
        self.editing = False
        try:
            title, turns = self.conversation.open(conversation_id)
        except UserError as error:
            self.notify(str(error), severity="error")
            return
        await self.chat.show_messages(turns)
        self.chat.set_status(f"opened “{title}”{stopped}")

    def _stop_for_another_chat(self) -> str:
        """Stop the answer under way, if any, as another chat opens; what to add to the status line about it."""
        self._stop.set()
        return " · the answer under way was stopped (what it had said is kept)" if self.generating else ""

    def action_export(self) -> None:
        """Write the current conversation to a Markdown file."""
        from moe_tui.tui.screens.dialogs import AskScreen

        if self.store is None or self.conversation_id is None:
            self.notify("nothing to export yet: this chat has no messages", severity="warning")
            return
        conversation_id = self.conversation_id

        def export(answer: str | None) -> None:
            if answer is None:
                return
            try:
                path = self.store.export_markdown_file(conversation_id, answer)
            except UserError as error:
                self.notify(str(error), title="Export failed", severity="error")
                return
            self.notify(f"exported to {path}", title="Conversation exported")

        self.app.push_screen(
            AskScreen("Export this conversation to (a .md file or a directory):", f"{Path.cwd()}{os.sep}", extend=True),
            export,
        )

    def action_generation_settings(self) -> None:
        """Edit temperature, top-p, max new tokens, the system prompt and thinking; each shows where its value
        comes from (yours, the model's generation_config.json, or moe-tui's default)."""
        from moe_tui.tui.screens.settings import SettingsScreen

        def apply(chosen: dict[str, Any] | None) -> None:
            if chosen is not None:
                self.moe_app.remember(generation=chosen)
                self._apply_generation_defaults()
                self.notify("generation settings saved")

        screen = SettingsScreen(self.generation, self.generation_sources, self.backend.can_think)
        self.app.push_screen(screen, apply)

    def _apply_generation_defaults(self) -> None:
        """The settings answers use: the user's choices, else the model's recommendations, else the defaults."""
        from moe_tui.chat.defaults import effective_generation

        chosen = self.moe_app.settings.generation
        try:
            self.generation, self.generation_sources = effective_generation(chosen, self.backend.model_defaults())
        except UserError as error:  # the user's values and the model's do not go together
            self.notify(f"generation settings: {error}; using the model's", severity="warning")
            self.generation, self.generation_sources = effective_generation({}, self.backend.model_defaults())

    def action_open_lab(self) -> None:
        """Open the cache lab on this session's or the replayed trace."""
        from moe_tui.tui.screens.lab import LabScreen

        self.app.push_screen(LabScreen(self.backend))

    def action_load_model(self) -> None:
        """Pick a model on this machine (or type a path or hub id), then its cache size, bits, prefetch, policy
        and miss mode (the last two preset to what the running engine uses, palette switches included)."""
        from moe_tui.catalog import local_models
        from moe_tui.tui.screens.models import ModelPickerScreen

        def load(choice: tuple[str, dict[str, Any]] | None) -> None:
            if choice and self.generating:
                self.notify(
                    f"stop the answer first ({self._key('chat.stop')}), then load the model", severity="warning"
                )
            elif choice:
                spec, engine = choice
                self.moe_app.load_model(spec or None, engine=engine)

        sample = self.probe.sample()
        gpu = next((g.memory_total for g in sample.gpus if g.memory_total), None)
        entries = local_models(self.moe_app.settings.recent_models)
        running = self.backend.snapshot() if self.backend.can_chat else None
        engine = running.header if running is not None else self.moe_app.options.engine
        picker = ModelPickerScreen(entries, sample.host.ram_total, gpu, policy=engine.policy, miss=engine.miss)
        self.app.push_screen(picker, load)

    # ---------------------------------------------------------- engine tuning
    def set_cache_size(self, k: int) -> None:
        """Change k for every layer (from the next token); the engine says when k does not fit."""
        self._tune(lambda: self.backend.set_cache_size(k), f"cache size k = {k} from the next token")

    def set_policy(self, policy: str) -> None:
        """Switch the eviction policy (from the next token)."""
        self._tune(lambda: self.backend.set_policy(policy), f"policy {policy} from the next token")

    def set_prefetch(self, prefetch: int) -> None:
        """Change the prefetch depth (0 = off)."""
        note = f"prefetch {prefetch} per layer" if prefetch else "prefetch off"
        self._tune(lambda: self.backend.set_prefetch(prefetch), note)

    def set_miss(self, mode: str) -> None:
        """Choose what a missed expert does: copy, host or auto (from the next token)."""
        notes = {"copy": "misses copied into slots", "host": "misses computed on the host", "auto": "misses: auto"}
        self._tune(lambda: self.backend.set_miss(mode), f"{notes.get(mode, mode)} from the next token")

    def _tune(self, change: Any, note: str) -> None:
        try:
            change()
        except UserError as error:
            self.notify(str(error), title="Not changed", severity="error")
            return
        except (ValueError, RuntimeError) as error:
            self.notify(f"{type(error).__name__}: {error}", title="Not changed", severity="error")
            return
        self.notify(note)
        self.memory_panel.show_budget(self.backend.budget())
        self.refresh_panels()

    # ------------------------------------------------------------------ panels
    def panel_titles(self) -> dict[str, str]:
        """Panel ids and titles, chat included, in display order."""
        return {"chat": "Chat", **{panel.PANEL_ID: panel.TITLE for panel in self.dashboard.in_order()}}

    def panel_shown(self, panel_id: str) -> bool:
        """Whether a panel (or the chat) is shown."""
        if panel_id == "chat":
            return not self.has_class("-chat-hidden")
        return bool(self.panels[panel_id].display)

    def action_toggle_panel(self, panel_id: str) -> None:
        """Show or hide a panel (or the chat pane).

        The chat and the dashboard as a whole are shown or hidden by classes on the screen, never by their own
        ``display``: an inline display would override the one-pane layout's rules (f6 switches), and both would
        end up side by side in 60-79 columns.
        """
        panel = None if panel_id == "chat" else self.panels[panel_id]
        if panel is not None:
            panel.display = not panel.display
        chat_hidden = self.has_class("-chat-hidden") != (panel is None)
        panels_shown = self.dashboard.any_shown()
        if chat_hidden and not panels_shown:
            if panel is not None:
                panel.display = True
            self.notify("at least one pane stays visible", severity="warning")
            return
        self.set_class(chat_hidden, "-chat-hidden")
        self.set_class(not panels_shown, "-no-panels")
        if (panel is None and not chat_hidden) or not panels_shown:
            self.remove_class("show-panels")  # one pane at a time: show the chat brought back, not an empty dashboard
        if panel is None:  # the keys go where the eyes go: the first panel, or the prompt brought back
            first = next((shown for shown in self.dashboard.in_order() if shown.display), None)
            prompt = self.query_one(PromptInput) if self.backend.can_chat else self.chat.log_view
            self.call_after_refresh((first if chat_hidden and first is not None else prompt).focus)
        if panel is not None and panel.display:
            snapshot = self.backend.snapshot()
            if snapshot is not None:
                panel.show(snapshot)
        self._remember_layout()

    def maximize_panel(self, panel_id: str) -> None:
        """Fill the screen with one panel, or with the chat's messages (as f11 on the chat does)."""
        if not self.panel_shown(panel_id):
            self.action_toggle_panel(panel_id)
        self.maximize(self.chat.log_view if panel_id == "chat" else self.panels[panel_id], container=False)
        self._after_maximize()

    def action_toggle_maximize(self) -> None:
        """Maximise the focused panel (or the chat), or restore the layout."""
        if self.maximized is not None:
            self.minimize()
            self._drawn_version = -1
            return
        focused = self.focused
        target = None
        while focused is not None:
            if isinstance(focused, (Panel, ChatView)):
                target = focused
                break
            focused = focused.parent if isinstance(focused.parent, Widget) else None
        if target is None:
            self.notify(f"focus a panel first (tab), then {self._key('panel.maximize')}", severity="warning")
            return
        if isinstance(target, ChatView):
            self.maximize(target.log_view, container=False)
        else:
            self.maximize(target, container=False)
        self._after_maximize()

    def _after_maximize(self) -> None:
        self._drawn_version = -1
        snapshot = self.backend.snapshot()
        if isinstance(self.maximized, Panel) and snapshot is not None:
            self.maximized.show(snapshot)

    @on(Dashboard.Rearranged)
    def _on_rearranged(self) -> None:
        self._remember_layout()

    @on(Panel.HideRequested)
    def _on_hide(self, message: Panel.HideRequested) -> None:
        self.action_toggle_panel(message.panel.PANEL_ID)

    def action_switch_view(self) -> None:
        """One pane at a time (see :meth:`update_one_pane`): switch between chat and panels; side by side: move
        focus between them."""
        if self.has_class("-one-pane"):
            if self.has_class("-chat-hidden"):
                self.notify(f"the chat is hidden: {self._key('panel.chat')} shows it")
                return
            if self.has_class("-no-panels"):
                shown_by = ", ".join(self._key(f"panel.{panel}") for panel in self.panels)
                self.notify(f"every panel is hidden: {shown_by} show them")
                return
            self.toggle_class("show-panels")
        if self.focused is not None and self.chat in self.focused.ancestors_with_self:
            first = next((panel for panel in self.dashboard.in_order() if panel.display), None)
            if first is not None:
                self.call_after_refresh(first.focus)
        else:
            target = self.query_one(PromptInput) if self.backend.can_chat else self.chat.log_view
            self.call_after_refresh(target.focus)

    def _remember_layout(self) -> None:
        hidden = self.dashboard.hidden()
        if self.has_class("-chat-hidden"):
            hidden.append("chat")
        self.settings = replace(self.settings, panel_order=tuple(self.dashboard.order()), hidden_panels=tuple(hidden))
        self.moe_app.remember(panel_order=self.settings.panel_order, hidden_panels=self.settings.hidden_panels)

    def redraw_all(self) -> None:
        """Draw every panel again (the theme changed)."""
        for panel in self.panels.values():
            panel.redraw()
        self._drawn_version = -1

    # ------------------------------------------------------------------ replay
    def _start_replay(self) -> None:
        replay = self.backend.replay
        tokens = [event for event in replay.events[: replay.position] if isinstance(event, TokenEvent)]
        played = replay.answer_text(tokens)
        self._replay_stop.set()
        self._replay_stop = threading.Event()
        self._serial += 1
        self._play(self.backend, played, self._serial, self._replay_stop)

    @work(exclusive=True, group="replay-start")
    async def _play(self, backend: Backend, played: str, serial: int, stop: threading.Event) -> None:
        feed = await self.chat.continue_answer(played, serial)
        self._run_replay(backend, feed, stop)

    @work(thread=True, exclusive=True, group="replay", exit_on_error=False)
    def _run_replay(self, backend: Backend, feed: AnswerFeed, stop: threading.Event) -> None:
        """Play ``backend``'s trace (the one attached when the replay started) until it ends or ``stop`` is set."""

        def on_tokens(tokens: list[TokenEvent]) -> None:
            text = backend.replay.answer_text(tokens)
            if text:
                feed.put(text)

        backend.run(stop, on_tokens)
        if not stop.is_set():
            self.post_message(ReplayEnded())

    def on_replay_ended(self, message: ReplayEnded) -> None:
        """Say the trace is over."""
        self.notify(f"end of the trace · {self._key('replay.restart')} replays it")
        self.refresh_status()

    def action_replay_speed(self, factor: float) -> None:
        """Change the playback speed."""
        replay = self.backend.replay
        replay.speed = replay.speed * factor
        self.refresh_status()

    def action_replay_pause(self) -> None:
        """Pause or resume the playback."""
        replay = self.backend.replay
        replay.paused = not replay.paused
        self.refresh_status()

    def action_replay_restart(self) -> None:
        """Play the trace again from the start."""
        self._replay_stop.set()
        self.backend.replay.restart()
        self._start_replay()
        self.refresh_status()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """None while the terminal is too small; replay keys only while replaying; stop only while generating
        (or a panel is maximised)."""
        if self.too_small:
            return False
        if action.startswith("replay_"):
            return self.backend.mode == "replay"
        if action == "stop":
            return self.generating or self.editing or self.maximized is not None
        return True


def answer_note(result: Any) -> str:
    """The line under an answer: ``87 tokens in 1.8 s · first 0.31 s · 52.1 tok/s`` (the rate after the first
    token, as bench reports decoding), then what the chat should know: turns left out of a full context,
    prompt tokens reused from the kept cache, a stop."""
    note = f"{result.tokens} token{'' if result.tokens == 1 else 's'} in {result.seconds:.1f} s"
    if result.first_token_s is not None:
        note += f" · first {result.first_token_s:.2f} s"
    if result.decode_tokens_per_s is not None:
        note += f" · {result.decode_tokens_per_s:.1f} tok/s"
    left_out = result.dropped_turns
    if left_out:  # said early: the note is one line, cut at the chat's width
        note += f" · context full, earliest {left_out} message{'s' if left_out > 1 else ''} left out"
    if result.reused_tokens:
        note += f" · {result.reused_tokens} of {result.prompt_tokens} prompt tokens from the kept cache"
    if result.stopped:
        note += " · stopped"
    return note
