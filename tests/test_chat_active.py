"""The open conversation: the same turns, answers and edits whether it lives in a SQLite file or in memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from moe_tui.chat.active import ActiveChat
from moe_tui.chat.history import HistoryStore


def ask(chat: ActiveChat, question: str | None, reply: str) -> None:
    answer = chat.begin_answer("demo", question)
    for piece in reply.split(" "):
        answer.append(piece + " ")
    answer.end(failed=False)


@pytest.fixture(params=["sqlite", "memory"])
def chat(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "memory":
        yield ActiveChat(None)
        return
    with HistoryStore(tmp_path / "history.sqlite3") as store:
        yield ActiveChat(store)


def test_turns_follow_the_questions_and_answers(chat: ActiveChat) -> None:
    assert chat.turns() == [] and chat.last_question() is None
    ask(chat, "what is an expert?", "a feed-forward block")
    ask(chat, "and top-k?", "the experts each token uses")
    assert [turn["role"] for turn in chat.turns()] == ["user", "assistant", "user", "assistant"]
    assert chat.turns()[1]["content"] == "a feed-forward block "
    assert chat.last_question() == "and top-k?"
    assert (chat.id is not None) == (chat.store is not None)  # a saved chat gets its row at the first question


def test_dropping_the_last_turn_for_regenerate_and_edit(chat: ActiveChat) -> None:
    assert chat.drop_last_turn(keep_question=True) is None  # no question yet: nothing changes
    ask(chat, "first", "one")
    ask(chat, "second", "two")
    assert chat.drop_last_turn(keep_question=True) == [
        ("user", "first"), ("assistant", "one "), ("user", "second"),
    ]  # fmt: skip
    ask(chat, None, "again")  # regenerate: the same question answered anew
    assert [turn["content"] for turn in chat.turns()] == ["first", "one ", "second", "again "]
    assert chat.drop_last_turn(keep_question=False) == [("user", "first"), ("assistant", "one ")]
    assert chat.last_question() == "first"


def test_a_failed_answer_without_text_leaves_no_empty_turn(chat: ActiveChat) -> None:
    answer = chat.begin_answer("demo", "hello?")
    answer.end(failed=True)
    assert chat.turns() == [{"role": "user", "content": "hello?"}]


def test_open_and_start_new(tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "history.sqlite3") as store:
        chat = ActiveChat(store)
        ask(chat, "kept?", "yes")
        first = chat.id
        chat.start_new()
        assert chat.id is None and chat.turns() == []
        ask(chat, "other", "chat")
        title, turns = chat.open(first)
        assert chat.id == first and turns == [("user", "kept?"), ("assistant", "yes ")]
        assert title == store.conversation(first).title


def test_a_question_that_failed_is_taken_back(chat: ActiveChat) -> None:
    ask(chat, "first", "one")
    chat.begin_answer("demo", "far too long").end(failed=True)
    assert chat.withdraw_question() == [("user", "first"), ("assistant", "one ")]
    assert chat.turns() == [{"role": "user", "content": "first"}, {"role": "assistant", "content": "one "}]
    chat.start_new()
    chat.begin_answer("demo", "far too long").end(failed=True)
    assert chat.withdraw_question() == [] and chat.id is None
    if chat.store is not None:  # the chat it began is not left behind empty
        assert [conversation.title for conversation in chat.store.list_conversations()] == ["first"]
