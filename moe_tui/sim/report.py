"""Text tables of a :class:`LabReport` for ``moe-tui lab``, and the check that a trace fits a model's shape."""

from __future__ import annotations

from collections.abc import Sequence

from moe_tui.errors import UserError
from moe_tui.precision import format_bytes
from moe_tui.sim.cache import MIN_POLICY
from moe_tui.sim.lab import HOST_SUFFIX, LabReport
from moe_tui.sim.table import format_table, percent
from moe_tui.telemetry import TraceHeader

MIN_LABEL = "MIN (optimum)"


def format_report(report: LabReport, name: str, layer_sizes: Sequence[int]) -> str:
    """The lab's headless output: trace summary, overall hit rates by k, copies per token, per-layer tables."""
    parts = [_summary(report, name), _overall_table(report)]
    if report.tokens:
        parts.append(_copies_table(report))
        if any(p.endswith(HOST_SUFFIX) for p in report.policies):
            parts.append(_host_table(report))
    parts.extend(_layer_table(report, k) for k in layer_sizes)
    parts.append(_notes(report))
    return "\n\n".join(parts)


def check_trace_shape(header: TraceHeader, num_layers: int, num_experts: int, top_k: int, model: str) -> None:
    """Raise UserError unless the trace's MoE layers, experts and top-k match those of ``model``."""
    expected = (num_layers, num_experts, top_k)
    found = (header.num_layers, header.num_experts, header.top_k)
    if expected != found:
        raise UserError(
            f"the trace was recorded on a model with {_shape_text(*found)}, but {model} has {_shape_text(*expected)}"
        )


def _shape_text(layers: int, experts: int, top_k: int) -> str:
    return f"{layers} MoE layers x {experts} experts, top-{top_k}"


def _label(policy: str) -> str:
    return MIN_LABEL if policy == MIN_POLICY else policy


def _summary(report: LabReport, name: str) -> str:
    h = report.header
    sizes = set(h.cache_size)
    k_text = f"k={h.cache_size[0]}" if len(sizes) == 1 else "k per layer " + ",".join(map(str, h.cache_size))
    recorded = report.recorded.total
    lines = [
        f"trace {name}: {h.model}, {_shape_text(h.num_layers, h.num_experts, h.top_k)}, "
        f"{report.passes} forward passes, {report.tokens} tokens, {format_bytes(h.expert_bytes)} per expert",
        f"recorded by the engine ({h.fast_tier} slots, {h.slow_tier} store): {h.policy}, {k_text}, "
        f"prefetch {h.prefetch} -> hit rate {percent(recorded.hit_rate)}, "
        f"prefetch recall {percent(recorded.prefetch_recall)}"
        + (f", {recorded.host} misses computed on the host" if recorded.host else ""),
    ]
    return "\n".join(lines)


def _cell(report: LabReport, policy: str, k: int, layer: int | None = None) -> str:
    rate = report.hit_rate(policy, k, layer)
    if policy == MIN_POLICY:
        return percent(rate)
    points = round(-100 * report.gap(policy, k, layer), 1) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{percent(rate)} ({points:+.1f})"


def _overall_table(report: LabReport) -> str:
    headers = ["k", *(_label(p) for p in report.policies)]
    rows = [[str(k), *(_cell(report, p, k) for p in report.policies)] for k in report.cache_sizes]
    title = "hit rate over all MoE layers by cache size k (in brackets: points above or below MIN)"
    return title + "\n" + format_table(headers, rows)


def _copies_table(report: LabReport) -> str:
    headers = ["k", *(_label(p) for p in report.policies)]
    rows = []
    for k in report.cache_sizes:
        cells = [str(k)]
        for policy in report.policies:
            result = report.result(policy, k)
            per_token = result.copies / report.tokens
            cells.append(f"{per_token:.2f} ({format_bytes(result.total.bytes_loaded / report.tokens)})")
        rows.append(cells)
    title = "expert copies per generated token, misses plus prefetches (bytes moved per token)"
    return title + "\n" + format_table(headers, rows)


def _host_table(report: LabReport) -> str:
    policies = [p for p in report.policies if p.endswith(HOST_SUFFIX)]
    headers = ["k", *policies]
    rows = [
        [str(k), *(f"{report.result(p, k).total.host / report.tokens:.2f}" for p in policies)]
        for k in report.cache_sizes
    ]
    title = "experts computed on the host per generated token (misses that copy nothing)"
    return title + "\n" + format_table(headers, rows)


def _layer_table(report: LabReport, k: int) -> str:
    headers = ["layer", *(_label(p) for p in report.policies)]
    rows = [
        [str(layer), *(_cell(report, p, k, layer) for p in report.policies)]
        for layer in range(report.header.num_layers)
    ]
    return f"hit rate per MoE layer at k={k}\n" + format_table(headers, rows)


def _notes(report: LabReport) -> str:
    notes = [
        "MIN is Belady's offline optimum for demand fetching (evict the expert used again furthest in the future):",
        "no cache of that size can miss less on this trace, so it bounds lru, lfu and fifo from above.",
    ]
    if any(p.endswith("+prefetch") for p in report.policies):
        notes.append(
            "+prefetch replays the recording engine's guesses; it can beat MIN on hit rate because its\n"
            "prefetch hits are paid for with copies made ahead of time: compare copies per token too."
        )
    if any(p.endswith(HOST_SUFFIX) for p in report.policies):
        notes.append(
            "+host computes every miss on the host from the store (miss=host): only prefetch copies experts\n"
            "into slots, so its hit rate is its prefetch hits; the rest cost host compute, not copies."
        )
    return "\n".join(notes)
