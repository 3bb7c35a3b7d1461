"""The conversation view: messages as Markdown, the answer being generated streamed into a Markdown widget,
and a multi-line prompt that sends with ctrl+j or alt+enter (terminals cannot tell ctrl+enter from enter)."""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Markdown, Static, TextArea
from textual.widgets.markdown import MarkdownStream

ROLE_TITLES = {"user": "you", "assistant": "model", "system": "system"}


class PromptInput(TextArea):
    """Multi-line prompt: enter starts a new line, ctrl+j or alt+enter sends."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+j,alt+enter", "submit", "Send", id="chat.send", priority=True),
    ]

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
            placeholder="Ask something… (ctrl+j or alt+enter sends)",
            **kwargs,
        )

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


class ChatLog(VerticalScroll, can_focus=True):
    """The scrolling list of messages; stays anchored to the bottom while an answer streams."""

    ALLOW_MAXIMIZE = True

    async def show_messages(self, messages: list[tuple[str, str]]) -> None:
        """Replace the log with these (role, text) messages."""
        await self.remove_children()
        if messages:
            await self.mount_all(MessageView(role, text) for role, text in messages)
        self.scroll_end(animate=False)

    async def add_message(self, role: str, text: str) -> MessageView:
        """Append one message and keep the end in view."""
        view = MessageView(role, text)
        await self.mount(view)
        self.anchor()
        return view


class ChatView(Vertical):
    """The chat pane: message log, a one-line status, the prompt; streams an answer from worker messages.

    Every answer has a serial number; pieces of an answer the user has moved away from (a new chat, another
    conversation) are ignored here (the worker still saves them to the history).
    """

    class AnswerText(Message):
        """A new piece of answer ``serial`` (posted from the generation worker)."""

        def __init__(self, serial: int, text: str) -> None:
            super().__init__()
            self.serial = serial
            self.text = text

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
        self.serial = -1
        self.streamed_pieces = 0

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

    def set_status(self, text: str) -> None:
        """Show a one-line note under the log (model state, last answer's speed)."""
        self.query_one("#chat-status", Static).update(text)

    async def show_messages(self, messages: list[tuple[str, str]]) -> None:
        """Show a whole conversation (and expect no answer)."""
        await self._close_stream()
        self.serial = -1
        await self.log_view.show_messages(messages)

    async def begin_answer(self, prompt: str, serial: int) -> None:
        """Show the user's prompt and an empty answer that answer ``serial``'s pieces will fill."""
        await self._close_stream()
        await self.log_view.add_message("user", prompt)
        await self._open_stream("", serial)

    async def continue_answer(self, text: str, serial: int) -> None:
        """Clear the log and show ``text`` as an answer that answer ``serial``'s pieces extend (a replay)."""
        await self.show_messages([])
        await self._open_stream(text, serial)

    async def _open_stream(self, text: str, serial: int) -> None:
        self._answer = await self.log_view.add_message("assistant", text)
        self._stream = Markdown.get_stream(self._answer)
        self.serial = serial
        self.streamed_pieces = 0

    async def _close_stream(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.stop()

    @on(AnswerText)
    async def _on_answer_text(self, message: AnswerText) -> None:
        if message.serial != self.serial or self._stream is None:
            return
        self.streamed_pieces += 1
        await self._stream.write(message.text)

    @on(AnswerEnded)
    async def _on_answer_ended(self, message: AnswerEnded) -> None:
        if message.serial != self.serial:
            return
        await self._close_stream()
        self.serial = -1
        if message.failed and self._answer is not None:
            self._answer.add_class("failed")
        self.set_status(message.note)
        self.log_view.scroll_end(animate=False)
