"""The parameter tree: what the loaded model is made of (total vs active parameters, bytes at the running
precision), as an expandable Textual Tree built from :func:`moe_tui.params.build_tree`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual.widgets import Static, Tree
from textual.widgets.tree import TreeNode

from moe_tui.precision import format_bytes, format_count
from moe_tui.tui.widgets.panel import Panel

EXPANDED_DEPTH = 1


def node_label(node: Any, size: int) -> Text:
    """``name  46.70 B · 12.88 B act · 23.4 GiB`` (total parameters, active per token, bytes)."""
    text = Text(str(getattr(node, "label", "") or node.name), style="bold")
    text.append(f"  {format_count(node.total)}", style="")
    if node.active is not None and node.active != node.total:
        text.append(f" · {format_count(node.active)} act", style="dim")
    text.append(f" · {format_bytes(size)}", style="dim")
    return text


def fill_tree(tree: Tree, root: Any, size_of: Callable[[Any], int]) -> None:
    """Put ``root`` and its descendants into ``tree`` (the first levels expanded)."""
    tree.clear()
    tree.root.set_label(node_label(root, size_of(root)))
    tree.root.data = root

    def add(parent: TreeNode, node: Any, depth: int) -> None:
        for child in node.children:
            label = node_label(child, size_of(child))
            if child.children:
                branch = parent.add(label, data=child, expand=depth < EXPANDED_DEPTH)
                add(branch, child, depth + 1)
            else:
                parent.add_leaf(label, data=child)

    add(tree.root, root, 0)
    tree.root.expand()


class ParamsPanel(Panel):
    """The loaded model's parameter breakdown."""

    PANEL_ID = "params"
    TITLE = "Parameters"

    def compose(self):
        """A note line and the tree."""
        yield Static("no model loaded", id="params-note", markup=False)
        tree: Tree = Tree("model", id="params-tree")
        tree.display = False
        yield tree

    def show_note(self, note: str) -> None:
        """Say why there is no tree (no model, a replay, a tree being built or failing): the tree shown before,
        another model's, goes."""
        tree = self.query_one("#params-tree", Tree)
        tree.clear()
        tree.display = False
        self.query_one("#params-note", Static).update(note)

    def show_tree(self, root: Any, size_of: Callable[[Any], int], note: str) -> None:
        """Show a parameter tree with sizes from ``size_of``, under ``note`` (what precision the sizes are at)."""
        tree = self.query_one("#params-tree", Tree)
        fill_tree(tree, root, size_of)
        tree.display = True
        self.query_one("#params-note", Static).update(note)
