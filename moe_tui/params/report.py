"""Figures drawn from a parameter tree: the per-category breakdown, the summary and the ``--json`` document.

Memory at a precision is the sum over tensors of :func:`moe_tui.params.tree.tensor_bytes`: ``n`` parameters
of a matrix take ``4n`` bytes at fp32, ``2n`` at bf16, ``n + 2 x rows`` at int8 (one fp16 scale per row),
and at HQQ b bits with group size g the packed integers (``ceil(n/g / (8/b)) x g`` bytes for b = 2, 4, 8;
``4 x ceil(n/g / 10) x g`` for b = 3) plus a 2-byte scale and zero per group (``4 x n/g`` bytes): 0.5625
bytes per parameter at 4 bits, g = 64. Vectors (norms, biases) stay 16-bit below 16 bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moe_tui import precision as prec
from moe_tui.params.tree import ParamNode

# Every parameter falls in exactly one category: the outermost node of one of these kinds above it.
CATEGORIES = ("embeddings", "attention", "mlp", "router", "experts", "shared_experts", "norm", "lm_head", "other")
STRUCTURAL_KINDS = ("model", "layers", "moe")


@dataclass(frozen=True)
class Part:
    """Total and active parameters of one category (active None when it cannot be derived)."""

    total: int
    active: int | None


def breakdown(tree: ParamNode) -> dict[str, Part]:
    """Parameters per category; the categories add up to ``tree.total`` (and ``tree.active``)."""
    totals = dict.fromkeys(CATEGORIES, 0)
    actives: dict[str, int | None] = dict.fromkeys(CATEGORIES, 0)

    def add(category: str, total: int, active: int | None) -> None:
        totals[category] += total
        current = actives[category]
        actives[category] = None if current is None or active is None else current + active

    def visit(node: ParamNode) -> None:
        if node.kind in STRUCTURAL_KINDS:
            own_active = None if node.active_copies is None else node.active_copies * node.own_params
            add("other", node.copies * node.own_params, own_active)
            for child in node.children:
                visit(child)
        else:
            add(node.kind if node.kind in CATEGORIES else "other", node.total, node.active)

    visit(tree)
    if tree.active is None:
        actives = dict.fromkeys(CATEGORIES)
    return {category: Part(totals[category], actives[category]) for category in CATEGORIES}


def active_share(tree: ParamNode) -> float | None:
    """Active parameters as a fraction of the total, or None when active is unknown."""
    return None if tree.active is None or not tree.total else tree.active / tree.total


def memory(tree: ParamNode, group_size: int, precisions: tuple[str, ...] = prec.SUMMARY_PRECISIONS) -> dict:
    """Bytes of the whole model and of one token's active parameters at each precision."""
    return {p: {"total": tree.bytes(p, group_size), "active": tree.active_bytes(p, group_size)} for p in precisions}


def expert_facts(tree: ParamNode, precision: str, group_size: int) -> dict[str, Any] | None:
    """Count, top-k, MoE layers and the size of one routed expert, or None for a model without experts."""
    nodes = tree.find_all("experts")
    if not nodes:
        return None
    first = nodes[0]
    return {
        "count": first.repeat,
        "top_k": first.active_repeat,
        "moe_layers": sum(node.copies // node.repeat for node in nodes),
        "per_expert": first.per_copy,
        "per_expert_bytes": first.bytes(precision, group_size) // first.copies,
        "per_expert_shapes": [list(shape) for shape in first.tensor_shapes()],
    }


def layer_groups(tree: ParamNode) -> list[dict[str, Any]]:
    """One entry per run of identical decoder layers: its range, count and per-layer and total figures."""
    groups = []
    for node in tree.children:
        if node.kind != "layers" or node.span is None:
            continue
        groups.append(
            {
                "name": node.name,
                "first": node.span[0],
                "last": node.span[1],
                "count": node.repeat,
                "moe": bool(node.find_all("experts")),
                "per_layer": node.per_copy,
                "per_layer_active": None if node.active is None else node.active // node.repeat,
                "total": node.total,
                "active": node.active,
            }
        )
    return groups


def node_dict(node: ParamNode, whole: int, precision: str, group_size: int, depth: int | None) -> dict[str, Any]:
    """One node (and its children down to ``depth`` more levels; None: all) as JSON-ready data."""
    data: dict[str, Any] = {
        "name": node.name,
        "kind": node.kind,
        "label": node.label,
        "path": node.path,
        "copies": node.copies,
        "total": node.total,
        "active": node.active,
        "share": round(node.share_of(whole), 6),
        "bytes": node.bytes(precision, group_size),
    }
    if node.shapes:
        data["shapes"] = [list(shape) for shape in node.shapes]
    if node.children and (depth is None or depth > 0):
        below = None if depth is None else depth - 1
        data["children"] = [node_dict(child, whole, precision, group_size, below) for child in node.children]
    return data


def to_json(
    tree: ParamNode, *, source: str = "", precision: str = "bf16", group_size: int = 64, depth: int | None = None
) -> dict[str, Any]:
    """The ``moe-tui params --json`` document (see the README for its keys)."""
    parts = breakdown(tree)

    def part(category: str) -> dict[str, Any]:
        value = parts[category]
        return {"total": value.total, "active": value.active, "share": round(value.total / tree.total, 6)}

    lm_head = tree.find("lm_head")
    experts = {**part("experts"), **(expert_facts(tree, precision, group_size) or {})}
    moe_blocks = tree.find_all("moe")
    return {
        "model": source,
        "architecture": tree.name,
        "label": tree.label,
        "total": tree.total,
        "active": tree.active,
        "active_share": active_share(tree),
        "active_note": tree.note or None,
        "precision": precision,
        "group_size": group_size,
        "bytes": memory(tree, group_size, _with(prec.SUMMARY_PRECISIONS, precision)),
        "embeddings": part("embeddings"),
        "attention": part("attention"),
        "mlp": part("mlp"),
        "router": part("router"),
        "experts": experts,
        "shared_experts": part("shared_experts"),
        "norms": part("norm"),
        "lm_head": {**part("lm_head"), "tied": lm_head is not None and lm_head.total == 0},
        "other": part("other"),
        "moe_blocks": {
            "total": sum(node.total for node in moe_blocks),
            "active": None if tree.active is None else sum(node.active or 0 for node in moe_blocks),
        },
        "layers": layer_groups(tree),
        "tree": node_dict(tree, tree.total, precision, group_size, depth),
    }


def _with(precisions: tuple[str, ...], extra: str) -> tuple[str, ...]:
    return precisions if extra in precisions else (*precisions, extra)
