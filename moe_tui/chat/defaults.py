"""Which generation settings an answer uses, and where each came from.

For each setting, in order: the user's own choice (a flag, or saved in the settings file), else the model's
``generation_config.json`` (sampling values its authors recommend: ``do_sample``, ``temperature``, ``top_p``,
``max_new_tokens``), else moe-tui's default (the fields' defaults in
:class:`~moe_tui.chat.generation.GenerationSettings`). A model file that turns sampling off (``do_sample: false``)
means greedy decoding, temperature 0.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from moe_tui.chat.generation import GenerationSettings, check_choices

SOURCES = ("yours", "model", "default")


def effective_generation(chosen: dict[str, Any], model: dict[str, Any]) -> tuple[GenerationSettings, dict[str, str]]:
    """The settings from the user's ``chosen`` values, the ``model``'s and moe-tui's defaults, and each field's
    source (``yours``, ``model`` or ``default``). Values that do not make valid settings together raise
    :class:`~moe_tui.errors.UserError` (checked by GenerationSettings)."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for field in fields(GenerationSettings):
        if chosen.get(field.name) is not None:
            values[field.name], sources[field.name] = chosen[field.name], "yours"
        elif model.get(field.name) is not None:
            values[field.name], sources[field.name] = model[field.name], "model"
        else:
            sources[field.name] = "default"
    return GenerationSettings(**values), sources


def model_sampling(generation_config: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """The sampling values a model's ``generation_config.json`` recommends (none when it has no such file), and
    for each value no setting may hold (``top_p: 7``, ``temperature: "hot"``) what is wrong with it: those are
    left out, so moe-tui's default takes their place rather than the model's file stopping every answer."""
    if generation_config is None or getattr(generation_config, "_from_model_config", False):
        return {}, {}
    values: dict[str, Any] = {}
    if getattr(generation_config, "do_sample", None) is False:
        values["temperature"] = 0.0
    else:
        for name in ("temperature", "top_p"):
            values[name] = getattr(generation_config, name, None)
    values["max_new_tokens"] = getattr(generation_config, "max_new_tokens", None)
    return check_choices({name: value for name, value in values.items() if value is not None})
