"""Find, read and check a model's config.json without touching the network or any weights.

A spec is tried, in order, as: a path to a JSON file; a model directory holding ``config.json``; the name of
a config bundled in ``samples/configs`` (``mixtral-8x7b``); ``demo-mixtral``, the bundled demo model; a Hugging
Face hub id whose ``config.json`` is already in the local cache (``HF_HUB_CACHE``). Anything else is a
:class:`~moe_tui.errors.UserError` that names what was tried.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moe_tui.errors import UserError
from moe_tui.params.families import EXPERT_COUNT_FIELDS, family_for
from moe_tui.paths import CONFIGS_DIR, DEMO_MODEL_DIR, DEMO_MODEL_NAME

if TYPE_CHECKING:
    from transformers import PretrainedConfig

CONFIG_NAME = "config.json"


def load_config(
    spec: str | os.PathLike[str], *, hf_cache_dir: str | os.PathLike[str] | None = None
) -> PretrainedConfig:
    """Return the transformers config that ``spec`` names, checked for impossible values.

    ``hf_cache_dir`` overrides the Hugging Face hub cache that hub ids are looked up in. Raises UserError for
    a missing file, a file that is not JSON, a config that is not a causal language model, or impossible
    values (zero layers, more experts per token than experts, ...).
    """
    path = resolve_config_path(spec, hf_cache_dir=hf_cache_dir)
    raw = read_config_json(path)
    config = config_from_dict(raw, source=str(path))
    check_config(config, source=str(path))
    return config


def resolve_config_path(spec: str | os.PathLike[str], *, hf_cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The config.json file that ``spec`` stands for (see the module docstring for the order tried)."""
    text = os.fspath(spec)
    if not text.strip():
        raise UserError("no model given: pass a config.json path, a model directory or a hub id")
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        candidate = path / CONFIG_NAME
        if candidate.is_file():
            return candidate
        raise UserError(f"directory {text} has no {CONFIG_NAME}")
    sample = CONFIGS_DIR / f"{text}.json"
    if "/" not in text and sample.is_file():
        return sample
    if text == DEMO_MODEL_NAME:
        return DEMO_MODEL_DIR / CONFIG_NAME
    if _is_path_like(text) or not _looks_like_repo_id(text):
        raise UserError(f"no such file or directory: {text}")
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(text, CONFIG_NAME, cache_dir=hf_cache_dir)
    if isinstance(found, str):
        return Path(found)
    return _raise_not_found(text, hf_cache_dir)


def _is_path_like(text: str) -> bool:
    """Specs that can only be meant as paths: ``x.json``, ``./x``, ``/x``, ``~/x``, ``a/b/c``."""
    return (
        text.endswith(".json")
        or text.startswith((".", "/", "~"))
        or text.count("/") > 1
        or os.sep in text.replace("/", "")
    )


def _raise_not_found(text: str, hf_cache_dir: str | os.PathLike[str] | None) -> Path:
    from huggingface_hub import constants

    cache = os.fspath(hf_cache_dir) if hf_cache_dir is not None else constants.HF_HUB_CACHE
    raise UserError(
        f"cannot find {text!r}: it is not a file or directory, not a bundled sample config or demo-mixtral, "
        f"and hub id {text!r} has no {CONFIG_NAME} in the local Hugging Face cache ({cache}); nothing is downloaded "
        f"(fetch only the config with: hf download {text} {CONFIG_NAME})"
    )


