"""The conversation list: earlier chats, newest first; choosing one opens it in the chat view."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from rich.text import Text
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from moe_tui.chat.history import Conversation


def when(timestamp: float, now: float) -> str:
    """A short date for the list: the time today, else the date."""
    local, today = time.localtime(timestamp), time.localtime(now)
    if local[:3] == today[:3]:
        return time.strftime("%H:%M", local)
    return time.strftime("%Y-%m-%d", local)


class ConversationList(OptionList):
    """Earlier conversations; enter opens the highlighted one."""

    class Opened(Message):
        """The user chose a conversation."""

        def __init__(self, conversation_id: int) -> None:
            super().__init__()
            self.conversation_id = conversation_id

    def __init__(self, clock: Callable[[], float] = time.time, **kwargs) -> None:
        super().__init__(**kwargs)
        self._clock = clock
        self.border_title = "Conversations"

    def show_conversations(self, conversations: Sequence[Conversation], current: int | None) -> None:
        """List these conversations and highlight the current one."""
        self.clear_options()
        now = self._clock()
        for conversation in conversations:
            label = Text(conversation.title, overflow="ellipsis", no_wrap=True)
            label.append(f"\n{when(conversation.updated_at, now)}", style="dim")
            self.add_option(Option(label, id=str(conversation.id)))
        if not conversations:
            self.add_option(Option(Text("no conversations yet", style="dim"), id="none", disabled=True))
        ids = [conversation.id for conversation in conversations]
        if ids:
            self.highlighted = ids.index(current) if current in ids else 0

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        """Open the chosen conversation."""
        event.stop()
        if event.option.id and event.option.id.isdigit():
            self.post_message(self.Opened(int(event.option.id)))
