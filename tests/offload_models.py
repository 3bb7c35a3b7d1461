"""Small random MoE models for the engine tests, and checkpoints written in both expert layouts."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (
    DeepseekV2Config,
    DeepseekV2ForCausalLM,
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
    Glm4MoeConfig,
    Glm4MoeForCausalLM,
    GptOssConfig,
    GptOssForCausalLM,
    GraniteMoeConfig,
    GraniteMoeForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    OlmoeConfig,
    OlmoeForCausalLM,
    PhimoeConfig,
    PhimoeForCausalLM,
    PreTrainedModel,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

VOCAB = 97


def mixtral_config(
    experts: int = 4, top_k: int = 2, hidden: int = 48, intermediate: int = 40, layers: int = 3, heads: int = 4
) -> MixtralConfig:
    """A tiny Mixtral config (fp32, eager-free defaults)."""
    return MixtralConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(heads // 2, 1),
        head_dim=hidden // heads,
        num_local_experts=experts,
        num_experts_per_tok=top_k,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )


def odd_mixtral_config() -> MixtralConfig:
    """5 experts, top-3, hidden size 36 (not a power of two), intermediate 26.

    The reference uses transformers' eager experts: its default grouped_mm kernel needs 16-byte strides.
    """
    config = mixtral_config(experts=5, top_k=3, hidden=36, intermediate=26, layers=3, heads=3)
    config._experts_implementation = "eager"
    return config


def build(config, seed: int = 0) -> PreTrainedModel:
    """A model with random weights (larger than the default init, so routing and logits vary)."""
    torch.manual_seed(seed)
    classes = {
        "mixtral": MixtralForCausalLM,
        "qwen2_moe": Qwen2MoeForCausalLM,
        "qwen3_moe": Qwen3MoeForCausalLM,
        "olmoe": OlmoeForCausalLM,
        "llama": LlamaForCausalLM,
        "deepseek_v2": DeepseekV2ForCausalLM,
        "deepseek_v3": DeepseekV3ForCausalLM,
        "glm4_moe": Glm4MoeForCausalLM,
        "phimoe": PhimoeForCausalLM,
        "granitemoe": GraniteMoeForCausalLM,
        "gpt_oss": GptOssForCausalLM,
    }
    model = classes[config.model_type](config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.2 if "gate" in name and "experts" not in name else 0.08)
    return model


def twin(config, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedModel]:
    """Two identical models: a reference and one to offload (offload_model changes its model in place)."""
    model = build(config, seed)
    return model, copy.deepcopy(model)


def qwen2_moe_config() -> Qwen2MoeConfig:
    """Tiny Qwen2-MoE with a shared expert and one dense (non-MoE) layer."""
    return Qwen2MoeConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        moe_intermediate_size=24,
        shared_expert_intermediate_size=40,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=6,
        num_experts_per_tok=2,
        mlp_only_layers=[1],
        norm_topk_prob=False,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=2,
    )


def qwen3_moe_config() -> Qwen3MoeConfig:
    """Tiny Qwen3-MoE."""
    return Qwen3MoeConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        moe_intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_experts=6,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=2,
    )


def olmoe_config() -> OlmoeConfig:
    """Tiny OLMoE."""
    return OlmoeConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_experts=6,
        num_experts_per_tok=2,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=2,
    )


def deepseek_v2_config() -> DeepseekV2Config:
    """Tiny DeepSeek-V2: MLA attention, one dense first layer, 8 experts in 4 groups (2 kept), a shared expert."""
    return DeepseekV2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        moe_intermediate_size=16,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        q_lora_rank=None,
        kv_lora_rank=16,
        qk_nope_head_dim=8,
        qk_rope_head_dim=4,
        v_head_dim=8,
        n_routed_experts=8,
        n_shared_experts=1,
        num_experts_per_tok=2,
        topk_method="group_limited_greedy",
        n_group=4,
        topk_group=2,
        first_k_dense_replace=1,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=2,
    )


def deepseek_v3_config(model_type: str = "deepseek_v3") -> DeepseekV3Config | Glm4MoeConfig:
    """Tiny DeepSeek-V3 (or GLM-4.5 with ``glm4_moe``): sigmoid routing with a correction bias, 8 experts in 4
    groups (2 kept), a shared expert, one dense first layer (DeepSeek-V3: MLA attention)."""
    shared = {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "intermediate_size": 48,
        "moe_intermediate_size": 16,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "n_routed_experts": 8,
        "n_shared_experts": 1,
        "num_experts_per_tok": 2,
        "n_group": 4,
        "topk_group": 2,
        "first_k_dense_replace": 1,
        "norm_topk_prob": True,
        "routed_scaling_factor": 2.5,
        "max_position_embeddings": 256,
        "pad_token_id": 0,
        "eos_token_id": 2,
    }
    if model_type == "glm4_moe":
        return Glm4MoeConfig(**shared, head_dim=8)
    return DeepseekV3Config(
        **shared, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8
    )


def _four_local_experts(config_class):
    """A tiny two-layer config of a family whose experts are ``num_local_experts``, top-2 of 4."""
    return config_class(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def phimoe_config() -> PhimoeConfig:
    """Tiny Phi-3.5-MoE (sparsemixer routing)."""
    return _four_local_experts(PhimoeConfig)


def granitemoe_config() -> GraniteMoeConfig:
    """Tiny GraniteMoE."""
    return _four_local_experts(GraniteMoeConfig)


def gpt_oss_config() -> GptOssConfig:
    """Tiny gpt-oss: biased experts with the clamped SwiGLU, attention sinks, sliding and full layers."""
    return GptOssConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=2,
    )


def llama_config() -> LlamaConfig:
    """A tiny dense model (not MoE)."""
    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )


def save_original(model: PreTrainedModel, directory: Path, shard_size: str | None = None) -> Path:
    """The original layout (one tensor per expert, Mixtral's ``block_sparse_moe``), as save_pretrained writes it."""
    if shard_size:
        model.save_pretrained(directory, max_shard_size=shard_size)
    else:
        model.save_pretrained(directory)
    return directory


def save_fused(model: PreTrainedModel, directory: Path, shards: int = 1) -> Path:
    """The fused transformers-5 layout (``mlp.experts.gate_up_proj`` / ``down_proj``), optionally sharded."""
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(directory)
    state = {key: tensor.detach().contiguous() for key, tensor in model.state_dict().items()}
    keys = sorted(state)
    if shards == 1:
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
        return directory
    weight_map = {}
    for index in range(shards):
        name = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = {key: state[key] for key in keys[index::shards]}
        save_file(part, str(directory / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    index_json = {"metadata": {}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index_json))
    return directory


def prompt(batch: int = 2, length: int = 9, seed: int = 1) -> torch.Tensor:
    """Random token ids avoiding the special tokens."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=generator)
