"""Every key binding of the app in one table, each with an id the user can remap in the settings file.

Screens and widgets take their ``BINDINGS`` from here (:func:`bindings`), the help screen lists this table
with the keys in effect, and the settings file's ``[keymap]`` is checked against these ids.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding


@dataclass(frozen=True)
class Key:
    """One binding: id, default key(s) (comma separated), action, what it does, where it works."""

    id: str
    keys: str
    action: str
    description: str
    where: str
    show: bool = True
    priority: bool = False


def _panel_toggle(panel: str, keys: str, label: str) -> Key:
    """The key that shows or hides ``panel``; a priority binding, since the focused prompt would otherwise take
    an alt+letter as the letter."""
    return Key(
        f"panel.{panel}",
        keys,
        f"toggle_panel('{panel}')",
        f"Show/hide {label}",
        "main screen",
        show=False,
        priority=True,
    )


KEYS: tuple[Key, ...] = (
    Key("app.help", "f1", "app.help", "Help", "anywhere"),
    Key("app.palette", "ctrl+p", "app.command_palette", "Commands", "anywhere", show=False, priority=True),
    Key("app.quit", "ctrl+q", "app.quit", "Quit", "anywhere", priority=True),
    Key("app.theme", "ctrl+t", "app.next_theme", "Next theme", "anywhere", show=False),
    Key("chat.send", "ctrl+j,alt+enter", "submit", "Send", "prompt"),
    Key("chat.newline", "enter", "newline", "New line", "prompt", show=False),
    Key("chat.stop", "escape", "stop", "Stop answer", "main screen"),
    Key("chat.new", "ctrl+n", "new_chat", "New chat", "main screen"),
    Key("chat.conversations", "f2", "toggle_conversations", "Chats", "main screen"),
    Key("chat.settings", "f3", "generation_settings", "Settings", "main screen"),
    Key("lab.open", "f4", "open_lab", "Lab", "main screen"),
    Key("chat.export", "f5", "export", "Export", "main screen", show=False, priority=True),
    Key("chat.copy", "f8", "copy_answer", "Copy answer", "main screen", show=False),
    Key("chat.regenerate", "ctrl+g", "regenerate", "Regenerate", "main screen", show=False),
    Key("chat.edit", "f9", "edit_last", "Edit last question", "main screen", show=False),
    Key("log.previous", "up", "select(-1)", "Select the message above", "chat log", show=False),
    Key("log.next", "down", "select(1)", "Select the message below", "chat log", show=False),
    Key("log.copy", "c", "copy_message", "Copy message", "chat log"),
    Key("log.code", "b", "copy_code", "Copy code block", "chat log"),
    Key("view.switch", "f6", "switch_view", "Chat/panels", "main screen", priority=True),
    Key("panel.maximize", "f11", "toggle_maximize", "Maximise", "main screen"),
    # alt+letter, not alt+digit: xterm-style terminals and tmux send alt+1 as ESC 1, which Textual reads as the
    # macOS Option character (¡), so an alt+digit binding never fires there and the prompt gets a stray "¡";
    # nor alt+f or alt+b, which Textual reads as ctrl+right and ctrl+left (iTerm's word movement).
    _panel_toggle("heatmap", "alt+e", "experts"),
    _panel_toggle("cache", "alt+c", "cache"),
    _panel_toggle("prefetch", "alt+r", "prefetch"),
    _panel_toggle("memory", "alt+m", "memory"),
    _panel_toggle("params", "alt+p", "parameters"),
    _panel_toggle("chat", "alt+h", "chat"),
    Key(
        "panel.earlier",
        "left_square_bracket",
        "move_panel(-1)",
        "Move focused panel earlier",
        "focused panel",
        show=False,
    ),
    Key(
        "panel.later", "right_square_bracket", "move_panel(1)", "Move focused panel later", "focused panel", show=False
    ),
    Key("panel.hide", "x", "hide_focused", "Hide focused panel", "focused panel", show=False),
    Key("replay.faster", "plus,equals_sign", "replay_speed(2.0)", "Replay faster", "replay", show=False),
    Key("replay.slower", "minus", "replay_speed(0.5)", "Replay slower", "replay", show=False),
    Key("replay.pause", "space", "replay_pause", "Pause/resume replay", "replay", show=False),
    Key("replay.restart", "ctrl+r", "replay_restart", "Replay from the start", "replay", show=False),
    Key("lab.close", "escape,f4", "app.pop_screen", "Back", "lab"),
    Key("lab.trace", "o", "open_trace", "Open trace", "lab"),
    Key("help.close", "escape,f1", "app.pop_screen", "Back", "help"),
    Key("loading.quit", "ctrl+q", "app.quit", "Quit", "loading"),
    Key("loading.hide", "escape", "hide", "Use the app while loading", "loading"),
    Key("loading.cancel", "c", "cancel_load", "Cancel loading", "loading"),
    Key("error.continue", "enter,escape", "dismiss('continue')", "Continue", "error", priority=True),
    Key("error.details", "d", "toggle_details", "Details", "error"),
    Key("dialog.cancel", "escape", "dismiss(None)", "Cancel", "dialog"),
    Key("confirm.yes", "y,enter", "dismiss(True)", "Yes", "confirm"),
    Key("confirm.no", "n,escape", "dismiss(False)", "No", "confirm"),
    Key("conversations.rename", "r", "rename", "Rename chat", "conversations"),
    Key("conversations.delete", "d,delete", "delete", "Delete chat", "conversations"),
    Key("conversations.search", "slash", "search", "Search chats", "conversations"),
    Key("conversations.all", "escape", "show_all", "All chats", "conversations", show=False),
    Key("settings.save", "ctrl+s", "save", "Save", "settings", priority=True),
    Key("settings.follow_model", "ctrl+d", "follow_model", "Follow the model", "settings", priority=True),
    Key("settings.cancel", "escape", "dismiss(None)", "Cancel", "settings"),
)

BY_ID: dict[str, Key] = {key.id: key for key in KEYS}


def bindings(*ids: str) -> list[Binding]:
    """Textual bindings for these ids."""
    return [
        Binding(
            BY_ID[binding_id].keys,
            BY_ID[binding_id].action,
            BY_ID[binding_id].description,
            show=BY_ID[binding_id].show,
            priority=BY_ID[binding_id].priority,
            id=binding_id,
        )
        for binding_id in ids
    ]


def bindings_where(where: str) -> list[Binding]:
    """Textual bindings for every key that works ``where``."""
    return bindings(*(key.id for key in KEYS if key.where == where))


def check_keymap(keymap: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """The entries of a user keymap with known ids, and the ids that are unknown."""
    known = {binding_id: keys for binding_id, keys in keymap.items() if binding_id in BY_ID}
    return known, sorted(set(keymap) - set(known))


# What xterm-style terminals (and tmux) send for these, ESC then the character, Textual reads as another key: a
# macOS Option character for alt+digit, ctrl+right / ctrl+left for alt+f / alt+b (see the panel keys above).
_ALT_KEYS_NOT_DELIVERED = frozenset([*"0123456789", "f", "b", "minus", "equals_sign"])


def undelivered_keys(keymap: dict[str, str]) -> list[str]:
    """``id = key`` for each key in a user keymap that xterm-style terminals never deliver as that key."""
    return [
        f"{binding_id} = {key.strip()}"
        for binding_id, keys in keymap.items()
        for key in keys.split(",")
        if key.strip().startswith("alt+") and key.strip()[4:] in _ALT_KEYS_NOT_DELIVERED
    ]


def clashes(keymap: dict[str, str]) -> list[str]:
    """``KEY is set for both ID and ID`` for each key that a user keymap gives to more than one binding in the
    same place, where only one of them can run."""
    owners: dict[tuple[str, str], list[str]] = {}
    for key in KEYS:
        for pressed in keys_in_effect(keymap, key.id):
            owners.setdefault((key.where, pressed), []).append(key.id)
    return [
        f"{display_keys(pressed)} is set for both {' and '.join(ids)}"
        for (_, pressed), ids in owners.items()
        if len(ids) > 1
    ]


def keys_in_effect(keymap: dict[str, str], binding_id: str) -> list[str]:
    """The keys that trigger ``binding_id``: the user's keymap entry if there is one, else the default."""
    return [key.strip() for key in keymap.get(binding_id, BY_ID[binding_id].keys).split(",") if key.strip()]


def display_keys(keys: str) -> str:
    """``ctrl+j,alt+enter`` as ``ctrl+j / alt+enter``, with a few key names spelled as typed (``escape`` as esc)."""
    names = {
        "escape": "esc",
        "plus": "+",
        "minus": "-",
        "equals_sign": "=",
        "left_square_bracket": "[",
        "right_square_bracket": "]",
    }
    return " / ".join(names.get(key.strip(), key.strip()) for key in keys.split(","))
