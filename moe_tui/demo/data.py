"""Instruction data for the demo model, built from text that ships with every Python install.

Two sources, both read from the running interpreter (no download, no file outside the standard library):

* ``pydoc_data.topics``: the language reference pages that ``help("assert")`` shows;
* docstrings of the built-ins and of a fixed list of commonly used standard-library modules.

Every piece of text becomes an :class:`Example`: a subject (``the "assert" statement``, ``json.dumps()``)
of some kind, and an answer in Markdown. The question is drawn from templates for that kind, anew each
epoch, so that the model sees several phrasings of each question.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import pydoc_data.topics
import random
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType

from moe_tui.demo.text import chunk, definition_name, reflow, render_blocks, split_blocks, split_sections

MAX_ANSWER_CHARS = 700
MIN_ANSWER_CHARS = 24
SYSTEM_PROMPT = "You are a helpful assistant that answers questions about the Python programming language."

# Standard-library modules whose docstrings join the training data (besides ``builtins``): the ones a newcomer
# meets first. A longer list spread the same training budget over more facts, and answers got vaguer.
# Names that fail to import on some platform are skipped.
DOC_MODULES = (
    "abc",
    "argparse",
    "asyncio",
    "base64",
    "bisect",
    "collections",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "enum",
    "fnmatch",
    "fractions",
    "functools",
    "glob",
    "hashlib",
    "heapq",
    "io",
    "itertools",
    "json",
    "logging",
    "math",
    "operator",
    "os",
    "os.path",
    "pathlib",
    "pickle",
    "pprint",
    "queue",
    "random",
    "re",
    "secrets",
    "shlex",
    "shutil",
    "sqlite3",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "sys",
    "tempfile",
    "textwrap",
    "threading",
    "time",
    "timeit",
    "traceback",
    "types",
    "typing",
    "unittest",
    "urllib.parse",
    "uuid",
    "warnings",
    "weakref",
    "zipfile",
)

# Extra module names whose objects a documented module re-exports as its own (C accelerators, OS layers).
_MODULE_ALIASES = {"os": ("posix", "nt"), "os.path": ("posixpath", "ntpath", "genericpath")}

QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "topic": (
        "Explain {s}.",
        "Tell me about {s}.",
        "Can you explain {s} in Python?",
        "Describe {s}.",
        "How does Python handle {s}?",
        "What should I know about {s}?",
        "What are {s} in Python?",
        "I am learning Python. What about {s}?",
    ),
    "callable": (
        "What does `{s}` do?",
        "What does {s} do?",
        "How do I use `{s}`?",
        "Explain `{s}`.",
        "What is {s} for?",
        "Tell me about `{s}`.",
        "How does {s} work in Python?",
    ),
    "member": (
        "What does `{s}` do for {p}?",
        "In a {p}, what does `{s}` do?",
        "Explain `{s}` of {p}.",
        "How does {s} work for {p} objects?",
    ),
    "class": (
        "What is the `{s}` class?",
        "What is {s} in Python?",
        "Tell me about {s}.",
        "Explain the {s} class.",
        "How do I use `{s}`?",
        "What is a {s} object?",
    ),
    "module": (
        "What is the {s} module?",
        "What is the `{s}` module for?",
        "Tell me about the {s} module.",
        "What does the {s} module do?",
        "Which module should I read about: {s}?",
        "Explain Python's {s} module.",
    ),
    "more": (
        "Tell me more about {s}.",
        "What else should I know about {s}?",
        "Go on about {s}.",
        "Continue explaining {s}.",
        "Can you say more about {s}?",
    ),
}


@dataclass(frozen=True)
class Example:
    """One answer and what it answers: ``kind`` picks the question templates, ``subject`` fills them."""

    kind: str
    subject: str
    answer: str
    source: str
    parent: str = ""
    previous: Example | None = None

    def question(self, rng: random.Random) -> str:
        """A question for this answer, phrased by a template drawn with ``rng``."""
        template = rng.choice(QUESTION_TEMPLATES[self.kind])
        return template.format(s=self.subject, p=self.parent)

    @property
    def key(self) -> str:
        """A stable identity, used to split train and validation sets."""
        return f"{self.source}|{self.kind}|{self.subject}|{self.answer[:64]}"


def topic_subject(title: str) -> str:
    """``the assert statement`` for ``The "assert" statement``: quotes dropped, a leading article lowered."""
    subject = title.replace('"', "").replace("“", "").replace("”", "").strip()
    if subject.startswith(("The ", "A ", "An ")):
        subject = subject[0].lower() + subject[1:]
    return subject


def topic_examples() -> list[Example]:
    """Examples from the language reference topics (sections and definitions), duplicates removed."""
    examples: list[Example] = []
    for name in sorted(pydoc_data.topics.topics):
        sections, definitions = split_sections(pydoc_data.topics.topics[name])
        source = f"topics:{name}"
        for section in sections:
            examples.extend(_chunked("topic", topic_subject(section.title), section.body, source))
        for definition in definitions:
            kind = "member" if definition.parent else "callable"
            subject = _definition_subject(definition.title)
            examples.extend(_chunked(kind, subject, definition.body, source, definition.parent))
    return _dedupe(examples)


def docstring_examples(modules: tuple[str, ...] = DOC_MODULES) -> list[Example]:
    """Examples from the docstrings of the built-ins and of ``modules`` (module, classes, functions, methods)."""
    examples: list[Example] = []
    for module_name in ("builtins", *modules):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        examples.extend(_module_examples(module_name, module))
    return _dedupe(examples)


def build_examples() -> list[Example]:
    """All examples: reference topics first, then docstrings, in a fixed order."""
    return [*topic_examples(), *docstring_examples()]


def split_examples(examples: list[Example], val_fraction: float) -> tuple[list[Example], list[Example]]:
    """Train and validation sets, chosen by a hash of each example's key (stable across runs and machines)."""
    train: list[Example] = []
    val: list[Example] = []
    for example in examples:
        digest = hashlib.sha256(example.key.encode()).digest()
        share = int.from_bytes(digest[:8], "big") / 2**64
        (val if share < val_fraction else train).append(example)
    return train, val


