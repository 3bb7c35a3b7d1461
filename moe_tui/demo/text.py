"""Turn Python's plain-text reference pages and docstrings into short Markdown answers.

The text in ``pydoc_data.topics`` is reStructuredText rendered to plain text: hard-wrapped paragraphs,
section titles underlined with ``*``, ``=``, ``-`` or ``~``, code indented by three spaces, ASCII tables,
grammar rules (``::=``) and definitions (``str.split(sep=None)`` followed by an indented body). This module
splits such text into blocks, finds sections and definitions, re-wraps prose into single-line paragraphs,
fences code, drops tables and grammar, and cuts long bodies into answer-sized chunks.
"""

from __future__ import annotations

import ast
import re
import warnings
from dataclasses import dataclass

UNDERLINE_CHARS = "*=-~^"
_BULLET = re.compile(r"^(\*|-|\d+\.)\s")
_DEFINITION = re.compile(r"^(class\s+|exception\s+)?[A-Za-z_][\w.]*\s*(\(.*\)|\[.*\])(\s*->\s*\S+)?$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"“(*])")


@dataclass(frozen=True)
class Block:
    """A paragraph of source text: its indentation and its lines with that indentation removed."""

    indent: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """The lines joined with newlines."""
        return "\n".join(self.lines)


@dataclass(frozen=True)
class Section:
    """A titled piece of a document: ``title``, its body rendered as Markdown, and the enclosing definition."""

    title: str
    body: str
    parent: str = ""


def split_blocks(text: str) -> list[Block]:
    """Blank-line separated paragraphs; an underlined heading line always forms a block of its own."""
    blocks: list[Block] = []
    current: list[str] = []

    def flush() -> None:
        if current:
            indent = min(len(line) - len(line.lstrip()) for line in current)
            blocks.append(Block(indent, tuple(line[indent:].rstrip() for line in current)))
            current.clear()

    lines = text.expandtabs(8).split("\n")
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.strip():
            flush()
        elif index + 1 < len(lines) and is_underline(lines[index + 1], line):
            flush()
            current.extend([line, lines[index + 1]])
            flush()
            index += 1
        else:
            current.append(line)
        index += 1
    flush()
    return blocks


def is_underline(line: str, above: str) -> bool:
    """Whether ``line`` underlines ``above`` (one repeated character, at least as long as the title)."""
    stripped = line.strip()
    return (
        len(stripped) >= 3
        and len(set(stripped)) == 1
        and stripped[0] in UNDERLINE_CHARS
        and len(stripped) >= len(above.strip())
        and bool(above.strip())
    )


def heading_of(block: Block) -> str | None:
    """The title when ``block`` is an underlined heading, else None."""
    if len(block.lines) == 2 and is_underline(block.lines[1], block.lines[0]):
        return block.lines[0].strip()
    return None


def definition_of(block: Block) -> str | None:
    """The (first) signature when ``block`` is a definition header such as ``str.split(sep=None)``."""
    lines = [line.strip() for line in block.lines]
    if len(lines) > 4 or not all(len(line) <= 90 and _DEFINITION.match(line) for line in lines):
        return None
    return lines[0]


def definition_name(signature: str) -> str:
    """``dict`` for ``class dict(**kwargs)``, ``str.split`` for ``str.split(sep=None)``."""
    return re.sub(r"^(class|exception)\s+", "", signature).split("(")[0].split("[")[0].strip()


def split_sections(text: str) -> tuple[list[Section], list[Section]]:
    """Sections (by heading) and definitions (signature + indented body) of one rendered reference page.

    A definition's body is removed from its section, so each piece of text lands in exactly one of them.
    """
    sections: list[Section] = []
    definitions: list[Section] = []
    title = ""
    section_blocks: list[Block] = []
    open_defs: list[tuple[int, str, list[Block]]] = []

    def close_defs(indent: int) -> None:
        while open_defs and open_defs[-1][0] >= indent:
            _, signature, body = open_defs.pop()
            rendered = render_blocks(body)
            parent = definition_name(open_defs[-1][1]) if open_defs else ""
            if rendered:
                definitions.append(Section(signature, rendered, parent))

    def close_section() -> None:
        close_defs(-1)
        rendered = render_blocks(section_blocks)
        if title and rendered:
            sections.append(Section(title, rendered))
        section_blocks.clear()

    for block in split_blocks(text):
        heading = heading_of(block)
        if heading is not None:
            close_section()
            title = heading
            continue
        close_defs(block.indent)
        signature = definition_of(block)
        if signature is not None:
            open_defs.append((block.indent, signature, []))
        elif open_defs:
            open_defs[-1][2].append(block)
        else:
            section_blocks.append(block)
    close_section()
    return sections, definitions


