"""A reasoning model's thinking, told apart from its answer: text between ``<think>`` and ``</think>`` at the start
of an answer (Qwen3, DeepSeek-R1 and others write it so), whole or as it streams in."""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


def split_thinking(text: str) -> tuple[str, str]:
    """``(thinking, answer)`` of a whole answer; thinking is "" when the answer does not start with ``<think>``.
    An answer cut off while thinking is all thinking."""
    splitter = ThinkingSplitter()
    thinking, answer = splitter.feed(text)
    rest_thinking, rest_answer = splitter.finish()
    return thinking + rest_thinking, answer + rest_answer


class ThinkingSplitter:
    """Splits streamed pieces into thinking and answer text, holding back only what could be the start of a tag."""

    def __init__(self) -> None:
        self._held = ""
        self._state = "start"  # start (before any text), thinking, after (the blank lines after it), answer

    @property
    def thinking(self) -> bool:
        """Whether the text so far is inside the thinking block."""
        return self._state == "thinking"

    def feed(self, piece: str) -> tuple[str, str]:
        """The thinking and answer text that ``piece`` completes (either may be "")."""
        text = self._held + piece
        self._held = ""
        if self._state == "start":
            stripped = text.lstrip()
            if OPEN.startswith(stripped):  # only whitespace or part of "<think>" so far: wait
                self._held = text
                return "", ""
            if not stripped.startswith(OPEN):
                self._state = "answer"
                return "", text
            self._state = "thinking"
            text = stripped[len(OPEN) :]
        if self._state == "thinking":
            end = text.find(CLOSE)
            if end >= 0:
                self._state = "after"
                return text[:end], self._answer(text[end + len(CLOSE) :])
            keep = _partial_suffix(text, CLOSE)
            self._held = text[len(text) - keep :] if keep else ""
            return text[: len(text) - keep], ""
        return "", self._answer(text)

    def _answer(self, text: str) -> str:
        """Answer text, without the line breaks between the thinking and the answer."""
        if self._state == "after":
            text = text.lstrip("\n")
            if text:
                self._state = "answer"
        return text

    def finish(self) -> tuple[str, str]:
        """What is still held back when the answer ends."""
        held, self._held = self._held, ""
        return (held, "") if self._state == "thinking" else ("", held)


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of ``text`` that is a proper start of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0
