"""The chat history store on real SQLite files: persistence, titles, export, crash safety, bad files."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from moe_tui import paths
from moe_tui.chat import history
from moe_tui.chat.history import DEFAULT_TITLE, SCHEMA_VERSION, HistoryStore, title_from_text
from moe_tui.errors import UserError


@pytest.fixture
def store(tmp_path: Path) -> Iterator[HistoryStore]:
    with HistoryStore(tmp_path / "history.sqlite3") as opened:
        yield opened


def test_default_location_is_created_under_the_user_data_dir() -> None:
    with HistoryStore() as store:
        assert store.path == paths.user_data_dir() / "history.sqlite3"
        store.create_conversation()
    assert store.path.is_file()


def test_messages_persist_across_reopening(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "history.sqlite3"
    with HistoryStore(path) as store:
        chat = store.create_conversation(model="demo-mixtral")
        store.add_message(chat.id, "system", "Be brief.")
        store.add_message(chat.id, "user", "What is an expert?")
        answer = store.add_message(chat.id, "assistant")
        for piece in ["An ", "expert ", "is a ", "small MLP."]:
            store.append_to_message(answer.id, piece)
    with HistoryStore(path) as store:
        [chat] = store.list_conversations()
        assert chat.model == "demo-mixtral"
        messages = store.messages(chat.id)
    assert [(m.role, m.content) for m in messages] == [
        ("system", "Be brief."),
        ("user", "What is an expert?"),
        ("assistant", "An expert is a small MLP."),
    ]
    assert all(m.conversation_id == chat.id for m in messages)
    assert messages[0].created_at <= messages[1].created_at <= messages[2].created_at


def _raw(path: Path, query: str) -> list[tuple]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(query).fetchall()
    finally:
        connection.close()


def test_streamed_parts_are_folded_into_their_message(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    store = HistoryStore(path)
    chat = store.create_conversation()
    store.add_message(chat.id, "user", "q1")
    answer = store.add_message(chat.id, "assistant", "Start: ")
    for piece in ["a", "b", "", "c"]:
        store.append_to_message(answer.id, piece)
    assert _raw(path, "SELECT count(*) FROM message_parts") == [(3,)]
    assert store.messages(chat.id)[-1].content == "Start: abc"
    store.add_message(chat.id, "user", "q2")
    assert _raw(path, "SELECT count(*) FROM message_parts") == [(0,)]
    assert _raw(path, f"SELECT content FROM messages WHERE id = {answer.id}") == [("Start: abc",)]

    second = store.add_message(chat.id, "assistant")
    store.append_to_message(second.id, "xyz")
    store.close()
    store.close()
    assert _raw(path, f"SELECT content FROM messages WHERE id = {second.id}") == [("xyz",)]
    assert _raw(path, "SELECT count(*) FROM message_parts") == [(0,)]


def test_database_uses_wal_and_records_its_schema_version(store: HistoryStore) -> None:
    store.create_conversation()
    connection = sqlite3.connect(store.path)
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 1
    finally:
        connection.close()


def test_title_comes_from_the_first_user_message_only(store: HistoryStore) -> None:
    chat = store.create_conversation()
    assert chat.title == DEFAULT_TITLE
    store.add_message(chat.id, "system", "You are a pirate.")
    assert store.conversation(chat.id).title == DEFAULT_TITLE
    store.add_message(chat.id, "user", "  How do\n\nexperts   get offloaded?  ")
    store.add_message(chat.id, "user", "Second question")
    assert store.conversation(chat.id).title == "How do experts get offloaded?"


def test_a_chosen_title_is_kept(store: HistoryStore) -> None:
    chat = store.create_conversation(title="Experiments")
    store.add_message(chat.id, "user", "hello")
    assert store.conversation(chat.id).title == "Experiments"


def test_long_titles_are_cut_at_a_word_boundary() -> None:
    title = title_from_text("word " * 40, limit=30)
    assert len(title) <= 30
    assert title.endswith("word…")
    assert title_from_text("short one") == "short one"


def test_list_is_newest_first_and_rename_and_delete_work(store: HistoryStore) -> None:
    first = store.create_conversation()
    second = store.create_conversation()
    assert [c.id for c in store.list_conversations()] == [second.id, first.id]
    store.add_message(first.id, "user", "bump")
    assert [c.id for c in store.list_conversations()] == [first.id, second.id]

    store.rename_conversation(second.id, "  Renamed\tchat ")
    assert store.conversation(second.id).title == "Renamed chat"
    store.add_message(second.id, "user", "does not replace a chosen title")
    assert store.conversation(second.id).title == "Renamed chat"

    store.delete_conversation(first.id)
    assert [c.id for c in store.list_conversations()] == [second.id]
    assert store.messages(first.id) == []


def test_bad_requests_give_user_errors(store: HistoryStore) -> None:
    chat = store.create_conversation()
    with pytest.raises(UserError, match="role"):
        store.add_message(chat.id, "robot", "beep")
    with pytest.raises(UserError, match="no conversation #999"):
        store.add_message(999, "user", "hello")
    with pytest.raises(UserError, match="empty"):
        store.rename_conversation(chat.id, "   ")
    with pytest.raises(UserError, match="no conversation"):
        store.rename_conversation(999, "x")
    answer = store.add_message(chat.id, "assistant")
    store.delete_conversation(chat.id)
    with pytest.raises(UserError, match="no longer"):
        store.append_to_message(answer.id, "late text")


def test_delete_message_removes_only_that_message(store: HistoryStore) -> None:
    chat = store.create_conversation()
    question = store.add_message(chat.id, "user", "q")
    failed = store.add_message(chat.id, "assistant")
    store.delete_message(failed.id)
    assert [m.id for m in store.messages(chat.id)] == [question.id]


def test_export_markdown(store: HistoryStore) -> None:
    chat = store.create_conversation(model="org/tiny-moe")
    store.add_message(chat.id, "user", "Explain *prefetch*.")
    answer = store.add_message(chat.id, "assistant")
    store.append_to_message(answer.id, "It loads the next layer's experts early.\n\n- one\n- two\n")
    store.add_message(chat.id, "user", "Thanks")
    store.add_message(chat.id, "assistant")
    text = store.export_markdown(chat.id)
    lines = text.split("\n")
    assert lines[0] == "# Explain *prefetch*."
    assert lines[2].startswith("Model: `org/tiny-moe` · Started ")
    body = text.split("\n\n", 2)[2]
    assert body == (
        "## User\n\nExplain *prefetch*.\n\n"
        "## Assistant\n\nIt loads the next layer's experts early.\n\n- one\n- two\n\n"
        "## User\n\nThanks\n\n"
        "## Assistant\n\n*(empty)*\n"
    )
    with pytest.raises(UserError, match="no conversation"):
        store.export_markdown(12345)


def test_export_to_a_file_or_directory(store: HistoryStore, tmp_path: Path) -> None:
    chat = store.create_conversation()
    store.add_message(chat.id, "user", "Cache sizes: k=2 vs k=4?")
    out = tmp_path / "exports"
    out.mkdir()
    first = store.export_markdown_file(chat.id, out)
    second = store.export_markdown_file(chat.id, out)
    assert (first.name, second.name) == ("cache-sizes-k-2-vs-k-4.md", "cache-sizes-k-2-vs-k-4-2.md")
    assert first.read_text(encoding="utf-8") == store.export_markdown(chat.id)

    named = tmp_path / "chat.md"
    named.write_text("keep me", encoding="utf-8")
    with pytest.raises(UserError, match="already exists"):
        store.export_markdown_file(chat.id, named)
    assert named.read_text(encoding="utf-8") == "keep me"
    assert store.export_markdown_file(chat.id, named, overwrite=True) == named
    assert named.read_text(encoding="utf-8").startswith("# Cache sizes")
    with pytest.raises(UserError, match="cannot write"):
        store.export_markdown_file(chat.id, tmp_path / "missing-dir" / "x.md")


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_export_the_disk_cannot_hold_leaves_no_cut_off_file(
    store: HistoryStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overwrite: bool
) -> None:
    """A full disk cut the export off where it stopped (and, with overwrite, had already emptied the old file)."""
    import errno

    chat = store.create_conversation()
    store.add_message(chat.id, "user", "a question " * 50)
    target = tmp_path / "chat.md"
    if overwrite:
        target.write_text("the export before", encoding="utf-8")

    def full(descriptor: int) -> None:  # the text is written (buffered), the disk cannot hold it
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UserError, match=r"cannot write .*chat\.md: No space left on device"):
        store.export_markdown_file(chat.id, target, overwrite=overwrite)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("chat")) == (["chat.md"] if overwrite else [])
    if overwrite:
        assert target.read_text(encoding="utf-8") == "the export before"


def test_store_can_be_shared_between_threads(store: HistoryStore) -> None:
    import threading

    chat = store.create_conversation()
    answers = [store.add_message(chat.id, "assistant") for _ in range(4)]

    def write(message_id: int) -> None:
        for index in range(50):
            store.append_to_message(message_id, f"{index},")

    threads = [threading.Thread(target=write, args=(answer.id,)) for answer in answers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = "".join(f"{index}," for index in range(50))
    assert [m.content for m in store.messages(chat.id)] == [expected] * 4


@pytest.mark.parametrize(
    "content",
    [b"this is not a database, it is a text file\n" * 50, b"SQLite format 3\x00" + b"\xff" * 4000],
    ids=["text-file", "damaged-header"],
)
def test_unreadable_file_gives_user_error_and_is_left_untouched(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "history.sqlite3"
    path.write_bytes(content)
    before = path.stat().st_mtime_ns
    with pytest.raises(UserError, match="history"):
        HistoryStore(path)
    assert path.read_bytes() == content
    assert path.stat().st_mtime_ns == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.sqlite3"]


def test_foreign_or_newer_databases_are_refused_unchanged(tmp_path: Path) -> None:
    foreign = tmp_path / "other.sqlite3"
    connection = sqlite3.connect(foreign)
    connection.execute("CREATE TABLE notes (text TEXT)")
    connection.commit()
    connection.close()
    before = foreign.read_bytes()
    with pytest.raises(UserError, match="not a moe-tui chat history"):
        HistoryStore(foreign)
    assert foreign.read_bytes() == before

    newer = tmp_path / "newer.sqlite3"
    HistoryStore(newer).close()
    connection = sqlite3.connect(newer)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.commit()
    connection.close()
    with pytest.raises(UserError, match="newer moe-tui"):
        HistoryStore(newer)


def test_path_that_is_a_directory_gives_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="directory"):
        HistoryStore(tmp_path)


_WRITER = textwrap.dedent(
    """
    import sys, time
    from moe_tui.chat.history import HistoryStore

    store = HistoryStore(sys.argv[1])
    chat = store.create_conversation(model="writer")
    store.add_message(chat.id, "user", "Tell me a long story")
    answer = store.add_message(chat.id, "assistant")
    index = 0
    while True:
        piece = f"piece{index} "
        store.append_to_message(answer.id, piece)
        print(piece, flush=True)  # shown to the user only once committed
        index += 1
        time.sleep(0.002)
    """
)


def test_text_shown_before_sigkill_is_in_the_database(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    process = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    shown = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        while len(shown) < 40 and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            shown.append(line.rstrip("\n"))
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert len(shown) == 40, "the writer stopped before streaming"

    assert _raw(path, "SELECT count(*) FROM message_parts") != [(0,)]
    with HistoryStore(path) as store:
        assert _raw(path, "SELECT count(*) FROM message_parts") == [(0,)], "opening folds the parts left behind"
        [chat] = store.list_conversations()
        user, answer = store.messages(chat.id)
    assert (chat.title, user.content) == ("Tell me a long story", "Tell me a long story")
    assert answer.content.startswith("".join(shown))
    pieces = answer.content.split()
    assert pieces == [f"piece{index}" for index in range(len(pieces))]


# --- search -------------------------------------------------------------------------------------------------


def test_search_finds_conversations_by_their_words_best_first_and_by_title(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite3")
    cooking = store.create_conversation().id
    store.add_message(cooking, "user", "How long do I boil an egg?")
    store.add_message(cooking, "assistant", "Boil the egg for seven minutes.")
    python = store.create_conversation().id
    store.add_message(python, "user", "What does zip() do in Python?")
    answer = store.add_message(python, "assistant", "")
    store.append_to_message(answer.id, "zip pairs items ")
    store.append_to_message(answer.id, "from several iterables.")
    store.add_message(python, "user", "And enumerate?")  # folds the streamed parts into the answer
    store.rename_conversation(python, "Iterables")

    hits = store.search("iterables")
    assert [hit.conversation.id for hit in hits] == [python]
    assert "[iterables]" in hits[0].snippet
    assert [hit.conversation.id for hit in store.search("egg")] == [cooking]
    assert [hit.conversation.id for hit in store.search("boil minutes")] == [cooking]  # every word
    assert store.search("boil python") == []
    assert [hit.conversation.id for hit in store.search("enum")] == [python]  # the last word as a prefix
    assert [hit.conversation.id for hit in store.search("Iterab")] == [python]
    assert [hit.conversation.id for hit in store.search("zip()")] == [python]
    assert store.search("()") == [] and store.search("   ") == []
    store.delete_conversation(cooking)
    assert store.search("egg") == []  # deleting a conversation removes its messages from the index
    store.close()
    reopened = HistoryStore(tmp_path / "h.sqlite3")
    assert [hit.conversation.id for hit in reopened.search("several")] == [python]


def test_a_version_1_history_gets_its_search_index_on_opening(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    connection = sqlite3.connect(path)
    history._migrate_to_1(connection)
    connection.execute("INSERT INTO conversations VALUES (1, 'old chat', 0, 'm', 1.0, 1.0)")
    connection.execute("INSERT INTO messages VALUES (1, 1, 'user', 'a question about generators', 1.0)")
    connection.execute("PRAGMA user_version = 1")
    connection.commit()
    connection.close()
    store = HistoryStore(path)
    assert [hit.conversation.title for hit in store.search("generators")] == ["old chat"]


# --- an answer's life ------------------------------------------------------------------------------------------


def test_an_answer_is_saved_from_its_question_to_its_last_piece(tmp_path: Path) -> None:
    from moe_tui.chat.answer import Answer

    store = HistoryStore(tmp_path / "h.sqlite3")
    answer, conversation = Answer.begin(store, None, "demo", "what is a slot?", [])
    assert [(m.role, m.content) for m in store.messages(conversation)] == [
        ("user", "what is a slot?"),
        ("assistant", ""),
    ]
    answer.append("A place ")
    answer.append("for an expert.")
    assert store.messages(conversation)[-1].content == "A place for an expert." == answer.text
    answer.end(failed=False)
    again, same = Answer.begin(store, conversation, "demo", None, [])  # regenerate: no new question
    again.end(failed=True)  # failed before any text: the empty answer goes
    assert same == conversation and len(store.messages(conversation)) == 2


def test_without_a_store_the_turns_are_kept_for_the_session() -> None:
    from moe_tui.chat.answer import Answer

    memory: list[dict[str, str]] = []
    answer, conversation = Answer.begin(None, None, "demo", "hello?", memory)
    answer.append("hi")
    answer.end(failed=False)
    assert conversation is None and memory == [
        {"role": "user", "content": "hello?"},
        {"role": "assistant", "content": "hi"},
    ]