def _looks_like_repo_id(text: str) -> bool:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def read_config_json(path: Path) -> dict[str, Any]:
    """Parse ``path`` as a JSON object with a ``model_type``; UserError otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a JSON text file") from None
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path} holds a JSON {type(raw).__name__}, not a config object")
    if not isinstance(raw.get("model_type"), str):
        raise UserError(f"{path} has no 'model_type', so it is not a Hugging Face model config")
    return raw


def config_from_dict(raw: dict[str, Any], *, source: str) -> PretrainedConfig:
    """Turn a parsed config.json into the transformers config class for its ``model_type``."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = raw["model_type"]
    if model_type not in CONFIG_MAPPING:
        raise UserError(
            f"{source}: model_type {model_type!r} is unknown to transformers {transformers.__version__}, "
            "so its modules cannot be built"
        )
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UserError(
            f"{source}: a {model_type!r} model is not a causal language model "
            "(transformers has no ...ForCausalLM class for it)"
        )
    try:
        config = CONFIG_MAPPING[model_type].from_dict(raw)
    except Exception as error:  # transformers raises many types for bad field values
        raise UserError(f"{source}: transformers rejects this config: {one_line(error)}") from None
    config._name_or_path = source
    return config


def check_config(config: PretrainedConfig, *, source: str) -> None:
    """Raise UserError for values no model can have: zero layers, top-k above the expert count, ..."""
    for field in ("num_hidden_layers", "hidden_size", "vocab_size", "num_attention_heads", "num_key_value_heads"):
        _require_positive(config, field, source)
    heads, kv_heads = getattr(config, "num_attention_heads", None), getattr(config, "num_key_value_heads", None)
    if isinstance(heads, int) and isinstance(kv_heads, int) and heads % kv_heads:
        raise UserError(
            f"{source}: num_attention_heads = {heads} is not a multiple of num_key_value_heads = {kv_heads}"
        )
    family = family_for(config.model_type)
    if family is not None and family.is_moe:
        experts_field, top_k_field = family.experts_field, family.top_k_field
    else:
        experts_field = next((f for f in EXPERT_COUNT_FIELDS if getattr(config, f, None) is not None), None)
        top_k_field = "num_experts_per_tok" if getattr(config, "num_experts_per_tok", None) is not None else None
    if experts_field is None or top_k_field is None:
        return
    experts = _require_positive(config, experts_field, source, what="a MoE model needs at least one expert")
    top_k = _require_positive(config, top_k_field, source, what="each token must use at least one expert")
    if top_k > experts:
        raise UserError(
            f"{source}: {top_k_field} = {top_k} is larger than {experts_field} = {experts}: "
            "a token cannot use more experts than a layer has"
        )
    _check_expert_groups(config, experts, source)
    _require_positive(config, "moe_intermediate_size", source)


def _check_expert_groups(config: PretrainedConfig, experts: int, source: str) -> None:
    """DeepSeek's group-limited routing: n_group must divide the experts, topk_group must not exceed n_group."""
    groups, topk_group = getattr(config, "n_group", None), getattr(config, "topk_group", None)
    if groups is None:
        return
    groups = _require_positive(config, "n_group", source)
    if experts % groups:
        raise UserError(f"{source}: n_group = {groups} does not divide the {experts} routed experts into equal groups")
    if topk_group is not None and not 1 <= topk_group <= groups:
        raise UserError(f"{source}: topk_group = {topk_group} must be between 1 and n_group = {groups}")


def _require_positive(config: PretrainedConfig, field: str, source: str, *, what: str = "") -> int:
    """The value of ``field`` when it is a whole number >= 1 (absent fields pass unless ``what`` says why not)."""
    value = getattr(config, field, None)
    if value is None:
        if what:
            raise UserError(f"{source}: {field} is missing ({what})")
        return 1
    if not isinstance(value, int) or isinstance(value, bool):
        raise UserError(f"{source}: {field} must be a whole number, not {value!r}")
    if value < 1:
        reason = what or ("a model needs at least one decoder layer" if field == "num_hidden_layers" else "")
        raise UserError(f"{source}: {field} = {value} must be at least 1" + (f" ({reason})" if reason else ""))
    return value


def one_line(error: BaseException) -> str:
    """An exception's message squeezed onto one line (transformers' validation errors span several)."""
    text = " ".join(str(error).split())
    return text or type(error).__name__