def render_blocks(blocks: list[Block]) -> str:
    """Markdown for blocks: prose re-wrapped, Python code fenced, tables and grammar rules dropped."""
    if not blocks:
        return ""
    base = min(block.indent for block in blocks)
    parts: list[str] = []
    for block in blocks:
        part = render_block(block, block.indent - base)
        if not part:
            continue
        if parts and part.startswith("```") and parts[-1].split("\n", 1)[0] == part.split("\n", 1)[0]:
            parts[-1] = parts[-1][: -len("```")] + "\n" + part.split("\n", 1)[1]
        else:
            parts.append(part)
    return "\n\n".join(parts)


def render_block(block: Block, relative_indent: int) -> str:
    """One block as Markdown ('' for tables and grammar rules)."""
    text = block.text
    first = block.lines[0].lstrip()
    if first.startswith(("+-", "+=", "|")) or "::=" in text or _is_rule_table(block):
        return ""
    if first.startswith(">>>") or (relative_indent >= 2 and _is_python(text) and not _is_sentence(first)):
        return f"```python\n{text}\n```"
    if relative_indent >= 3 and not _is_sentence(first):
        return f"```\n{text}\n```"
    return reflow(block.lines)


def reflow(lines: tuple[str, ...] | list[str]) -> str:
    """Join hard-wrapped lines into one line per paragraph or list item, single-spaced."""
    items: list[str] = []
    for line in lines:
        stripped = line.strip()
        if not stripped:
            continue
        if not items or _BULLET.match(stripped):
            items.append(stripped)
        elif re.search(r"[a-z]-$", items[-1]):
            items[-1] += stripped
        else:
            items[-1] += " " + stripped
    return "\n".join(re.sub(r"(?<=\S) {2,}", " ", item) for item in items)


def chunk(markdown: str, max_chars: int) -> list[str]:
    """Cut Markdown into pieces of at most about ``max_chars``, at paragraph, then sentence or line bounds."""
    pieces: list[str] = []
    for paragraph in paragraphs(markdown):
        pieces.extend(_split_paragraph(paragraph, max_chars))
    chunks: list[str] = []
    for piece in pieces:
        if chunks and len(chunks[-1]) + 2 + len(piece) <= max_chars:
            chunks[-1] += "\n\n" + piece
        else:
            chunks.append(piece)
    return chunks


def paragraphs(markdown: str) -> list[str]:
    """Blank-line separated paragraphs of Markdown, each fenced code block kept whole."""
    result: list[str] = []
    current: list[str] = []
    in_fence = False
    for line in markdown.split("\n"):
        if line.startswith("```"):
            in_fence = not in_fence
        if not line and not in_fence:
            if current:
                result.append("\n".join(current))
                current = []
            continue
        current.append(line)
    if current:
        result.append("\n".join(current))
    return result


def _split_paragraph(paragraph: str, max_chars: int) -> list[str]:
    if len(paragraph) <= max_chars:
        return [paragraph]
    if paragraph.startswith("```"):
        fence, *body = paragraph.split("\n")
        body = body[:-1]
        parts: list[str] = []
        current: list[str] = []
        for line in body:
            if current and sum(len(item) + 1 for item in current) + len(line) + 8 + len(fence) > max_chars:
                parts.append("\n".join([fence, *current, "```"]))
                current = []
            current.append(line)
        if current:
            parts.append("\n".join([fence, *current, "```"]))
        return parts
    parts = []
    for sentence in _SENTENCE_END.split(paragraph):
        if parts and len(parts[-1]) + 1 + len(sentence) <= max_chars:
            parts[-1] += " " + sentence
        else:
            parts.append(sentence)
    return parts


def _is_python(text: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ast.parse(text)
        except (SyntaxError, ValueError):
            return False
    return True


def _is_sentence(line: str) -> bool:
    if _BULLET.match(line):
        return True
    starts_like_prose = line[0].isupper() or line[0] in '"“'
    return starts_like_prose and (len(line.split()) >= 4 or line.endswith((":", ".")))


def _is_rule_table(block: Block) -> bool:
    """Simple reST tables rendered as rows of '====' / '----' column rules."""
    return sum(bool(re.fullmatch(r"[=\- ]{6,}", line)) for line in block.lines) >= 1 and len(block.lines) > 1
