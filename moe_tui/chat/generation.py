"""How an answer is sampled: the generation settings, the rule each value must follow, and the user's choices.

:class:`GenerationSettings` is a complete set (its field defaults are moe-tui's own defaults); the settings file
keeps only the values the user chose, a plain mapping from field name to value checked by the same rules
(:func:`check_choices`). Which value an answer uses, the user's, the model's or the default, is
:mod:`moe_tui.chat.defaults`'s job. Nothing here imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

from moe_tui.errors import UserError

MAX_TEMPERATURE = 2.0
MAX_NEW_TOKENS = 1_000_000


class Rule(NamedTuple):
    """What one setting may hold: its type, a test of its value, and both said in words for messages."""

    label: str
    kind: type
    allowed: Callable[[Any], bool]
    said: str


RULES: dict[str, Rule] = {
    "temperature": Rule("temperature", float, lambda v: 0 <= v <= MAX_TEMPERATURE, "a number from 0 to 2"),
    "top_p": Rule("top-p", float, lambda v: 0 < v <= 1, "a number above 0 and at most 1"),
    "max_new_tokens": Rule(
        "max new tokens", int, lambda v: 1 <= v <= MAX_NEW_TOKENS, f"a whole number from 1 to {MAX_NEW_TOKENS}"
    ),
    "system_prompt": Rule("the system prompt", str, lambda v: True, "text"),
    "thinking": Rule("thinking", bool, lambda v: True, "on or off (true or false)"),
}


def follows_rule(name: str, value: Any) -> bool:
    """Whether ``value`` may be the setting ``name`` (ints count as numbers, booleans never do)."""
    rule = RULES[name]
    if rule.kind is float:
        ok_type = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif rule.kind is int:
        ok_type = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok_type = isinstance(value, rule.kind)
    return ok_type and rule.allowed(value)


@dataclass(frozen=True)
class GenerationSettings:
    """How to sample an answer; checked on creation (:class:`UserError` names the bad value).

    ``temperature`` 0 means greedy decoding (top_p is then ignored); otherwise tokens are sampled at that
    temperature from the smallest set of tokens whose probability reaches ``top_p``. ``thinking``: a thinking
    model reasons before it answers (where its template can turn that off).
    """

    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256
    system_prompt: str = ""
    thinking: bool = True

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not follows_rule(field.name, value):
                rule = RULES[field.name]
                raise UserError(f"{rule.label} must be {rule.said}, not {value!r}")

    @classmethod
    def from_text(
        cls, temperature: str, top_p: str, max_new_tokens: str, system_prompt: str = "", thinking: bool = True
    ) -> GenerationSettings:
        """Settings typed into a form: the numbers are parsed here, with the same clear errors."""
        return cls(
            temperature=_parse(temperature, float, "temperature"),
            top_p=_parse(top_p, float, "top-p"),
            max_new_tokens=_parse(max_new_tokens, int, "max new tokens"),
            system_prompt=system_prompt,
            thinking=thinking,
        )

    @property
    def greedy(self) -> bool:
        """Whether the answer is decoded greedily (temperature 0)."""
        return self.temperature == 0


def check_choices(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The user's choices that are settings and follow their rules (numbers written as whole numbers become
    floats where a float is meant), and for each one left out, why (unknown name, or the rule it breaks)."""
    kept: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for name, value in values.items():
        if name not in RULES:
            problems[name] = "unknown setting"
        elif not follows_rule(name, value):
            problems[name] = f"must be {RULES[name].said}"
        else:
            kept[name] = float(value) if RULES[name].kind is float else value
    return kept, problems


def _parse(text: str, kind: type, label: str) -> Any:
    try:
        return kind(text.strip())
    except ValueError:
        expected = "a whole number" if kind is int else "a number"
        raise UserError(f"{label} must be {expected}, not {text.strip()!r}") from None
