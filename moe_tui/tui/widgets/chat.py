"""The conversation view: messages as Markdown, the answer being generated streamed into a Markdown widget,
and a multi-line prompt that sends with ctrl+j (terminals cannot tell ctrl+enter from enter, and most send alt+enter
as plain enter; where the terminal reports it, alt+enter sends too). Both keys, and enter's new line, follow the
user's keymap, so ``"chat.send" = "enter"`` makes enter send."""

from __future__ import annotations

import threading
import time
from typing import ClassVar

from textual import events, on
from textual.binding import BindingType
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Collapsible, Markdown, Static, TextArea
from textual.widgets.markdown import MarkdownStream

from moe_tui.chat.thinking import ThinkingSplitter, split_thinking
from moe_tui.tui import keys
from moe_tui.tui.clipboard import code_blocks, copy_notice
from moe_tui.tui.widgets.fields import KeysInOrder

ROLE_TITLES = {"user": "you", "assistant": "model", "system": "system"}


def prompt_hint(send_key: str) -> str:
    """The empty prompt's hint, naming the key that sends."""
    return f"Ask something… ({send_key} sends)"


class PromptInput(KeysInOrder, TextArea):
    """Multi-line prompt: enter starts a new line, ctrl+j (or alt+enter, where the terminal reports it) sends;
    :meth:`use_keys` sets other keys for both."""

    BINDINGS: ClassVar[list[BindingType]] = keys.bindings("chat.send")

    class Submitted(Message):
        """The user sent a prompt."""

        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, **kwargs) -> None:
        super().__init__(
            soft_wrap=True,
            show_line_numbers=False,
            compact=True,
            highlight_cursor_line=False,
            **kwargs,
        )
        self.send_keys: list[str] = []
        self.newline_keys: list[str] = []
        self.hint = ""
        self.use_keys({})

    def use_keys(self, keymap: dict[str, str]) -> None:
        """Take the send and new-line keys from the user's keymap (defaults where it has none)."""
        self.send_keys = keys.keys_in_effect(keymap, "chat.send")
        self.newline_keys = keys.keys_in_effect(keymap, "chat.newline")
        self.hint = prompt_hint(keys.display_keys(self.send_keys[0]) if self.send_keys else "nothing")
        self.placeholder = self.hint

    async def _on_key(self, event: events.Key) -> None:
        """Send and new-line keys as the keymap sets them (the text area would take enter as a new line whatever
        the keymap says); enter that is neither does nothing; every other key edits as usual."""
        if event.key not in self.send_keys and event.key not in self.newline_keys and event.key != "enter":
            return  # the text area's own handler, next in line, edits
        event.stop()
        event.prevent_default()
        if event.key in self.send_keys:
            self.action_submit()
        elif event.key in self.newline_keys:
            self.action_newline()

    def action_newline(self) -> None:
        """Start a new line at the cursor (replacing any selection)."""
        if not self.read_only:
            start, end = self.selection
            self.replace("\n", start, end, maintain_selection_offset=False)

    def action_submit(self) -> None:
        """Send the prompt (ignored when empty) and clear the input."""
        text = self.text.strip()
        if text:
            self.post_message(self.Submitted(text))
            self.clear()


class MessageView(Markdown):
    """One message of the conversation, titled by its role."""

    def __init__(self, role: str, text: str = "") -> None:
        super().__init__(text, classes=f"message {role}")
        self.role = role
        self.border_title = ROLE_TITLES.get(role, role)
        self.code_index = -1  # the code block copied last (b copies the next one)


class ThinkingView(Collapsible):
    """A reasoning model's thinking before its answer, folded (enter or a click unfolds it)."""

    def __init__(self, text: str = "") -> None:
        self.text = text
        super().__init__(Static(text, markup=False), title=self._heading(), collapsed=True, classes="thinking")

    def _heading(self) -> str:
        return f"thinking ({len(self.text.split())} words)"

    def append(self, text: str) -> None:
        """Add streamed thinking."""
        self.text += text
        self.title = self._heading()
        self.query_one(Static).update(self.text)


