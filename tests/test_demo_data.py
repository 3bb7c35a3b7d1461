"""The demo model's data preparation: reference-text parsing, Markdown rendering, examples and chat encoding."""

from __future__ import annotations

import random

import pytest

from moe_tui.demo import text
from moe_tui.demo.data import Example, build_examples, split_examples, topic_subject

PAGE = """The "frob" statement
********************

Frobbing is a convenient way to do
nothing at all, twice.

   frob_stmt ::= "frob" expression

An example:

   x = frob(1)
   print(x)

+------+------+
| a    | b    |
+------+------+

Frob methods
============

widget.frob(times=1)

   Frob the widget *times* times.  A second
   sentence follows.

      >>> widget.frob()

   * first item that is
     wrapped
   * second item
"""


def test_sections_definitions_and_rendering() -> None:
    sections, definitions = text.split_sections(PAGE)
    assert [s.title for s in sections] == ['The "frob" statement']
    body = sections[0].body
    assert "Frobbing is a convenient way to do nothing at all, twice." in body
    assert "::=" not in body and "+------" not in body  # grammar and tables dropped
    assert "```python\nx = frob(1)\nprint(x)\n```" in body
    assert [d.title for d in definitions] == ["widget.frob(times=1)"]
    frob = definitions[0].body
    assert frob.startswith("Frob the widget *times* times. A second sentence follows.")
    assert "```python\n>>> widget.frob()\n```" in frob
    assert "* first item that is wrapped\n* second item" in frob


def test_chunk_keeps_code_fences_whole_and_respects_the_limit() -> None:
    code = "```python\n" + "\n".join(f"x{i} = {i}" for i in range(5)) + "\n\ny = 2\n```"
    prose = " ".join(f"Sentence number {i} is here." for i in range(40))
    pieces = text.chunk(f"Intro.\n\n{code}\n\n{prose}", 200)
    assert all(len(piece) <= 200 for piece in pieces)
    for piece in pieces:
        assert piece.count("```") % 2 == 0
    assert "".join(pieces).count("Sentence number") == 40


def test_topic_subject() -> None:
    assert topic_subject('The "assert" statement') == "the assert statement"
    assert topic_subject("Boolean operations") == "Boolean operations"


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    return build_examples()


def test_examples_cover_reference_and_docstrings_deterministically(examples: list[Example]) -> None:
    assert examples == build_examples()
    sources = {e.source.split(":")[0] for e in examples}
    assert sources == {"topics", "doc"}
    subjects = {e.subject for e in examples}
    assert {"the assert statement", "len()", "json.dumps()", "str.split()"} <= subjects
    assert len({e.answer for e in examples}) == len(examples)
    follow_ups = [e for e in examples if e.previous is not None]
    assert follow_ups and all(e.kind == "more" for e in follow_ups)


def test_split_is_stable_and_disjoint(examples: list[Example]) -> None:
    train, val = split_examples(examples, 0.05)
    assert 0.02 < len(val) / len(examples) < 0.08
    assert {e.key for e in train}.isdisjoint(e.key for e in val)
    assert split_examples(list(reversed(examples)), 0.05)[1] == list(reversed(val))


def test_questions_vary_with_the_draw(examples: list[Example]) -> None:
    example = next(e for e in examples if e.subject == "json.dumps()")
    rng = random.Random(0)
    questions = {example.question(rng) for _ in range(30)}
    assert len(questions) > 3
    assert all("json.dumps()" in q for q in questions)
