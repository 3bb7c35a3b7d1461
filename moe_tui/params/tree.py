"""The parameter tree: plain, immutable nodes with counts and tensor shapes (no torch, no Rich, no Textual).

Every node stands for ``copies`` identical copies of one part of the model (a grouped run of 32 decoder
layers makes each of its parts 32 copies; the routed experts of those layers are 32 x 8 copies) and holds
the shapes of the tensors that belong to it directly, for one copy. So

    total  = copies        x (parameters of its own tensors) + sum of the children's totals
    active = active_copies x (parameters of its own tensors) + sum of the children's actives

where ``active_copies`` counts the copies one token uses (32 x 2 for Mixtral's routed experts), or is None
when it cannot be known. Totals are whole-model figures: the children of a node add up to the node.

Bytes at a precision come from :mod:`moe_tui.precision`, tensor by tensor (each tensor is stored and
quantized on its own). Vectors (norm weights, biases, attention sinks) are not quantized: below 16 bits
(``int8``, ``hqq*``) they count 2 bytes each; at ``fp32`` 4 bytes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

from moe_tui import precision as prec

# Node kinds. "layers" is a run of identical decoder layers; "moe" a feed-forward block with routed experts;
# "weights" a plain leaf (a linear layer's weight and bias, one part of an expert); "other" anything else.
KINDS = (
    "model",
    "embeddings",
    "layers",
    "attention",
    "moe",
    "router",
    "experts",
    "shared_experts",
    "mlp",
    "norm",
    "lm_head",
    "weights",
    "other",
)


def tensor_bytes(shape: tuple[int, ...], precision: str, group_size: int = prec.DEFAULT_GROUP_SIZE) -> int:
    """Bytes of one tensor: matrices at ``precision``, vectors at 16 bits below 16-bit precisions."""
    if len(shape) < 2 and precision not in prec.FLOAT_BYTES:
        return math.prod(shape) * 2
    return prec.matrix_bytes(shape, precision, group_size)


@dataclass(frozen=True)
class ParamNode:
    """One part of a model: its name, kind, display label, own tensor shapes, copies and children."""

    name: str
    kind: str
    label: str
    path: str = ""
    shapes: tuple[tuple[int, ...], ...] = ()
    copies: int = 1
    active_copies: int | None = 1
    repeat: int = 1
    children: tuple[ParamNode, ...] = ()
    span: tuple[int, int] | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown node kind {self.kind!r}")

    @cached_property
    def own_params(self) -> int:
        """Parameters of the tensors this node holds directly, for one copy."""
        return sum(math.prod(shape) for shape in self.shapes)

    @cached_property
    def total(self) -> int:
        """Parameters of all copies of this node and everything under it."""
        return self.copies * self.own_params + sum(child.total for child in self.children)

    @cached_property
    def active(self) -> int | None:
        """Parameters one token uses here, or None when that cannot be derived."""
        if self.active_copies is None:
            return None
        child_active = [child.active for child in self.children]
        if any(value is None for value in child_active):
            return None
        return self.active_copies * self.own_params + sum(child_active)  # type: ignore[arg-type]

    @property
    def per_copy(self) -> int:
        """Parameters of one copy (one layer of a layer group, one expert of the routed experts)."""
        return self.total // self.copies

    @property
    def active_repeat(self) -> int | None:
        """Of the ``repeat`` copies directly under this node's parent, how many one token uses (top-k)."""
        if self.active_copies is None:
            return None
        return self.active_copies * self.repeat // self.copies

    def share_of(self, whole: int) -> float:
        """This node's total as a fraction of ``whole`` (0 when ``whole`` is 0)."""
        return self.total / whole if whole else 0.0

    def bytes(self, precision: str, group_size: int = prec.DEFAULT_GROUP_SIZE) -> int:
        """Bytes of all copies of this node and everything under it at ``precision``."""
        own = sum(tensor_bytes(shape, precision, group_size) for shape in self.shapes)
        return self.copies * own + sum(child.bytes(precision, group_size) for child in self.children)

    def active_bytes(self, precision: str, group_size: int = prec.DEFAULT_GROUP_SIZE) -> int | None:
        """Bytes of the parameters one token uses here at ``precision``, or None when unknown."""
        if self.active is None or self.active_copies is None:
            return None
        own = sum(tensor_bytes(shape, precision, group_size) for shape in self.shapes)
        children = [child.active_bytes(precision, group_size) for child in self.children]
        return self.active_copies * own + sum(value for value in children if value is not None)

    def walk(self, depth: int = 0) -> Iterator[tuple[int, ParamNode]]:
        """Every node under and including this one, depth first, with its depth below this node."""
        yield depth, self
        for child in self.children:
            yield from child.walk(depth + 1)

    def find(self, kind: str) -> ParamNode | None:
        """The first node of ``kind`` in depth-first order, or None."""
        return next((node for _, node in self.walk() if node.kind == kind), None)

    def find_all(self, kind: str) -> tuple[ParamNode, ...]:
        """The outermost nodes of ``kind`` (a match's own descendants are not searched)."""
        if self.kind == kind:
            return (self,)
        return tuple(node for child in self.children for node in child.find_all(kind))

    def tensor_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the tensors of one copy of this node, depth first (the order of its leaves)."""
        return [shape for _, node in self.walk() for shape in node.shapes]

    def scaled(self, factor: int) -> ParamNode:
        """This subtree standing for ``factor`` times as many copies (used to group identical layers)."""
        return dataclasses.replace(
            self,
            copies=self.copies * factor,
            active_copies=None if self.active_copies is None else self.active_copies * factor,
            children=tuple(child.scaled(factor) for child in self.children),
        )

    def structure(self) -> tuple:
        """Everything that makes two subtrees equal apart from their module paths (for grouping layers)."""
        return (
            self.name,
            self.kind,
            self.label,
            self.shapes,
            self.copies,
            self.active_copies,
            self.repeat,
            tuple(child.structure() for child in self.children),
        )