class ChatLog(VerticalScroll, can_focus=True):
    """The scrolling list of messages; stays anchored to the bottom while an answer streams.

    With the log focused, up and down select a message, ``c`` copies it and ``b`` its code blocks, one after
    another (through the terminal's clipboard, OSC 52, which works over SSH).
    """

    ALLOW_MAXIMIZE = True
    BINDINGS: ClassVar[list[BindingType]] = keys.bindings_where("chat log")

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.selected: MessageView | None = None

    @property
    def messages(self) -> list[MessageView]:
        """The messages shown, oldest first."""
        return list(self.query_children(MessageView))

    def action_select(self, delta: int) -> None:
        """Select the message ``delta`` places from the selected one (with none selected, from the last one, which
        the copy keys act on)."""
        messages = self.messages
        if not messages:
            return
        current = messages.index(self.selected) if self.selected in messages else len(messages) - 1
        index = current + delta if self.selected in messages or delta < 0 else current
        self._select(messages[max(0, min(index, len(messages) - 1))])

    def _select(self, view: MessageView | None) -> None:
        if self.selected is not None:
            self.selected.remove_class("-selected")
        self.selected = view
        if view is not None:
            view.add_class("-selected")
            self.scroll_to_widget(view, animate=False)

    def selected_or_last_answer(self) -> MessageView | None:
        """The selected message, else the last answer."""
        if self.selected in self.messages:
            return self.selected
        return next((view for view in reversed(self.messages) if view.role == "assistant"), None)

    def action_copy_message(self) -> None:
        """Copy the selected message (or the last answer) as Markdown."""
        view = self.selected_or_last_answer()
        if view is None or not view.source.strip():
            self.notify("nothing to copy yet", severity="warning")
            return
        self.app.copy_to_clipboard(view.source)
        what = "your question" if view.role == "user" else "the answer"
        self.notify(copy_notice(what, view.source))

    def action_copy_code(self) -> None:
        """Copy the next code block of the selected message (or of the last answer), cycling through them."""
        view = self.selected_or_last_answer()
        blocks = code_blocks(view.source) if view is not None else []
        if view is None or not blocks:
            self.notify("this message has no code block", severity="warning")
            return
        view.code_index = (view.code_index + 1) % len(blocks)
        block = blocks[view.code_index]
        self.app.copy_to_clipboard(block.code)
        self.notify(copy_notice(f"code block {view.code_index + 1} of {len(blocks)} ({block.describe()})", block.code))

    async def show_messages(self, messages: list[tuple[str, str]]) -> None:
        """Replace the log with these (role, text) messages."""
        self.selected = None
        await self.remove_children()
        views: list[Widget] = []
        for role, text in messages:
            thinking, answer = split_thinking(text) if role == "assistant" else ("", text)
            if thinking.strip():
                views.append(ThinkingView(thinking))
            views.append(MessageView(role, answer))
        if views:
            await self.mount_all(views)
        self.scroll_end(animate=False)

    async def add_message(self, role: str, text: str) -> MessageView:
        """Append one message and keep the end in view."""
        view = MessageView(role, text)
        await self.mount(view)
        self.anchor()
        return view


class AnswerFeed:
    """Hands an answer's text pieces from the generating thread to the chat view without flooding it.

    The worker calls :meth:`put` for every piece. Only a piece that finds the feed empty posts a message;
    the view then takes everything waiting at once and writes it to the Markdown stream, at once if nothing
    was written for ``min_interval`` seconds, else at the screen's next redraw (:meth:`ChatView.flush`), so
    that a fast model's text and the panels are repainted together, a bounded number of times a second.
    """

    def __init__(self, view: ChatView, serial: int) -> None:
        self._view = view
        self.serial = serial
        self._lock = threading.Lock()
        self._pieces: list[str] = []
        self.received = 0

    def put(self, piece: str) -> None:
        """Add a piece (any thread); signals the view when the feed was empty."""
        with self._lock:
            signal = not self._pieces
            self._pieces.append(piece)
            self.received += 1
        if signal:
            self._view.post_message(ChatView.AnswerText(self.serial))

    def take(self) -> str:
        """Everything waiting, joined (UI thread)."""
        with self._lock:
            text = "".join(self._pieces)
            self._pieces.clear()
        return text


