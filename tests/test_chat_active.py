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


def test_an_answer_the_history_cannot_take_goes_on_unsaved_and_keeps_what_was_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk in the middle of an answer used to end the answer with the history's error; now the answer
    goes on (the user reads it), what was saved stays, and ``unsaved`` says why the rest is not."""
    from moe_tui.errors import UserError

    with HistoryStore(tmp_path / "history.sqlite3") as store:
        chat = ActiveChat(store)
        saved = store.append_to_message
        room = {"pieces": 2}

        def append_until_full(message_id: int, text: str) -> None:
            if room["pieces"] == 0:
                raise UserError(f"chat history {store.path}: database or disk is full")
            room["pieces"] -= 1
            saved(message_id, text)

        monkeypatch.setattr(store, "append_to_message", append_until_full)
        answer = chat.begin_answer("demo", "what is a list?")
        for piece in ("a ", "sequence ", "of ", "items"):
            answer.append(piece)  # no exception
        answer.end(failed=False)
        assert answer.text == "a sequence of items"
        full = f"chat history {store.path}: database or disk is full"
        assert answer.unsaved == f"{full}; the rest of this answer is not saved"
        assert chat.turns()[-1] == {"role": "assistant", "content": "a sequence "}  # the pieces saved before


def test_closing_a_history_whose_disk_is_full_keeps_the_streamed_parts_for_the_next_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing folds the streamed parts into their messages, a write: on a full disk it raised at quit (exit
    code 2 after a whole session) though everything was committed already."""
    import sqlite3

    from moe_tui.chat import history

    path = tmp_path / "history.sqlite3"
    store = HistoryStore(path)
    conversation = store.create_conversation()
    message = store.add_message(conversation.id, "assistant")
    store.append_to_message(message.id, "kept")

    def disk_full(*args: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(history, "_fold_parts", disk_full)
    store.close()  # no exception
    monkeypatch.undo()
    with HistoryStore(path) as again:
        assert again.messages(conversation.id)[-1].content == "kept"
