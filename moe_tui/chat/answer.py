"""One answer's life in the chat history, from its question to its last saved piece.

:meth:`Answer.begin` runs on the UI thread: the question and an empty answer are saved at once (a new
conversation is created for the first question). The generating thread calls :meth:`Answer.append` for every
piece, each committed as it arrives, so a killed process keeps what was shown. Back on the UI thread,
:meth:`Answer.end` closes it: an answer that failed before any text is removed rather than kept empty.
Without a history store (one that could not be opened) the turns are kept in memory for the session.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from moe_tui.chat.history import HistoryStore
from moe_tui.errors import UserError

Turn = dict[str, str]


@dataclass
class Answer:
    """An answer being generated and saved (see the module docstring)."""

    store: HistoryStore | None
    message_id: int | None
    memory: list[Turn]  # the session's turns when there is no store
    pieces: list[str] = field(default_factory=list)
    warning: str = ""  # why the answer is not saved, when the store refused it
    unsaved: str = ""  # why the rest of the answer is not saved, when the store failed while it streamed
    question: str | None = None  # the question it answers, when it was asked anew (not a regenerate)

    @classmethod
    def begin(
        cls,
        store: HistoryStore | None,
        conversation_id: int | None,
        model: str,
        question: str | None,
        memory: list[Turn],
    ) -> tuple[Answer, int | None]:
        """Save ``question`` (None: answering the last one again) and an empty answer; returns the answer and the
        conversation's id (a new conversation when ``conversation_id`` is None)."""
        if store is None:
            if question is not None:
                memory.append({"role": "user", "content": question})
            return cls(None, None, memory, question=question), conversation_id
        try:
            if conversation_id is None:
                conversation_id = store.create_conversation(model=model).id
            if question is not None:
                store.add_message(conversation_id, "user", question)
            message_id = store.add_message(conversation_id, "assistant", "").id
        except UserError as error:
            return cls(None, None, [], warning=f"chat history: {error}; this answer will not be saved"), conversation_id
        return cls(store, message_id, memory, question=question), conversation_id

    @property
    def text(self) -> str:
        """Everything generated so far."""
        return "".join(self.pieces)

    def append(self, piece: str) -> None:
        """Add a streamed piece (generating thread), committed to the history before returning. When the history
        cannot take it (a full disk), the answer goes on unsaved and ``unsaved`` says why: the user still reads
        it, and the pieces saved before stay."""
        self.pieces.append(piece)
        if self.store is not None and self.message_id is not None and not self.unsaved:
            try:
                self.store.append_to_message(self.message_id, piece)
            except UserError as error:
                self.unsaved = f"{error}; the rest of this answer is not saved"  # the error names the history

    def end(self, failed: bool) -> None:
        """Close the answer (UI thread): kept in memory without a store; removed when it failed before any text
        (unless the history cannot be written: then ``unsaved`` says so)."""
        if self.store is None:
            if self.text and not self.warning:
                self.memory.append({"role": "assistant", "content": self.text})
            return
        if failed and not self.text and self.message_id is not None:
            try:
                self.store.delete_message(self.message_id)
            except UserError as error:
                self.unsaved = self.unsaved or f"{error}; an empty answer stays in the chat history"
