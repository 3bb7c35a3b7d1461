"""Text fields that apply keys in the order they were typed.

Textual's Input and TextArea insert a typed character in their own key handler, but run a bound key (backspace,
delete, arrows, home and end, word deletion) only after its event has gone back up to the app. When several keys
wait in the app's queue at once (typed while an answer streams and the app is busy, or sent together over a slow
SSH link), a character behind a backspace is inserted before the backspace runs: "ab", backspace, "c" became
"ab" rather than "ac" (Textual issue 6605). These fields run their own binding for a key as the key arrives,
which is the binding the app would have run first anyway.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual import events
from textual.widgets import Input, TextArea

if TYPE_CHECKING:
    from textual.widget import Widget


class KeysInOrder:
    """Mixin for a text widget (listed before it): its own key bindings run in its key handler, in order with
    typed characters."""

    async def _on_key(self: Widget, event: events.Key) -> None:
        if event.is_printable:
            return  # typed text: the text widget inserts it and stops it before any binding sees it
        active = self.screen.active_bindings.get(event.key)
        if active is None or active.node is not self or active.binding.priority or not active.enabled:
            return  # a key for someone else: the app's bindings, as usual
        if await self.app.run_action(active.binding.action, self):
            event.stop()
            event.prevent_default()  # the text widget's own handler must not see the key a second time


class TextField(KeysInOrder, Input):
    """A one-line input whose keys apply in the order they were typed."""


class TextBox(KeysInOrder, TextArea):
    """A multi-line text area whose keys apply in the order they were typed."""
