"""The Parameters panel's bytes: each part of the model counted the way the engine holds it."""

from __future__ import annotations

import torch

from moe_tui.offload.formats import make_format
from moe_tui.params import expert_weight_shapes, load_config
from moe_tui.params.tree import ParamNode, tensor_bytes
from moe_tui.tui.params_view import HeldPrecisions, params_tree

MIXTRAL = load_config("mixtral-8x7b")
LAYERS, EXPERTS = 32, 8


def sizes(held: HeldPrecisions) -> tuple[ParamNode, dict[str, int]]:
    """The tree and each node's bytes by path ("model", "model/layers 0-31/mlp/experts/gate_proj", ...)."""
    root, size_of, _ = params_tree(MIXTRAL, held)
    by_path: dict[str, int] = {}

    def walk(node: ParamNode, prefix: str) -> None:
        path = f"{prefix}/{node.name}" if prefix else "model"
        by_path[path] = size_of(node)
        for child in node.children:
            walk(child, path)

    walk(root, "")
    return root, by_path


def find(by_path: dict[str, int], ending: str) -> int:
    """The one size whose path ends with ``ending``."""
    (size,) = [size for path, size in by_path.items() if path.endswith(ending)]
    return size


def test_experts_count_the_engines_bytes_and_their_parts_add_up_to_them() -> None:
    int3 = make_format(expert_weight_shapes(MIXTRAL), torch.bfloat16, bits=3)
    assert int3.label() == "int3 (unfused)"
    held = HeldPrecisions.from_settings("bf16", 3, None, 64, expert_format=int3.label(), expert_bytes=int3.nbytes)
    _, by_path = sizes(held)
    experts = find(by_path, "/mlp/experts")
    assert experts == int3.nbytes * LAYERS * EXPERTS  # 3 bits a weight, not HQQ's 3.2
    parts = [find(by_path, f"/experts/{name}") for name in ("gate_proj", "up_proj", "down_proj")]
    assert abs(sum(parts) - experts) <= len(parts)  # only rounding apart
    assert parts[0] == parts[1] == parts[2]
    assert "experts int3 (unfused)" in held.note()


def test_only_the_decoder_layers_linears_take_the_attention_bits() -> None:
    held = HeldPrecisions.from_settings("bf16", 4, 4, 64, expert_format="int4")
    root, by_path = sizes(held)
    attention = root.find("attention")
    assert attention is not None
    q_proj = next(child for child in attention.children if child.name == "q_proj")
    assert find(by_path, "/self_attn/q_proj") == LAYERS * tensor_bytes(q_proj.shapes[0], "hqq4")
    hidden, vocab = MIXTRAL.hidden_size, MIXTRAL.vocab_size
    assert find(by_path, "/lm_head") == vocab * hidden * 2  # outside the decoder layers: bf16
    assert find(by_path, "/embed_tokens") == vocab * hidden * 2
    assert find(by_path, "/mlp/gate") == LAYERS * EXPERTS * hidden * 2  # the router stays in the dtype
    assert find(by_path, "/input_layernorm") == LAYERS * hidden * 2
    # without the engine's figure the experts are estimated at HQQ's 4-bit layout
    assert find(by_path, "/mlp/experts") == root.find("experts").bytes("hqq4")
    assert "experts int4, attention hqq4, others bf16" in held.note()


def test_a_node_without_weights_of_its_own_is_the_sum_of_its_children() -> None:
    held = HeldPrecisions.from_settings("fp32", 2, 8, 64, expert_format="int2", expert_bytes=123_456)
    root, size_of, _ = params_tree(MIXTRAL, held)
    checked = 0
    for _, node in root.walk():
        if node.children and not node.shapes:
            assert abs(size_of(node) - sum(size_of(child) for child in node.children)) <= len(node.children)
            checked += 1
    assert checked >= 4  # the model, the layers, attention, the MoE block, the experts
    assert size_of(root.find("experts")) == 123_456 * LAYERS * EXPERTS
