"""The conversation open in the chat: its turns, kept in the history store, or in memory for the session when
there is no store (one that could not be opened).

The screen asks it for the turns a prompt is built from, starts each answer through it (:class:`Answer`), and
has it drop the last turn for regenerate and edit (and a question that failed before its answer began), so the two
places turns can live are handled here only.
"""

from __future__ import annotations

from moe_tui.chat.answer import Answer, Turn
from moe_tui.chat.history import HistoryStore


class ActiveChat:
    """The open conversation: ``id`` is its row in ``store`` (None until its first question is saved)."""

    def __init__(self, store: HistoryStore | None) -> None:
        self.store = store
        self.id: int | None = None
        self._memory: list[Turn] = []

    def start_new(self) -> None:
        """An empty conversation; the old one stays in the history."""
        self.id = None
        self._memory = []

    def open(self, conversation_id: int) -> tuple[str, list[tuple[str, str]]]:
        """Make a saved conversation the open one; its title and turns (UserError when it cannot be read)."""
        if self.store is None:
            raise ValueError("there is no history store to open a conversation from")
        messages = self.store.messages(conversation_id)
        title = self.store.conversation(conversation_id).title
        self.id = conversation_id
        self._memory = []
        return title, [(item.role, item.content) for item in messages]

    def turns(self) -> list[Turn]:
        """The turns a prompt is built from, oldest first (answers that never got any text left out)."""
        if self.store is None or self.id is None:
            return [dict(turn) for turn in self._memory]
        return [
            {"role": item.role, "content": item.content}
            for item in self.store.messages(self.id)
            if item.content or item.role != "assistant"
        ]

    def last_question(self) -> str | None:
        """The text of the last question asked here (None before the first)."""
        return next((turn["content"] for turn in reversed(self.turns()) if turn["role"] == "user"), None)

    def begin_answer(self, model: str, question: str | None) -> Answer:
        """Save ``question`` (None: the last one is answered again) and start its answer; the first question
        of a new conversation creates it in the store."""
        answer, self.id = Answer.begin(self.store, self.id, model, question, self._memory)
        return answer

    def drop_last_turn(self, keep_question: bool) -> list[tuple[str, str]] | None:
        """Remove the last answer, and without ``keep_question`` the question before it too; returns the turns
        left to show, or None when there is no question yet (nothing changes). UserError when the store
        refuses."""
        saved = self.store.messages(self.id) if self.store is not None and self.id is not None else None
        turns = (
            [(m.role, m.content) for m in saved]
            if saved is not None
            else [(t["role"], t["content"]) for t in self._memory]
        )
        last_question = max((i for i, (role, _) in enumerate(turns) if role == "user"), default=None)
        if last_question is None:
            return None
        cut = last_question + 1 if keep_question else last_question
        if saved is not None and self.store is not None:
            for message in saved[cut:]:
                self.store.delete_message(message.id)
        else:
            del self._memory[cut:]
        return [(role, text) for role, text in turns[:cut] if text or role != "assistant"]

    def withdraw_question(self) -> list[tuple[str, str]] | None:
        """Take back the last question, one the model never answered (an error came before any text): it leaves
        the conversation, so the next question is not merged with it, and a conversation it leaves empty leaves
        the history. Returns the turns left to show (None when there was no question)."""
        left = self.drop_last_turn(keep_question=False)
        if left == [] and self.store is not None and self.id is not None:
            self.store.delete_conversation(self.id)
            self.start_new()
        return left
