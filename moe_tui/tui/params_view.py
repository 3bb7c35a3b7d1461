"""The parameter tree of the loaded model with bytes as the engine holds each part.

Three kinds of weight are held three ways: the routed experts in the engine's expert format (the bytes of one
expert come from the engine, so an ``int3`` expert counts 3 bits a weight where HQQ's own 3-bit layout would
take 3.2), the decoder layers' linear weights at ``--attn-bits`` (HQQ) or the model's dtype, and everything
else (embeddings, LM head, norms, routers) at the dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from moe_tui.import_lock import TRANSFORMERS_IMPORTS
from moe_tui.params.tree import tensor_bytes
from moe_tui.precision import precision_for_bits


@dataclass(frozen=True)
class HeldPrecisions:
    """How the engine holds the model's weights (see the module docstring)."""

    expert_format: str  # as the Prefetch panel names it: "int4", "bf16", "hqq3 (unfused)"
    expert_precision: str  # the precision the experts were quantized to ("hqq4", or the dtype)
    expert_bytes: int  # one routed expert in the engine's format (0: not known, estimated at expert_precision)
    linears: str  # the decoder layers' linear weights: "hqq4" ... or the dtype
    dtype: str  # everything else: "bf16", "fp16" or "fp32"
    group_size: int = 64

    @classmethod
    def from_settings(
        cls,
        dtype: str,
        expert_bits: int | None,
        attn_bits: int | None,
        group_size: int,
        expert_format: str = "",
        expert_bytes: int = 0,
    ) -> HeldPrecisions:
        """From the engine's settings (``--dtype``, ``--expert-bits``, ``--attn-bits``, ``--group-size``) and, when
        known, its expert format's name and bytes."""
        experts = precision_for_bits(expert_bits, dtype)
        return cls(
            expert_format=expert_format or experts,
            expert_precision=experts,
            expert_bytes=expert_bytes,
            linears=precision_for_bits(attn_bits, dtype),
            dtype=dtype,
            group_size=group_size,
        )

    def note(self) -> str:
        """The panel's line saying what the bytes column counts."""
        if self.linears == self.dtype:
            return f"bytes as held: experts {self.expert_format}, others {self.dtype}"
        return f"bytes as held: experts {self.expert_format}, attention {self.linears}, others {self.dtype}"


def params_tree(config: Any, held: HeldPrecisions) -> tuple[Any, Callable[[Any], int], str]:
    """(root node, bytes of a node, a note) for the parameter panel; builds on the meta device."""
    from moe_tui.params import build_tree

    with TRANSFORMERS_IMPORTS:  # the model picker may be building trees in another thread
        root = build_tree(config)
    sizes = held_sizes(root, held)
    return root, lambda node: sizes[id(node)], held.note()


def held_sizes(root: Any, held: HeldPrecisions) -> dict[int, int]:
    """Bytes of every node under ``root`` (keyed by ``id``) as the engine holds them.

    A routed-experts node counts ``expert_bytes`` per copy when the engine said it; its parts (gate, up, down)
    share that in proportion to their size at the experts' precision, so they add up to their parent.
    """
    sizes: dict[int, int] = {}

    def visit(node: Any, in_layers: bool, expert_scale: float | None) -> int:
        in_layers = in_layers or node.kind == "layers"
        exact = None
        if node.kind == "experts" and expert_scale is None:
            estimate = node.bytes(held.expert_precision, held.group_size)
            expert_scale = held.expert_bytes * node.copies / estimate if held.expert_bytes and estimate else 1.0
            exact = round(estimate * expert_scale)  # the engine's figure, whatever its parts round to
        own = node.copies * sum(_shape_bytes(shape, node, in_layers, expert_scale, held) for shape in node.shapes)
        parts = round(own) + sum(visit(child, in_layers, expert_scale) for child in node.children)
        sizes[id(node)] = parts if exact is None else exact
        return sizes[id(node)]

    visit(root, False, None)
    return sizes


def _shape_bytes(
    shape: tuple[int, ...], node: Any, in_layers: bool, expert_scale: float | None, held: HeldPrecisions
) -> float:
    """One tensor's bytes: an expert's part at the experts' precision scaled to the engine's bytes, a decoder
    layer's quantizable linear weight at the linears' precision, anything else at the dtype."""

    if expert_scale is not None:
        return tensor_bytes(shape, held.expert_precision, held.group_size) * expert_scale
    quantizable = len(shape) == 2 and shape[0] > 1 and (shape[0] * shape[1]) % held.group_size == 0
    if in_layers and quantizable and node.kind != "router":
        return tensor_bytes(shape, held.linears, held.group_size)
    return tensor_bytes(shape, held.dtype, held.group_size)
