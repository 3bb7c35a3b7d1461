"""Memory: each NVIDIA GPU (VRAM, utilisation, PCIe, this process's share), host RAM and this process's RSS,
the engine's own fixed budget (expert slots in the fast tier, the expert store in the slow tier) and the
conversation's KV cache (its size, and its tokens against the context the load kept room for)."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from moe_tui.system import GpuSample, SystemSample
from moe_tui.tui.backend import EngineBudget
from moe_tui.tui.widgets.colours import Colours, colours_for
from moe_tui.tui.widgets.panel import Panel
from moe_tui.tui.widgets.text import bar, percent, rate, size


def _share(used: int | None, total: int | None) -> float | None:
    return used / total if used is not None and total else None


def gpu_lines(gpu: GpuSample, colours: Colours, width: int) -> Text:
    """Two lines for one GPU: VRAM bar and figures, then utilisation, PCIe and this process's VRAM."""
    text = Text(f"GPU{gpu.index} ", style=colours.label)
    text.append(gpu.name, style=colours.muted)
    text.append("\n")
    share = _share(gpu.memory_used, gpu.memory_total)
    text.append(" VRAM ", style=colours.muted)
    text.append(bar(share, max(4, min(20, width - 30))), style=colours.slot("prefetch"))
    text.append(f" {size(gpu.memory_used)} / {size(gpu.memory_total)}")
    text.append("\n")
    text.append(" util ", style=colours.muted)
    text.append(percent(None if gpu.utilization is None else gpu.utilization / 100))
    text.append("  PCIe rx ", style=colours.muted)
    text.append(rate(gpu.pcie_rx))
    text.append(" tx ", style=colours.muted)
    text.append(rate(gpu.pcie_tx))
    text.append("\n")
    text.append(" this process ", style=colours.muted)
    if gpu.process_reserved is None:
        text.append("N/A (no CUDA context in this process)")
    else:
        text.append(f"{size(gpu.process_reserved)} ({size(gpu.process_allocated)} allocated)")
    return text


def render_memory(sample: SystemSample | None, budget: EngineBudget | None, colours: Colours, width: int) -> Text:
    """The panel text; says plainly when there is no GPU and shows host memory regardless."""
    text = Text()
    if sample is None:
        text.append("reading memory…", style=colours.muted)
    else:
        if sample.has_gpu:
            for gpu in sample.gpus:
                text.append_text(gpu_lines(gpu, colours, width))
                text.append("\n")
        else:
            text.append(sample.gpu_status or "no NVIDIA GPU", style=colours.highlight)
            text.append("\n")
            text.append("showing host memory only", style=colours.muted)
            text.append("\n")
        host = sample.host
        text.append("RAM ", style=colours.label)
        text.append(bar(_share(host.ram_used, host.ram_total), max(4, min(20, width - 30))), style=colours.slot("hit"))
        text.append(f" {size(host.ram_used)} / {size(host.ram_total)}")
        text.append("\n")
        text.append("this process RSS ", style=colours.muted)
        text.append(size(host.rss))
    if budget is not None:
        text.append("\n")
        text.append("engine ", style=colours.label)
        text.append(f"slots {size(budget.fast_tier_bytes)}", style=colours.label)
        text.append(f" in {budget.fast_tier} · {size(budget.expert_bytes)}/expert", style=colours.muted)
        text.append("\n       ")
        text.append(f"store {size(budget.slow_tier_bytes)}", style=colours.label)
        text.append(f" in {budget.slow_tier}", style=colours.muted)
        if budget.kv_bytes is not None:
            text.append("\n       ")
            text.append(f"KV cache {size(budget.kv_bytes)}", style=colours.label)
            context = f"/{budget.context}" if budget.context else ""
            text.append(f" · {budget.kv_tokens}{context} tokens", style=colours.muted)
    return text


class MemoryView(Widget):
    """The memory text; redrawn when a new system sample or engine budget arrives."""

    DEFAULT_CSS = """
    MemoryView { height: auto; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.sample: SystemSample | None = None
        self.budget: EngineBudget | None = None

    def render(self) -> Text:
        """Draw the latest sample and budget."""
        return render_memory(self.sample, self.budget, colours_for(self.app.theme_variables), max(self.size.width, 1))


class MemoryPanel(Panel):
    """GPU and host memory next to what the engine itself holds."""

    PANEL_ID = "memory"
    TITLE = "Memory"

    def compose(self):
        """One memory view."""
        yield MemoryView()

    def show_sample(self, sample: SystemSample) -> None:
        """Draw a new system sample."""
        view = self.query_one(MemoryView)
        view.sample = sample
        view.refresh(layout=True)

    def show_budget(self, budget: EngineBudget | None) -> None:
        """Draw the engine's budget (None when no model is loaded)."""
        view = self.query_one(MemoryView)
        if view.budget != budget:
            view.budget = budget
            view.refresh(layout=True)

    def redraw(self) -> None:
        """Draw again (after a theme change)."""
        self.query_one(MemoryView).refresh(layout=True)
