"""The conversation list: earlier chats, newest first; choosing one opens it in the chat view. ``r`` renames
the highlighted chat, ``d`` deletes it (after asking), ``/`` searches every chat's messages, escape lists all
again."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import ClassVar

from rich.text import Text
from textual.binding import BindingType
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from moe_tui.chat.history import Conversation, SearchHit
from moe_tui.tui import keys


def when(timestamp: float, now: float) -> str:
    """A short date for the list: the time today, else the date."""
    local, today = time.localtime(timestamp), time.localtime(now)
    if local[:3] == today[:3]:
        return time.strftime("%H:%M", local)
    return time.strftime("%Y-%m-%d", local)


class ConversationList(OptionList):
    """Earlier conversations (or the ones a search found); enter opens the highlighted one."""

    BINDINGS: ClassVar[list[BindingType]] = keys.bindings_where("conversations")

    class Opened(Message):
        """The user chose a conversation."""

        def __init__(self, conversation_id: int) -> None:
            super().__init__()
            self.conversation_id = conversation_id

    class Requested(Message):
        """The user asked to ``rename`` or ``delete`` a conversation, to ``search`` or to list ``all`` again."""

        def __init__(self, what: str, conversation_id: int | None) -> None:
            super().__init__()
            self.what = what
            self.conversation_id = conversation_id

    def __init__(self, clock: Callable[[], float] = time.time, **kwargs) -> None:
        super().__init__(**kwargs)
        self._clock = clock
        self.border_title = "Conversations"
        self.query_text = ""  # the search shown ("" when listing every conversation)

    def show_conversations(self, conversations: Sequence[Conversation], current: int | None) -> None:
        """List these conversations and highlight the current one."""
        self.query_text = ""
        self.border_title = "Conversations"
        now = self._clock()
        self._show([(c, when(c.updated_at, now)) for c in conversations], current, "no conversations yet")

    def show_hits(self, query: str, hits: Sequence[SearchHit], current: int | None, all_key: str = "esc") -> None:
        """List the conversations a search found, each with the text around its match (``all_key`` lists every
        conversation again, which an empty result says)."""
        self.query_text = query
        self.border_title = f"Search: {query}"
        empty = f"nothing found · {all_key} lists all"
        self._show([(hit.conversation, hit.snippet) for hit in hits], current, empty)

    def _show(self, rows: Sequence[tuple[Conversation, str]], current: int | None, empty: str) -> None:
        self.clear_options()
        for conversation, detail in rows:
            label = Text(conversation.title, overflow="ellipsis", no_wrap=True)
            label.append(f"\n{detail}", style="dim")
            self.add_option(Option(label, id=str(conversation.id)))
        if not rows:
            self.add_option(Option(Text(empty, style="dim"), id="none", disabled=True))
        ids = [conversation.id for conversation, _ in rows]
        if ids:
            self.highlighted = ids.index(current) if current in ids else 0

    @property
    def highlighted_id(self) -> int | None:
        """The id of the highlighted conversation (None when the list is empty)."""
        if self.highlighted is None:
            return None
        option_id = self.get_option_at_index(self.highlighted).id
        return int(option_id) if option_id and option_id.isdigit() else None

    def action_rename(self) -> None:
        """Ask to rename the highlighted conversation."""
        if self.highlighted_id is not None:
            self.post_message(self.Requested("rename", self.highlighted_id))

    def action_delete(self) -> None:
        """Ask to delete the highlighted conversation."""
        if self.highlighted_id is not None:
            self.post_message(self.Requested("delete", self.highlighted_id))

    def action_search(self) -> None:
        """Ask for words to search every conversation for."""
        self.post_message(self.Requested("search", None))

    def action_show_all(self) -> None:
        """After a search, list every conversation again."""
        if self.query_text:
            self.post_message(self.Requested("all", None))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        """Open the chosen conversation."""
        event.stop()
        if event.option.id and event.option.id.isdigit():
            self.post_message(self.Opened(int(event.option.id)))
