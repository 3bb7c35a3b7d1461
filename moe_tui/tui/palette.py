"""Command palette entries for the main screen: cache size k, policy, prefetch, misses, theme, chats, panels,
replay.

Only commands that make sense right now are offered (engine settings only with a live model, replay speed
only while replaying, stop only while an answer is being generated). Typing ``k 5`` offers k = 5 even when
the model has fewer experts, so that the engine's own message explains why it does not fit.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from textual.command import CommandInput, CommandPalette, DiscoveryHit, Hit, Hits, Provider

from moe_tui.policies import POLICIES
from moe_tui.tui.widgets.fields import KeysInOrder

if TYPE_CHECKING:
    from moe_tui.tui.screens.main import MainScreen

_K_QUERY = re.compile(r"^\s*(?:k|cache(?: size)?)\s*=?\s*(\d+)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Command:
    """One palette entry."""

    title: str
    help: str
    run: Callable[[], object]
    discover: bool = True


# Marks the setting in effect in a command title.
CURRENT = " (current)"


def cache_size_title(k: int) -> str:
    """The palette's title for the command that sets cache size ``k``."""
    return f"Cache size: k = {k}"


MISS_COMMANDS = {
    "copy": "a missed expert is copied into a slot, then computed there",
    "host": "a missed expert is computed on the host from the store, without a copy",
    "auto": "per layer pass, whichever the measured copy and compute times make cheaper",
}


def main_commands(screen: MainScreen) -> list[Command]:
    """Every command that applies to the main screen in its current state."""
    commands: list[Command] = []
    backend = screen.backend
    snapshot = backend.snapshot()
    key = screen.moe_app.key_for
    if backend.can_tune and snapshot is not None:
        header = snapshot.header
        current_k = header.cache_size[0] if len(set(header.cache_size)) == 1 else None
        for k in range(1, header.num_experts + 1):
            mark = CURRENT if k == current_k else ""
            commands.append(
                Command(
                    cache_size_title(k) + mark,
                    "expert slots per layer, from the next token",
                    partial(screen.set_cache_size, k),
                )
            )
        for policy in POLICIES:
            mark = CURRENT if policy == header.policy else ""
            commands.append(
                Command(f"Policy: {policy}{mark}", "cache eviction policy", partial(screen.set_policy, policy))
            )
        if header.prefetch:
            commands.append(
                Command("Prefetch: off", "stop guessing the next layer's experts", partial(screen.set_prefetch, 0))
            )
        for depth in range(1, min(header.num_experts, 3) + 1):
            if depth != header.prefetch:
                commands.append(
                    Command(
                        f"Prefetch: on, {depth} per layer",
                        "load the next layer's likely experts ahead of time",
                        partial(screen.set_prefetch, depth),
                    )
                )
        for mode, help_text in MISS_COMMANDS.items():
            mark = CURRENT if mode == header.miss else ""
            commands.append(Command(f"Misses: {mode}{mark}", help_text, partial(screen.set_miss, mode)))

    def keyed(title: str, help_text: str, binding_id: str, run: Callable[[], object]) -> Command:
        """A command whose help ends with the key that does the same."""
        return Command(title, f"{help_text} ({key(binding_id)})", run)

    if screen.generating:
        commands.append(keyed("Stop generation", "end the answer now", "chat.stop", screen.action_stop))
    commands.append(keyed("New chat", "start an empty conversation", "chat.new", screen.action_new_chat))
    if backend.can_chat and not screen.generating:
        commands += [
            keyed(
                "Regenerate the last answer",
                "answer the last question again",
                "chat.regenerate",
                screen.action_regenerate,
            ),
            keyed("Edit the last question", "change it and send it again", "chat.edit", screen.action_edit_last),
        ]
    commands += [
        keyed("Copy the last answer", "to the clipboard, through the terminal", "chat.copy", screen.action_copy_answer),
        keyed(
            "Conversations", "show or hide the list of chats", "chat.conversations", screen.action_toggle_conversations
        ),
        keyed("Export conversation to Markdown", "write this chat to a .md file", "chat.export", screen.action_export),
        keyed(
            "Generation settings",
            "temperature, top-p, max new tokens, system prompt",
            "chat.settings",
            screen.action_generation_settings,
        ),
        keyed("Cache lab", "hit rate per policy and k against Belady's optimum", "lab.open", screen.action_open_lab),
    ]
    if screen.moe_app.loading_screen is not None:
        commands.append(
            Command("Cancel loading", "stop loading the model; carry on without one", screen.moe_app.cancel_load)
        )
    commands.append(Command("Load model…", "open another model directory or cached hub id", screen.action_load_model))
    for theme in screen.app.moe_themes:
        mark = CURRENT if theme == screen.app.theme else ""
        commands.append(
            Command(f"Theme: {theme}{mark}", "colours of the whole app", partial(screen.app.set_theme, theme))
        )
    for panel_id, title in screen.panel_titles().items():
        shown = "Hide" if screen.panel_shown(panel_id) else "Show"
        toggle = partial(screen.action_toggle_panel, panel_id)
        commands.append(keyed(f"{shown} panel: {title}", "toggle a dashboard panel", f"panel.{panel_id}", toggle))
        commands.append(
            Command(
                f"Maximise panel: {title}",
                f"fill the screen with one panel ({key('panel.maximize')} restores)",
                partial(screen.maximize_panel, panel_id),
                False,
            )
        )
    if backend.mode == "replay":
        commands.append(
            Command("Replay: faster", "double the playback speed", partial(screen.action_replay_speed, 2.0))
        )
        commands.append(Command("Replay: slower", "halve the playback speed", partial(screen.action_replay_speed, 0.5)))
        commands.append(Command("Replay: pause / resume", "hold the playback", screen.action_replay_pause))
        commands.append(Command("Replay: restart", "play the trace again from the start", screen.action_replay_restart))
    return commands


class MainCommands(Provider):
    """Palette provider for the main screen: the screen hands over its commands (``palette_commands``)."""

    def _commands(self) -> list[Command]:
        commands = getattr(self.screen, "palette_commands", None)
        return commands() if commands is not None else []

    async def discover(self) -> Hits:
        """The commands shown before anything is typed."""
        for command in self._commands():
            if command.discover:
                yield DiscoveryHit(command.title, command.run, help=command.help)

    async def search(self, query: str) -> Hits:
        """Commands matching ``query``; ``k N`` also offers that exact cache size."""
        matcher = self.matcher(query)
        commands = self._commands()
        for command in commands:
            score = matcher.match(command.title)
            if score > 0:
                yield Hit(score, matcher.highlight(command.title), command.run, help=command.help)
        found = _K_QUERY.match(query)
        screen = self.screen
        if found and commands and getattr(screen, "backend", None) is not None and screen.backend.can_tune:
            k = int(found.group(1))
            title = cache_size_title(k)
            if all(command.title.removesuffix(CURRENT) != title for command in commands):  # not offered above
                yield Hit(1.0, title, partial(screen.set_cache_size, k), help="as typed")


class OrderedCommandInput(KeysInOrder, CommandInput):
    """The palette's search field, its keys applied in the order typed (see ``KeysInOrder``)."""


class OrderedCommandPalette(CommandPalette):
    """Textual's command palette with its search field swapped for :class:`OrderedCommandInput`: a backspace
    typed together with letters (over a slow link) edited the query out of order, as in every Textual input."""

    def compose(self):
        """Textual's layout, the search field replaced as it is yielded."""
        for child in super().compose():
            if type(child) is CommandInput:
                child = OrderedCommandInput(placeholder=child.placeholder, select_on_focus=child.select_on_focus)
            yield child
