"""Prefetch: guesses issued, used and wasted, recall and precision, bytes moved, stall vs compute, tokens/s,
a plain statement of which memory tiers are real on this machine, and how experts are computed (their format,
"unfused" when they are dequantized before every use, and what a miss does)."""

from __future__ import annotations

from rich.text import Text

from moe_tui.telemetry import Counters, Snapshot
from moe_tui.tui.widgets.colours import Colours
from moe_tui.tui.widgets.panel import Panel, SnapshotView
from moe_tui.tui.widgets.text import MANY_LAYERS, bar, percent, size


def describe_tiers(fast: str, slow: str) -> str:
    """One line saying what the fast and slow tiers are here and whether copies cross a real bus."""
    fast_name = fast.lower()
    slow_name = slow.lower()
    slow_text = {
        "pinned": "pinned host RAM",
        "ram": "host RAM",
        "mmap": "mmap file (disk once out of page cache)",
    }.get(slow_name, slow)
    if fast_name.startswith("cuda") or fast_name.startswith("gpu"):
        return f"tiers: {fast} GPU slots ← {slow_text}; real PCIe copies"
    return f"tiers: {fast} RAM slots ← {slow_text}; no GPU, copies are memcpy, not PCIe"


def render_prefetch(snapshot: Snapshot, colours: Colours, width: int, height: int) -> Text:
    """The panel text: overall figures first, then per-layer figures in the rows left (every layer when they
    fit, else the layers with the lowest recall)."""
    header = snapshot.header
    totals = snapshot.totals
    text = Text()
    if header.prefetch:
        text.append(f"prefetch {header.prefetch}/layer · ", style=colours.label)
    else:
        text.append("prefetch off · ", style=colours.label)
    text.append(f"{snapshot.tokens_per_s:.1f}", style=colours.highlight)
    text.append(" tok/s", style=colours.muted)
    text.append("\n")
    text.append_text(_counts_line(totals, colours))
    text.append("\n")
    text.append("moved ", style=colours.muted)
    text.append(size(snapshot.bytes_per_token), style=colours.label)
    text.append("/token · ", style=colours.muted)
    text.append(f"{size(totals.bytes_loaded)} total", style=colours.muted)
    text.append("\n")
    stall = snapshot.stall_share
    width_bar = max(4, min(20, width - 28))
    text.append("stall ", style=colours.muted)
    text.append(f"{percent(stall):>4} ", style=colours.slot("miss"))
    text.append(bar(stall, width_bar), style=colours.slot("miss"))
    text.append(f" compute {percent(1 - stall) if totals.load_s + totals.compute_s else 'N/A'}", style=colours.muted)
    text.append("\n")
    text.append(describe_tiers(header.fast_tier, header.slow_tier), style=colours.muted)
    if header.expert_format:
        text.append("\n")
        text.append_text(_compute_line(header.expert_format, header.miss, colours))
    layers = snapshot.layers
    shown = layers if height >= len(layers) + 7 else []
    if not shown and len(layers) > MANY_LAYERS and height >= 12:  # a large model: its layers of lowest recall
        ranked = sorted(layers, key=lambda state: state.counters.prefetch_recall)
        worst = {state.layer for state in ranked[: height - 11]}
        shown = [state for state in layers if state.layer in worst]
    if header.prefetch and shown:
        text.append("\n")
        if len(shown) < len(layers):
            text.append(f"lowest recall, {len(shown)} of {len(layers)} layers:\n", style=colours.muted)
        text.append("       issued  used  prec  recall", style=colours.label)
        for state in shown:
            counters = state.counters
            text.append("\n")
            text.append(f"L{state.layer:<5}", style=colours.label)
            text.append(
                f"{counters.prefetch_issued:>7}{counters.prefetch_used:>6}"
                f"{percent(counters.prefetch_precision):>6}{percent(counters.prefetch_recall):>8}"
            )
    return text


def _compute_line(expert_format: str, miss: str, colours: Colours) -> Text:
    """``experts int4 · misses copied``; an unfused format is named so in the miss colour."""
    text = Text("experts ", style=colours.muted)
    fused = not expert_format.endswith("(unfused)")
    text.append(expert_format, style=colours.label if fused else colours.slot("miss"))
    misses = {"copy": "copied into slots", "host": "computed on host", "auto": "copy or host (auto)"}
    text.append(f" · misses {misses.get(miss, miss)}", style=colours.muted)
    return text


def _counts_line(totals: Counters, colours: Colours) -> Text:
    text = Text("guesses ", style=colours.muted)
    text.append(str(totals.prefetch_issued), style=colours.label)
    text.append(" · used ", style=colours.muted)
    text.append(str(totals.prefetch_used), style=colours.slot("prefetch"))
    text.append(" · wasted ", style=colours.muted)
    text.append(str(totals.prefetch_wasted), style=colours.slot("prefetched"))
    text.append("\nprecision ", style=colours.muted)
    text.append(percent(totals.prefetch_precision if totals.prefetch_issued else None), style=colours.label)
    text.append(" · recall ", style=colours.muted)
    text.append(percent(totals.prefetch_recall if totals.accesses else None), style=colours.label)
    return text


class PrefetchView(SnapshotView):
    """The prefetch text."""

    def draw(self, snapshot: Snapshot, colours: Colours, width: int, height: int) -> Text:
        """Render the prefetch figures for this size."""
        return render_prefetch(snapshot, colours, width, height)


class PrefetchPanel(Panel):
    """How well speculative prefetch guesses, and what copies cost."""

    PANEL_ID = "prefetch"
    TITLE = "Prefetch"

    def compose(self):
        """One prefetch view."""
        yield PrefetchView()
