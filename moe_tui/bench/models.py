"""The model a benchmark loads: a checkpoint directory, or a random-weight model of any family (``--synthetic``)."""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moe_tui.errors import UserError
from moe_tui.params.config import one_line


# ----------------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class SyntheticShape:
    """The shape of a model with random weights (``--synthetic``) of any family the engine offloads."""

    layers: int = 4
    hidden: int = 1024
    intermediate: int = 2816
    experts: int = 8
    top_k: int = 2
    heads: int = 8
    kv_heads: int = 2
    vocab: int = 4096
    seed: int = 0
    family: str = "mixtral"

    def describe(self) -> str:
        """One line naming the shape."""
        return (
            f"synthetic {self.family}: {self.layers} layers, hidden {self.hidden}, intermediate {self.intermediate}, "
            f"{self.experts} experts top-{self.top_k}, {self.heads} heads ({self.kv_heads} KV), vocab {self.vocab}"
        )

    def config(self) -> Any:
        """The transformers config of this shape in its family (family-specific settings chosen to fit: DeepSeek's
        expert groups, a shared expert and a dense first layer; gpt-oss's sliding and full attention layers)."""
        from transformers import AutoConfig

        head_dim = self.hidden // self.heads
        common = {
            "vocab_size": self.vocab,
            "hidden_size": self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "num_experts_per_tok": self.top_k,
            "max_position_embeddings": 4096,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
        }
        groups = 8 if self.experts % 8 == 0 and self.experts >= 16 else 1
        kept = min(groups, -(-self.top_k // (self.experts // groups)) + (1 if groups > 1 else 0))
        grouped = {"n_routed_experts": self.experts, "n_group": groups, "topk_group": kept, "n_shared_experts": 1}
        grouped |= {"moe_intermediate_size": self.intermediate, "intermediate_size": 2 * self.intermediate}
        grouped |= {"first_k_dense_replace": 1 if self.layers > 1 else 0}
        mla = {"kv_lora_rank": 4 * head_dim, "q_lora_rank": None, "qk_nope_head_dim": head_dim}
        mla |= {"num_key_value_heads": self.heads}  # MLA keeps keys and values per head
        mla |= {"qk_rope_head_dim": max(2, head_dim // 2), "v_head_dim": head_dim}
        local = {"num_local_experts": self.experts, "intermediate_size": self.intermediate}
        qwen = {"num_experts": self.experts, "moe_intermediate_size": self.intermediate, "head_dim": head_dim}
        extra = {
            "mixtral": local,
            "phimoe": local,
            "granitemoe": local,
            "gpt_oss": local
            | {"head_dim": head_dim, "layer_types": ["sliding_attention", "full_attention"] * self.layers},
            "qwen3_moe": qwen | {"intermediate_size": 2 * self.intermediate},
            "qwen2_moe": qwen
            | {"intermediate_size": 2 * self.intermediate}
            | {"shared_expert_intermediate_size": self.intermediate},
            "olmoe": {"num_experts": self.experts, "intermediate_size": self.intermediate},
            "deepseek_v2": grouped | mla | {"topk_method": "group_limited_greedy" if groups > 1 else "greedy"},
            "deepseek_v3": grouped | mla,
            "glm4_moe": grouped | {"head_dim": head_dim},
        }[self.family]
        if self.family == "gpt_oss":
            extra["layer_types"] = extra["layer_types"][: self.layers]
        return AutoConfig.for_model(self.family, **(common | extra))


@dataclass
class BenchModel:
    """A model directory (config.json + safetensors) that every configuration loads from."""

    directory: Path
    description: str
    num_layers: int
    num_experts: int
    top_k: int
    vocab_size: int
    dtype: str
    tokenizer: Any = None
    tokenizer_problem: str = ""  # why the directory's tokenizer did not load (prompts are then bytes)

    def encode(self, prompt: str) -> list[int]:
        """Token ids of a prompt as a user turn: the model's chat template (or plain tokenizer) when it has
        one, else UTF-8 bytes folded into the vocabulary."""
        if self.tokenizer is None:
            return [byte % self.vocab_size for byte in prompt.encode("utf-8")]
        if getattr(self.tokenizer, "chat_template", None):
            chat = [{"role": "user", "content": prompt}]
            encoded = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
            return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
        return list(self.tokenizer(prompt)["input_ids"])

    def decode(self, token: int) -> str:
        """The text of one token id (its number without a tokenizer)."""
        return self.tokenizer.decode([token]) if self.tokenizer is not None else f"<{token}>"


def open_model(directory: str | os.PathLike[str], dtype: str | None = None, name: str | None = None) -> BenchModel:
    """A model directory to benchmark, described by ``name`` (default: the directory's name); UserError when it is
    not a MoE checkpoint the engine supports."""
    from transformers import AutoTokenizer

    from moe_tui.offload.arch import family_of
    from moe_tui.offload.loader import read_model_config, weights_quantization

    path = Path(directory)
    if not (path / "config.json").exists():
        raise UserError(f"{path} is not a model directory (no config.json); pass --model DIR or --synthetic")
    config = read_model_config(path)
    family_of(config)
    weights_quantization(config, path)
    tokenizer, tokenizer_problem = None, ""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        tokenizer_problem = one_line(error)
    experts = getattr(config, "num_local_experts", None) or config.num_experts
    own = str(getattr(config, "dtype", None) or "float32").removeprefix("torch.")
    return BenchModel(
        directory=path,
        description=f"{name or path.name} ({config.model_type}, {config.num_hidden_layers} layers, {experts} experts "
        f"top-{config.num_experts_per_tok}, hidden {config.hidden_size})",
        num_layers=config.num_hidden_layers,
        num_experts=experts,
        top_k=config.num_experts_per_tok,
        vocab_size=config.vocab_size,
        dtype=dtype or own,
        tokenizer=tokenizer,
        tokenizer_problem=tokenizer_problem,
    )


def write_synthetic(shape: SyntheticShape, directory: Path, dtype: str = "float32") -> BenchModel:
    """Save a model of ``shape`` (its family) with random weights (fixed seed) to ``directory`` and open it
    (without transformers' progress bars, which bench keeps off stderr)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    config = shape.config()
    torch.manual_seed(shape.seed)
    # built in the target dtype: a Mixtral-sized layer in fp32 first would need twice the memory
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype)).eval()
    model.save_pretrained(directory)
    del model
    gc.collect()
    opened = open_model(directory, dtype)
    opened.tokenizer, opened.tokenizer_problem = None, ""  # none was saved (a family's default would be empty)
    opened.description = shape.describe() + f", {dtype}, random weights (seed {shape.seed})"
    return opened