def corpus_text(examples: list[Example]) -> Iterator[str]:
    """The text a tokenizer should learn from: every answer and one phrasing of every question per template."""
    for example in examples:
        yield example.answer
        for template in QUESTION_TEMPLATES[example.kind]:
            yield template.format(s=example.subject, p=example.parent)
    yield SYSTEM_PROMPT


def _module_examples(module_name: str, module: ModuleType) -> Iterator[Example]:
    source = f"doc:{module_name}"
    owners = {module.__name__, module_name, "_" + module_name, *_MODULE_ALIASES.get(module_name, ())}
    if module_name != "builtins" and module.__doc__:
        yield from _chunked("module", module_name, _render_docstring(module.__doc__), source)
    prefix = "" if module_name == "builtins" else module_name + "."
    for name in _public_names(module):
        obj = getattr(module, name, None)
        if getattr(obj, "__module__", None) not in owners or not _own_doc(obj):
            continue
        if inspect.isclass(obj):
            yield from _chunked("class", prefix + name, _render_docstring(obj.__doc__), source)
            for member_name, member in sorted(vars(obj).items()):
                if member_name.startswith("_") or not callable(member) or not _own_doc(member):
                    continue
                body = _with_signature(f"{prefix}{name}.{member_name}", member, member.__doc__)
                yield from _chunked("callable", f"{prefix}{name}.{member_name}()", body, source)
        elif callable(obj):
            body = _with_signature(prefix + name, obj, obj.__doc__)
            yield from _chunked("callable", f"{prefix}{name}()", body, source)


def _public_names(module: ModuleType) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [name for name in vars(module) if not name.startswith("_")]
    return sorted(set(names))


def _own_doc(obj: object) -> bool:
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    return isinstance(doc, str) and len(doc.strip()) >= MIN_ANSWER_CHARS


def _with_signature(qualified_name: str, obj: object, doc: str) -> str:
    """The docstring, led by a one-line signature when Python can tell it and it is short."""
    text = _render_docstring(doc)
    try:
        signature = str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return text
    signature = re.sub(r"\((self|cls)(, )?", "(", signature)
    signature = signature.replace(", /", "").replace("/, ", "").replace("(/)", "()")
    if len(signature) > 100 or " at 0x" in signature:
        return text
    return f"`{qualified_name}{signature}`\n\n{text}"


def _render_docstring(doc: str) -> str:
    blocks = split_blocks(inspect.cleandoc(doc))
    rendered = render_blocks(blocks)
    return rendered or reflow(doc.split("\n"))


def _definition_subject(signature: str) -> str:
    name = definition_name(signature)
    return f"{name}()" if "(" in signature and not signature.startswith(("class ", "exception ")) else signature


def _chunked(kind: str, subject: str, body: str, source: str, parent: str = "") -> Iterator[Example]:
    """The first chunk answers the main question; later chunks answer 'tell me more about ...'.

    Each later chunk remembers the one before it, so that a chat can ask for it as a follow-up.
    """
    previous: Example | None = None
    for piece in chunk(body, MAX_ANSWER_CHARS):
        if len(piece) < MIN_ANSWER_CHARS:
            continue
        if previous is None:
            example = Example(kind, subject, piece, source, parent)
        else:
            more_subject = f"{subject} for {parent}" if parent else subject
            example = Example("more", more_subject, piece, source, previous=previous)
        yield example
        previous = example


def _dedupe(examples: list[Example]) -> list[Example]:
    seen: set[str] = set()
    unique: list[Example] = []
    for example in examples:
        if example.answer not in seen:
            seen.add(example.answer)
            unique.append(example)
    return unique


def python_version() -> str:
    """The interpreter whose documentation the data came from (the data changes between Python versions)."""
    return ".".join(map(str, sys.version_info[:3]))
