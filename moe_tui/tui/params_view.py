"""The parameter tree of the loaded model with bytes at the precision the engine actually runs each part at."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moe_tui.import_lock import TRANSFORMERS_IMPORTS
from moe_tui.precision import precision_for_bits

_TORCH_PRECISIONS = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}


def running_precisions(engine: Any) -> tuple[str, str]:
    """(expert precision, other weights' precision) of an offloaded model, e.g. ``("hqq4", "bf16")``."""
    config = getattr(engine, "config", None)
    model = getattr(engine, "model", None)
    dtype = _TORCH_PRECISIONS.get(str(getattr(model, "dtype", "")), "bf16")
    expert_bits = getattr(config, "expert_bits", None)
    attn_bits = getattr(config, "attn_bits", None)
    return precision_for_bits(expert_bits, dtype), precision_for_bits(attn_bits, dtype)


def params_tree(config: Any, backend: Any) -> tuple[Any, Callable[[Any], int], str]:
    """(root node, bytes of a node, a note) for the parameter panel; builds on the meta device."""
    from moe_tui.params import build_tree

    with TRANSFORMERS_IMPORTS:  # the model picker may be building trees in another thread
        root = build_tree(config)
    engine = getattr(backend, "engine", None)
    experts, others = running_precisions(engine)
    group_size = getattr(getattr(engine, "config", None), "group_size", 64)

    def size_of(node: Any) -> int:
        return _bytes(node, experts, others, group_size)

    note = f"bytes at the running precision: experts {experts}, other weights {others}"
    return root, size_of, note


def _bytes(node: Any, experts: str, others: str, group_size: int) -> int:
    """Bytes of a subtree, routed experts at the expert precision and everything else at the other one."""
    if node.kind == "experts":
        return node.bytes(experts, group_size)
    if not node.children:
        return node.bytes(others, group_size)
    own = node.copies * sum(_bytes_of_shape(shape, others, group_size) for shape in node.shapes)
    return own + sum(_bytes(child, experts, others, group_size) for child in node.children)


def _bytes_of_shape(shape: tuple[int, ...], precision: str, group_size: int) -> int:
    from moe_tui.params.tree import tensor_bytes

    return tensor_bytes(shape, precision, group_size)
