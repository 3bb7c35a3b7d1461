"""Rich rendering of a parameter tree for the terminal: a summary and an aligned tree of the model's parts."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from moe_tui import precision as prec
from moe_tui.params.report import active_share, expert_facts, memory
from moe_tui.params.tree import ParamNode

GUIDE_WIDTH = 4  # Rich draws "├── " in front of each level
NUMBER_COLUMNS = (("total", 10), ("active", 10), ("share", 8), ("bytes", 12))
KIND_STYLES = {
    "model": "bold",
    "layers": "bold cyan",
    "moe": "bold magenta",
    "experts": "magenta",
    "shared_experts": "magenta",
    "router": "yellow",
    "attention": "green",
}


def node_title(node: ParamNode) -> str:
    """The text shown for a node: its label, with tensor shapes for leaves (``q_proj [4096x4096]``)."""
    if node.children or not node.shapes:
        return node.label
    shapes = " + ".join("x".join(str(n) for n in shape) for shape in node.shapes)
    return f"{node.label} [{shapes}]"


def _visible(node: ParamNode, depth: int | None, level: int = 0) -> list[tuple[int, ParamNode]]:
    rows = [(level, node)]
    if depth is None or level < depth:
        for child in node.children:
            rows.extend(_visible(child, depth, level + 1))
    return rows


def label_width(tree: ParamNode, depth: int | None = None) -> int:
    """Columns the tree's label column needs (guides included) so that the number columns line up."""
    return max(level * GUIDE_WIDTH + len(node_title(node)) for level, node in _visible(tree, depth)) + 2


def required_width(tree: ParamNode, depth: int | None = None) -> int:
    """Terminal columns the whole tree needs without wrapping."""
    return label_width(tree, depth) + sum(width for _, width in NUMBER_COLUMNS)


def render_tree(
    tree: ParamNode, precision: str = "bf16", group_size: int = prec.DEFAULT_GROUP_SIZE, depth: int | None = None
) -> RenderableType:
    """A header and the tree, with aligned columns: total, active, share of the model, bytes at ``precision``.

    ``depth`` limits how many levels below the root are shown (None: all).
    """
    width = label_width(tree, depth)

    def line(node: ParamNode, level: int) -> Text:
        active = "n/a" if node.active is None else prec.format_count(node.active)
        cells = (
            prec.format_count(node.total),
            active,
            f"{100 * node.share_of(tree.total):.1f}%",
            prec.format_bytes(node.bytes(precision, group_size)),
        )
        text = Text(
            node_title(node).ljust(width - level * GUIDE_WIDTH),
            style=KIND_STYLES.get(node.kind, ""),
            no_wrap=True,
            overflow="ellipsis",
        )
        for cell, (_, cell_width) in zip(cells, NUMBER_COLUMNS, strict=True):
            text.append(cell.rjust(cell_width))
        return text

    def grow(branch: Tree, node: ParamNode, level: int) -> None:
        if depth is not None and level >= depth:
            return
        for child in node.children:
            grow(branch.add(line(child, level + 1)), child, level + 1)

    root = Tree(line(tree, 0), guide_style="dim")
    grow(root, tree, 0)
    header = Text("".ljust(width))
    for name, cell_width in NUMBER_COLUMNS:
        header.append((f"{name} {precision}" if name == "bytes" else name).rjust(cell_width), style="dim bold")
    return Group(header, root)


def render_summary(
    tree: ParamNode, precision: str = "bf16", group_size: int = prec.DEFAULT_GROUP_SIZE
) -> RenderableType:
    """Total, active and active share, the routed experts and one expert's size, and memory per precision."""
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column(justify="right")
    facts.add_column()
    facts.add_row("total", f"{tree.total:,}", f"({prec.format_count(tree.total)})")
    share = active_share(tree)
    if tree.active is not None and share is not None:
        facts.add_row("active", f"{tree.active:,}", f"({prec.format_count(tree.active)}, {100 * share:.1f}% per token)")
    else:
        facts.add_row("active", "n/a", "")
    experts = expert_facts(tree, precision, group_size)
    if experts is not None:
        used = "" if experts["top_k"] is None else f", {experts['top_k']} used per token"
        facts.add_row("experts", str(experts["count"]), f"in each of {experts['moe_layers']} MoE layers{used}")
        size = f"parameters, {prec.format_bytes(experts['per_expert_bytes'])} at {precision}"
        facts.add_row("one expert", f"{experts['per_expert']:,}", size)
    parts: list[RenderableType] = [Text(tree.label, style="bold"), facts]
    if tree.note:
        parts.append(Text(tree.note, style="yellow"))
    parts.append(Text(""))
    table = Table(title=f"memory (HQQ group size {group_size})", title_justify="left", box=None, pad_edge=False)
    table.add_column("precision")
    table.add_column("all weights", justify="right")
    table.add_column("active per token", justify="right")
    table.add_column("bytes/param", justify="right")
    for name, sizes in memory(tree, group_size).items():
        active = "n/a" if sizes["active"] is None else prec.format_bytes(sizes["active"])
        table.add_row(name, prec.format_bytes(sizes["total"]), active, f"{sizes['total'] / tree.total:.4f}")
    parts.append(table)
    return Group(*parts)


def render(
    tree: ParamNode,
    precision: str = "bf16",
    group_size: int = prec.DEFAULT_GROUP_SIZE,
    depth: int | None = None,
) -> RenderableType:
    """Everything ``moe-tui params`` prints: the tree, then the summary."""
    return Group(render_tree(tree, precision, group_size, depth), Text(""), render_summary(tree, precision, group_size))
