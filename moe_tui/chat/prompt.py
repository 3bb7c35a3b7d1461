"""Turn a conversation into the prompt text a model expects, through its own chat template.

Templates differ in what they accept: many reject a ``system`` role (Mistral/Mixtral raise an error) or drop
it silently, and most insist that user and assistant turns alternate. :func:`render_prompt` smooths this over:
consecutive turns of one role are merged, and a system prompt that the template rejects or leaves out is put
at the top of the first user message instead. A tokenizer without a template gets :data:`PLAIN_TEMPLATE`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from moe_tui.errors import UserError

PLAIN_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
_TURN_ROLES = ("user", "assistant")


class _RoleAndContent(Protocol):
    @property
    def role(self) -> str: ...

    @property
    def content(self) -> str: ...


ChatMessage = Mapping[str, Any] | _RoleAndContent
"""A message: a mapping with ``role`` and ``content`` keys, or an object with those attributes."""


def split_conversation(messages: Iterable[ChatMessage], system_prompt: str = "") -> tuple[str, list[dict]]:
    """Check a conversation and return (system text, turns): system messages joined, same-role turns merged.

    Messages are mappings or objects (such as :class:`moe_tui.chat.history.Message`) with ``role`` and
    ``content``; empty ones are skipped (an answer placeholder not yet written, say). Raises
    :class:`UserError` for a message without a known role or text, and for a conversation that does not end
    with a user message (there would be nothing to answer).
    """
    system_parts = [system_prompt.strip()] if system_prompt.strip() else []
    turns: list[dict] = []
    for index, message in enumerate(messages):
        role, content = _field(message, "role"), _field(message, "content")
        if not isinstance(content, str):
            raise UserError(f"message {index + 1} has no text content")
        if role not in ("system", *_TURN_ROLES):
            raise UserError(f"message {index + 1} has role {role!r}; expected system, user or assistant")
        if not content.strip():
            continue
        if role == "system":
            system_parts.append(content.strip())
        elif turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + content
        else:
            turns.append({"role": role, "content": content})
    if not turns or turns[-1]["role"] != "user":
        raise UserError("the conversation must end with a user message for the model to answer")
    return "\n\n".join(system_parts), turns


def render_prompt(tokenizer: Any, messages: Iterable[ChatMessage], system_prompt: str = "") -> str:
    """The prompt text for ``messages`` (ending with the assistant's turn opened), via the tokenizer's template."""
    return render_turns(tokenizer, *split_conversation(messages, system_prompt))


def supports_thinking(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template has a switch for the model's thinking (Qwen3's ``enable_thinking``)."""
    return "enable_thinking" in (getattr(tokenizer, "chat_template", None) or "")


def render_turns(tokenizer: Any, system: str, turns: list[dict], thinking: bool = True) -> str:
    """The prompt text for turns already checked by :func:`split_conversation`, with ``system`` placed as the
    template allows; ``thinking`` False turns a thinking model's reasoning off where its template can."""
    template = getattr(tokenizer, "chat_template", None) or PLAIN_TEMPLATE
    switch = {"enable_thinking": thinking} if supports_thinking(tokenizer) else {}
    if system:
        try:
            text = _apply(tokenizer, template, [{"role": "system", "content": system}, *turns], switch)
        except UserError:
            text = None
        if text is not None and system in text:
            return text
        first_user = next(index for index, turn in enumerate(turns) if turn["role"] == "user")
        turns = [dict(turn) for turn in turns]
        turns[first_user]["content"] = f"{system}\n\n{turns[first_user]['content']}"
    return _apply(tokenizer, template, turns, switch)


def _field(message: ChatMessage, name: str) -> Any:
    return message.get(name) if isinstance(message, Mapping) else getattr(message, name, None)


def _apply(tokenizer: Any, template: str, conversation: list[dict], switches: dict[str, Any]) -> str:
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(
            conversation, chat_template=template, tokenize=False, add_generation_prompt=True, **switches
        )
    except (TemplateError, ValueError, TypeError, KeyError) as error:
        raise UserError(f"the model's chat template failed: {error}") from None
    if not isinstance(text, str):
        raise UserError("the model's chat template did not produce text")
    return text
