"""Thinking told apart from the answer, whole and streamed in pieces of any size."""

from __future__ import annotations

import pytest

from moe_tui.chat.thinking import ThinkingSplitter, split_thinking

THOUGHTFUL = "<think>\nThe user asks about zip. It pairs items.\n</think>\n\nzip pairs items from iterables."


def test_a_whole_answer_splits_into_thinking_and_answer() -> None:
    assert split_thinking(THOUGHTFUL) == (
        "\nThe user asks about zip. It pairs items.\n",
        "zip pairs items from iterables.",
    )
    assert split_thinking("plain answer <think> not at the start") == ("", "plain answer <think> not at the start")
    assert split_thinking("<think>cut off while thinking") == ("cut off while thinking", "")
    assert split_thinking("<thi") == ("", "<thi")  # an answer that only looked like a tag
    assert split_thinking("") == ("", "")


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 8, 13, 100])
def test_streamed_pieces_of_any_size_split_the_same(size: int) -> None:
    splitter = ThinkingSplitter()
    thinking, answer = "", ""
    for start in range(0, len(THOUGHTFUL), size):
        more_thinking, more_answer = splitter.feed(THOUGHTFUL[start : start + size])
        thinking += more_thinking
        answer += more_answer
        assert "<" not in more_thinking or "</think>" not in thinking + more_thinking
    rest = splitter.finish()
    assert (thinking + rest[0], answer + rest[1]) == split_thinking(THOUGHTFUL)
