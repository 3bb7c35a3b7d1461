"""Conversations and messages kept in a SQLite file, written as they arrive so a killed process loses nothing shown.

Durability: the database runs in WAL mode with ``synchronous=NORMAL`` and every call that changes something
commits before it returns, :meth:`HistoryStore.append_to_message` included (one commit per streamed piece). A
commit in that mode is a ``write()`` into the WAL file without an ``fsync``, so it survives the process being
killed (SIGKILL, a dropped SSH session); only an operating-system crash or power loss can drop the last
commits, and the file then stays consistent. So that a commit per piece stays cheap however long the answer
grows, a streamed piece is inserted as a small row of ``message_parts`` rather than rewriting the message
(which costs time and WAL bytes in proportion to its length); the parts are folded into their message when the
conversation gets its next message, and when a store is opened or closed. Readers always see the parts joined.

Search uses an FTS5 index of the messages kept in step by triggers (schema version 2).

The schema version lives in ``PRAGMA user_version``; :data:`_MIGRATIONS` takes a file from any older version to
the current one. A file that is not a moe-tui history database, is damaged, or was written by a newer moe-tui
raises :class:`~moe_tui.errors.UserError` and is never modified.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from moe_tui import paths
from moe_tui.errors import UserError

DEFAULT_TITLE = "New chat"
DATABASE_NAME = "history.sqlite3"
ROLES = ("system", "user", "assistant")
TITLE_LENGTH = 60
_ROLE_HEADINGS = {"system": "System", "user": "User", "assistant": "Assistant"}


@dataclass(frozen=True)
class Conversation:
    """One chat: its title, the model it was held with, and when it started and last changed (Unix seconds)."""

    id: int
    title: str
    model: str
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class SearchHit:
    """A conversation that matches a search, with the matching text around the first match (``[`` ``]`` mark the
    words found)."""

    conversation: Conversation
    snippet: str


@dataclass(frozen=True)
class Message:
    """One turn of a conversation; ``role`` is ``system``, ``user`` or ``assistant``."""

    id: int
    conversation_id: int
    role: str
    content: str
    created_at: float


def _migrate_to_1(connection: sqlite3.Connection) -> None:
    connection.execute(
        """CREATE TABLE conversations (
            id INTEGER PRIMARY KEY,
            title TEXT NOT NULL,
            title_is_automatic INTEGER NOT NULL,
            model TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )"""
    )
    connection.execute(
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            content TEXT NOT NULL,
            created_at REAL NOT NULL
        )"""
    )
    connection.execute(
        """CREATE TABLE message_parts (
            id INTEGER PRIMARY KEY,
            message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            text TEXT NOT NULL
        )"""
    )
    connection.execute("CREATE INDEX messages_by_conversation ON messages(conversation_id, id)")
    connection.execute("CREATE INDEX parts_by_message ON message_parts(message_id, id)")
    connection.execute("CREATE INDEX conversations_by_activity ON conversations(updated_at, id)")


def _migrate_to_2(connection: sqlite3.Connection) -> None:
    """Full-text search over messages (SQLite FTS5), kept in step with ``messages`` by triggers; an SQLite built
    without FTS5 gets no index, and :meth:`HistoryStore.search` falls back to plain substring matching."""
    try:
        connection.execute(
            "CREATE VIRTUAL TABLE message_search USING fts5(content, content='messages', content_rowid='id')"
        )
    except sqlite3.OperationalError:
        return
    connection.execute(
        """CREATE TRIGGER message_search_insert AFTER INSERT ON messages BEGIN
            INSERT INTO message_search(rowid, content) VALUES (new.id, new.content);
        END"""
    )
    connection.execute(
        """CREATE TRIGGER message_search_delete AFTER DELETE ON messages BEGIN
            INSERT INTO message_search(message_search, rowid, content) VALUES ('delete', old.id, old.content);
        END"""
    )
    connection.execute(
        """CREATE TRIGGER message_search_update AFTER UPDATE OF content ON messages BEGIN
            INSERT INTO message_search(message_search, rowid, content) VALUES ('delete', old.id, old.content);
            INSERT INTO message_search(rowid, content) VALUES (new.id, new.content);
        END"""
    )
    connection.execute("INSERT INTO message_search(message_search) VALUES ('rebuild')")


# _MIGRATIONS[n] takes a database from schema version n to n + 1; a new version appends one function.
_MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_migrate_to_1, _migrate_to_2)
SCHEMA_VERSION = len(_MIGRATIONS)