class ChatView(Vertical):
    """The chat pane: message log, a one-line status, the prompt; streams an answer from worker messages.

    Every answer has a serial number; pieces of an answer the user has moved away from (a new chat, another
    conversation) are ignored here (the worker still saves them to the history).
    """

    class AnswerText(Message):
        """Text of answer ``serial`` is waiting in its :class:`AnswerFeed` (posted from the generating thread)."""

        def __init__(self, serial: int) -> None:
            super().__init__()
            self.serial = serial

    class AnswerEnded(Message):
        """Answer ``serial`` ended: ``note`` says how (tokens and speed, stopped, or the error)."""

        def __init__(self, serial: int, note: str, failed: bool = False) -> None:
            super().__init__()
            self.serial = serial
            self.note = note
            self.failed = failed

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._stream: MarkdownStream | None = None
        self._answer: MessageView | None = None
        self._splitter = ThinkingSplitter()
        self._thinking: ThinkingView | None = None
        self.serial = -1
        self.feed: AnswerFeed | None = None
        self.stream_writes = 0
        self._next_write = 0.0
        self._pending = False
        self.min_interval = 0.1

    def compose(self):
        """Log, status line, prompt."""
        yield ChatLog(id="chat-log")
        yield Static("", id="chat-status", markup=False)
        yield PromptInput(id="prompt")

    @property
    def log_view(self) -> ChatLog:
        """The message log."""
        return self.query_one(ChatLog)

    @property
    def streaming(self) -> bool:
        """Whether an answer is being streamed in."""
        return self._stream is not None

    @property
    def streamed_pieces(self) -> int:
        """Pieces the current (or last) answer's feed has received."""
        return self.feed.received if self.feed is not None else 0

    def set_status(self, text: str) -> None:
        """Show a note under the log (model state, last answer's speed), wrapped onto up to three lines."""
        self.query_one("#chat-status", Static).update(text)

    async def show_messages(self, messages: list[tuple[str, str]]) -> None:
        """Show a whole conversation (and expect no answer)."""
        await self._close_stream()
        self.serial = -1
        await self.log_view.show_messages(messages)

    async def begin_answer(self, prompt: str, serial: int) -> AnswerFeed:
        """Show the user's prompt and an empty answer; returns the feed that answer ``serial``'s pieces go to."""
        await self._close_stream()
        await self.log_view.add_message("user", prompt)
        return await self._open_stream("", serial)

    async def answer_again(self, serial: int) -> AnswerFeed:
        """Show a new, empty answer to the last question (regenerating); returns its feed."""
        await self._close_stream()
        return await self._open_stream("", serial)

    async def continue_answer(self, text: str, serial: int) -> AnswerFeed:
        """Clear the log and show ``text`` as an answer that the returned feed extends (a replay)."""
        await self.show_messages([])
        return await self._open_stream(text, serial)

    async def _open_stream(self, text: str, serial: int) -> AnswerFeed:
        self._splitter = ThinkingSplitter()
        self._thinking = None
        self._answer = await self.log_view.add_message("assistant", "")
        self._stream = Markdown.get_stream(self._answer)
        await self._write(text)
        self.serial = serial
        self.feed = AnswerFeed(self, serial)
        self.stream_writes = 0
        return self.feed

    async def _close_stream(self) -> None:
        self._pending = False
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.stop()

    @on(AnswerText)
    async def _on_answer_text(self, message: AnswerText) -> None:
        if message.serial != self.serial or self._stream is None:
            return
        if time.monotonic() >= self._next_write:
            await self._drain()
        else:
            self._pending = True

    async def flush(self) -> None:
        """Write text held back since the last write (called on the screen's panel tick)."""
        if self._pending:
            await self._drain()

    async def _drain(self) -> None:
        """Write everything waiting in the feed to the Markdown stream."""
        self._pending = False
        if self.feed is None or self._stream is None:
            return
        text = self.feed.take()
        if text:
            self.stream_writes += 1
            self._next_write = time.monotonic() + self.min_interval
            await self._write(text)

    async def _write(self, text: str, last: bool = False) -> None:
        """Write streamed text: thinking into its folded view (made when it starts), the answer to the stream."""
        thinking, answer = self._splitter.feed(text)
        if last:
            rest = self._splitter.finish()
            thinking, answer = thinking + rest[0], answer + rest[1]
        if thinking:
            if self._thinking is None:
                self._thinking = ThinkingView()
                await self.log_view.mount(self._thinking, before=self._answer)
            self._thinking.append(thinking)
        if answer and self._stream is not None:
            await self._stream.write(answer)

    @on(AnswerEnded)
    async def _on_answer_ended(self, message: AnswerEnded) -> None:
        if message.serial != self.serial:
            return
        await self._drain()
        await self._write("", last=True)
        await self._close_stream()
        self.serial = -1
        if message.failed and self._answer is not None:
            self._answer.add_class("failed")
        self.set_status(message.note)
        self.log_view.scroll_end(animate=False)
