"""Copying without a mouse: text to the terminal's clipboard through OSC 52 (Textual's ``copy_to_clipboard``),
which travels over SSH, and the code blocks of an answer.

A terminal gives no answer to an OSC 52 request, so whether it took the text cannot be known; where a terminal
is known to ignore the request, or to need a setting for it, the notice says so. The text always stays in the
app's own clipboard as well: ctrl+v in the prompt pastes it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from markdown_it import MarkdownIt


@dataclass(frozen=True)
class CodeBlock:
    """A fenced or indented code block of a message: its language (may be empty) and code."""

    language: str
    code: str

    def describe(self) -> str:
        """``python, 8 lines``."""
        lines = len(self.code.splitlines())
        size = f"{lines} line{'s' if lines != 1 else ''}"
        return f"{self.language}, {size}" if self.language else size


def code_blocks(markdown: str) -> list[CodeBlock]:
    """The code blocks of a Markdown text, in order."""
    tokens = MarkdownIt("commonmark").parse(markdown)
    return [
        CodeBlock(token.info.strip().split(" ")[0] if token.info else "", token.content)
        for token in tokens
        if token.type in ("fence", "code_block")
    ]


def clipboard_caveat(environ: Mapping[str, str] | None = None) -> str:
    """What may keep a copy from reaching the system clipboard in this terminal ("" when nothing is known)."""
    environ = os.environ if environ is None else environ
    if environ.get("TERM_PROGRAM") == "Apple_Terminal":
        return "macOS Terminal ignores clipboard requests (OSC 52): paste it inside moe-tui with ctrl+v"
    if environ.get("TMUX"):
        return "inside tmux it reaches your terminal only with `set -g set-clipboard on`"
    if environ.get("STY"):
        return "GNU screen does not pass clipboard requests (OSC 52) on"
    return ""


def copy_notice(what: str, text: str, environ: Mapping[str, str] | None = None) -> str:
    """The notice after copying ``text`` (``what`` names it: "the answer", "code block 1 of 2 (python, 3 lines)")."""
    notice = f"copied {what} ({len(text):,} characters) to the clipboard"
    caveat = clipboard_caveat(environ)
    return f"{notice}; {caveat}" if caveat else notice