def default_path() -> Path:
    """Where the history lives unless told otherwise: the user's data directory (XDG on Linux)."""
    return paths.user_data_dir() / DATABASE_NAME


def title_from_text(text: str, limit: int = TITLE_LENGTH) -> str:
    """A one-line title made from a message: whitespace collapsed, cut at a word boundary with an ellipsis."""
    line = " ".join(text.split())
    if len(line) <= limit:
        return line
    cut = line[: limit - 1]
    if " " in cut[limit // 2 :]:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip() + "…"


class HistoryStore:
    """The chat history database; safe to share between the UI thread and a generation worker."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_path()
        self._lock = threading.RLock()
        self._closed = False
        self._connection = self._open()

    def create_conversation(self, title: str = DEFAULT_TITLE, model: str = "") -> Conversation:
        """Start an empty conversation; the default title is replaced by the first user message."""
        title = _clean_title(title)
        now = time.time()
        with self._write() as connection:
            cursor = connection.execute(
                "INSERT INTO conversations (title, title_is_automatic, model, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (title, int(title == DEFAULT_TITLE), model, now, now),
            )
        return Conversation(id=int(cursor.lastrowid or 0), title=title, model=model, created_at=now, updated_at=now)

    def conversation(self, conversation_id: int) -> Conversation:
        """One conversation by id; :class:`UserError` when there is none."""
        with self._read() as connection:
            row = connection.execute(
                "SELECT id, title, model, created_at, updated_at FROM conversations WHERE id = ?", (conversation_id,)
            ).fetchone()
        if row is None:
            raise UserError(f"there is no conversation #{conversation_id} in the chat history")
        return Conversation(*row)

    def list_conversations(self) -> list[Conversation]:
        """Every conversation, the most recently active first."""
        with self._read() as connection:
            rows = connection.execute(
                "SELECT id, title, model, created_at, updated_at FROM conversations ORDER BY updated_at DESC, id DESC"
            ).fetchall()
        return [Conversation(*row) for row in rows]

    def messages(self, conversation_id: int) -> list[Message]:
        """The messages of a conversation in the order they were added."""
        with self._read() as connection:
            rows = connection.execute(
                "SELECT id, conversation_id, role, content, created_at FROM messages"
                " WHERE conversation_id = ? ORDER BY id",
                (conversation_id,),
            ).fetchall()
            parts = _parts_by_message(connection, conversation_id)
        return [
            Message(message_id, conversation, role, content + "".join(parts.get(message_id, ())), created_at)
            for message_id, conversation, role, content, created_at in rows
        ]

    def add_message(self, conversation_id: int, role: str, content: str = "") -> Message:
        """Append a message (committed at once); the first user message names a conversation still untitled."""
        if role not in ROLES:
            raise UserError(f"unknown message role {role!r}; expected one of {', '.join(ROLES)}")
        now = time.time()
        with self._write() as connection:
            row = connection.execute(
                "SELECT title_is_automatic FROM conversations WHERE id = ?", (conversation_id,)
            ).fetchone()
            if row is None:
                raise UserError(f"there is no conversation #{conversation_id} in the chat history")
            _fold_parts(connection, conversation_id)
            cursor = connection.execute(
                "INSERT INTO messages (conversation_id, role, content, created_at) VALUES (?, ?, ?, ?)",
                (conversation_id, role, content, now),
            )
            connection.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, conversation_id))
            title = title_from_text(content)
            if role == "user" and row[0] and title:
                connection.execute(
                    "UPDATE conversations SET title = ?, title_is_automatic = 0 WHERE id = ?", (title, conversation_id)
                )
        return Message(
            id=int(cursor.lastrowid or 0), conversation_id=conversation_id, role=role, content=content, created_at=now
        )

    def append_to_message(self, message_id: int, text: str) -> None:
        """Add streamed text to the end of a message, committed before returning (see the module docstring)."""
        if not text:
            return
        with self._write() as connection:
            try:
                connection.execute("INSERT INTO message_parts (message_id, text) VALUES (?, ?)", (message_id, text))
            except sqlite3.IntegrityError:
                raise UserError(
                    f"message #{message_id} is no longer in the chat history (was its chat deleted?)"
                ) from None

    def delete_message(self, message_id: int) -> None:
        """Remove one message (for example an empty answer whose generation failed)."""
        with self._write() as connection:
            connection.execute("DELETE FROM messages WHERE id = ?", (message_id,))

    def rename_conversation(self, conversation_id: int, title: str) -> None:
        """Give a conversation a title of the user's choosing; it is never replaced automatically afterwards."""
        title = _clean_title(title)
        with self._write() as connection:
            cursor = connection.execute(
                "UPDATE conversations SET title = ?, title_is_automatic = 0 WHERE id = ?", (title, conversation_id)
            )
            if cursor.rowcount == 0:
                raise UserError(f"there is no conversation #{conversation_id} in the chat history")

    def delete_conversation(self, conversation_id: int) -> None:
        """Remove a conversation and all its messages."""
        with self._write() as connection:
            connection.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    def search(self, text: str, limit: int = 50) -> list[SearchHit]:
        """Conversations whose messages contain every word of ``text`` (the last word also as a prefix), best
        matches first, then those whose title contains ``text``. Words are matched whole by SQLite FTS5 (any case,
        accents kept); without FTS5, as substrings. Text still streaming into an answer is found once the answer
        is done."""
        words = text.split()
        if not words:
            return []
        with self._read() as connection:
            rows = None
            if _has_table(connection, "message_search"):
                query = " ".join('"' + word.replace('"', '""') + '"' for word in words) + "*"
                try:
                    rows = connection.execute(
                        "SELECT m.conversation_id, snippet(message_search, 0, '[', ']', '…', 10) FROM message_search"
                        " JOIN messages m ON m.id = message_search.rowid WHERE message_search MATCH ? ORDER BY rank",
                        (query,),
                    ).fetchall()
                except sqlite3.OperationalError:  # words FTS5 cannot take (punctuation only): substrings instead
                    rows = None
            if rows is None:
                condition = " AND ".join("content LIKE ? ESCAPE '\\'" for _ in words)
                rows = connection.execute(
                    f"SELECT conversation_id, substr(content, 1, 80) FROM messages WHERE {condition} ORDER BY id DESC",
                    [f"%{_like(word)}%" for word in words],
                ).fetchall()
            titles = connection.execute(
                "SELECT id, title FROM conversations WHERE title LIKE ? ESCAPE '\\' ORDER BY updated_at DESC",
                (f"%{_like(text.strip())}%",),
            ).fetchall()
            conversations = {
                row[0]: Conversation(*row)
                for row in connection.execute("SELECT id, title, model, created_at, updated_at FROM conversations")
            }
        hits: dict[int, SearchHit] = {}
        for conversation_id, snippet in [*rows, *titles]:
            if conversation_id not in hits and conversation_id in conversations:
                hits[conversation_id] = SearchHit(conversations[conversation_id], " ".join(snippet.split()))
        return list(hits.values())[:limit]

    def export_markdown(self, conversation_id: int) -> str:
        """The conversation as a Markdown document: title, model and start time, then one section per message."""
        conversation = self.conversation(conversation_id)
        started = datetime.fromtimestamp(conversation.created_at).astimezone().strftime("%Y-%m-%d %H:%M %Z")
        details = [f"Started {started}"]
        if conversation.model:
            details.insert(0, f"Model: `{conversation.model}`")
        parts = [f"# {conversation.title}", " · ".join(details)]
        for message in self.messages(conversation_id):
            parts.append(f"## {_ROLE_HEADINGS[message.role]}")
            parts.append(message.content.strip("\n") or "*(empty)*")
        return "\n\n".join(parts) + "\n"

    def export_markdown_file(self, conversation_id: int, path: str | Path, overwrite: bool = False) -> Path:
        """Write :meth:`export_markdown` to ``path`` and return where it went.

        When ``path`` is a directory the file is named after the conversation's title (with a number added
        if that name is taken). An existing file is replaced only with ``overwrite=True``. The text goes to a
        ``.partial`` file renamed into place once whole, so a write that fails (a full disk) leaves no cut-off
        export and, with ``overwrite``, the old file as it was.
        """
        text = self.export_markdown(conversation_id)
        target = Path(path).expanduser()
        if target.is_dir():
            target = _free_name(target, _slug(self.conversation(conversation_id).title) or f"chat-{conversation_id}")
        elif target.exists() and not overwrite:
            raise UserError(f"{target} already exists; choose another file name")
        try:
            paths.write_whole(target, text, ".partial")
        except OSError as error:
            raise UserError(f"cannot write {target}: {error.strerror or error}") from None
        return target

    def close(self) -> None:
        """Fold streamed parts into their messages and close the database (everything is already committed, so a
        fold that cannot be written, on a full disk, is left for the next open: the parts are read as they are)."""
        with self._lock:
            if self._closed:
                return
            try:
                with self._write() as connection:
                    _fold_parts(connection)
            except UserError:
                pass
            finally:
                self._closed = True
                self._connection.close()

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._database_errors():
            yield self._connection

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._database_errors():
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield self._connection
            except BaseException:
                self._connection.rollback()
                raise
            self._connection.commit()

    @contextmanager
    def _database_errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as error:
            raise UserError(f"chat history {self.path}: {_describe(error)}") from None

    def _open(self) -> sqlite3.Connection:
        if self.path.is_dir():
            raise UserError(f"chat history {self.path} is a directory, not a database file")
        if self.path.exists():
            self._check_existing()
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise UserError(f"cannot create {self.path.parent} for the chat history: {error.strerror}") from None
        try:
            connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        except sqlite3.Error as error:
            raise UserError(f"cannot open chat history {self.path}: {_describe(error)}") from None
        try:
            with self._database_errors():
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")
                connection.execute("PRAGMA foreign_keys=ON")
                self._migrate(connection)
        except BaseException:
            connection.close()
            raise
        return connection

    def _check_existing(self) -> None:
        """Read an existing file without the right to write it, so a bad file is reported and left as it was."""
        try:
            probe = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
        except sqlite3.Error as error:
            raise UserError(f"cannot open chat history {self.path}: {_describe(error)}") from None
        try:
            version = probe.execute("PRAGMA user_version").fetchone()[0]
            tables = {row[0] for row in probe.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.Error as error:
            raise UserError(
                f"chat history {self.path} is unreadable ({_describe(error)}); move it aside to start a new one"
            ) from None
        finally:
            probe.close()
        if version > SCHEMA_VERSION:
            raise UserError(
                f"chat history {self.path} was written by a newer moe-tui (schema {version}, this one reads up to "
                f"{SCHEMA_VERSION}); upgrade moe-tui"
            )
        if version == 0 and tables:
            raise UserError(f"{self.path} is a SQLite database but not a moe-tui chat history; choose another file")

    def _migrate(self, connection: sqlite3.Connection) -> None:
        connection.execute("BEGIN IMMEDIATE")
        try:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            for migration in _MIGRATIONS[version:]:
                migration(connection)
            if version < SCHEMA_VERSION:
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            _fold_parts(connection)
        except BaseException:
            connection.rollback()
            raise
        connection.commit()


def _parts_by_message(connection: sqlite3.Connection, conversation_id: int | None = None) -> dict[int, list[str]]:
    """Streamed parts not yet folded into their messages, in order, for one conversation or all of them."""
    query = "SELECT message_id, text FROM message_parts"
    arguments: tuple[int, ...] = ()
    if conversation_id is not None:
        query += " WHERE message_id IN (SELECT id FROM messages WHERE conversation_id = ?)"
        arguments = (conversation_id,)
    parts: dict[int, list[str]] = {}
    for message_id, text in connection.execute(query + " ORDER BY id", arguments):
        parts.setdefault(message_id, []).append(text)
    return parts


def _fold_parts(connection: sqlite3.Connection, conversation_id: int | None = None) -> None:
    """Append pending parts to their messages' content and drop them; call inside a write transaction."""
    for message_id, texts in _parts_by_message(connection, conversation_id).items():
        connection.execute("UPDATE messages SET content = content || ? WHERE id = ?", ("".join(texts), message_id))
        connection.execute("DELETE FROM message_parts WHERE message_id = ?", (message_id,))


def _has_table(connection: sqlite3.Connection, name: str) -> bool:
    return connection.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone() is not None


def _like(text: str) -> str:
    """``text`` with LIKE's wildcards escaped (the queries say ``ESCAPE '\\'``)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _clean_title(title: str) -> str:
    cleaned = " ".join(title.split())
    if not cleaned:
        raise UserError("a conversation title cannot be empty")
    return cleaned


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:50].rstrip("-")


def _free_name(directory: Path, stem: str) -> Path:
    candidate = directory / f"{stem}.md"
    number = 2
    while candidate.exists():
        candidate = directory / f"{stem}-{number}.md"
        number += 1
    return candidate


def _describe(error: sqlite3.Error) -> str:
    text = str(error)
    return text[0].lower() + text[1:] if text else type(error).__name__
