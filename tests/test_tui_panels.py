"""The panels' text, drawn from snapshots without running the app: layouts, marks, figures, no-GPU state."""

from __future__ import annotations

from dataclasses import replace

import pytest
from tui_fakes import FakeProbe, header, synthetic_events

from moe_tui.replay import Replay
from moe_tui.system import HostSample, SystemSample
from moe_tui.themes import DEFAULT_VARIABLES, load_themes
from moe_tui.tui.backend import EngineBudget
from moe_tui.tui.keys import KEYS, check_keymap, clashes, display_keys
from moe_tui.tui.screens.help import panel_help
from moe_tui.tui.widgets import cache, heatmap, memory, prefetch, statusbar
from moe_tui.tui.widgets.colours import Colours
from moe_tui.tui.widgets.text import bar, sparkline

COLOURS = Colours.from_variables({**DEFAULT_VARIABLES, "foreground": "#d0d0d0", "accent": "#ffaf00"})


def played(layers: int = 6, experts: int = 8, k: int = 2, tokens: int = 40, prefetch_depth: int = 1):
    head = header(layers=layers, experts=experts, k=k, prefetch=prefetch_depth)
    replay = Replay(head, synthetic_events(head, tokens=tokens))
    replay.play()
    return replay.snapshot()


def test_heat_levels_cover_the_ramp() -> None:
    assert heatmap.heat_level(0.0) == 0
    assert heatmap.heat_level(0.01) == 1
    assert heatmap.heat_level(1.0) == 5
    levels = [heatmap.heat_level(f / 10) for f in range(11)]
    assert levels == sorted(levels)


@pytest.mark.parametrize(
    ("layers", "experts", "width", "height", "expected"),
    [
        (6, 8, 60, 20, "detailed"),
        (6, 8, 40, 20, "rows"),
        (32, 8, 44, 18, "columns"),
        (32, 8, 120, 40, "detailed"),
        (24, 60, 70, 20, "folded"),  # too many layers for the rows, too many experts for the transposed rows
        (6, 60, 70, 20, "rows"),
        (48, 128, 45, 20, "folded"),
        (61, 256, 75, 44, "folded"),
    ],
)
def test_layout_follows_the_space(layers: int, experts: int, width: int, height: int, expected: str) -> None:
    head = header(layers=layers, experts=experts)
    assert heatmap.choose_layout(head, width, height) == expected


def test_detailed_heatmap_writes_the_router_weights_of_the_last_pass() -> None:
    snapshot = played()
    text = heatmap.render_heatmap(snapshot, COLOURS, 60, 30).plain
    lines = text.splitlines()
    assert lines[1].split() == [f"e{e}" for e in range(8)]
    for state in snapshot.layers:
        row = next(line for line in lines if line.startswith(f"L{state.layer} "))
        for weight in state.last_weights:
            assert f"{weight:.2f}" in row
    assert "router weight" in lines[-1]


def test_compact_heatmap_marks_picks_with_a_dot_per_layer() -> None:
    snapshot = played()
    for width, spacing in ((12, 1), (30, 3)):
        text = heatmap.render_heatmap(snapshot, COLOURS, width, 30).plain
        rows = [line for line in text.splitlines() if line.startswith("L")]
        assert len(rows) == 6
        for state, row in zip(snapshot.layers, rows, strict=True):
            cells = row[heatmap.LABEL :: spacing][:8]
            assert {i for i, c in enumerate(cells) if c == heatmap.PICK} == set(state.last_experts)
            assert all(c in heatmap.SHADES + heatmap.PICK for c in cells)


def test_transposed_heatmap_has_a_row_per_expert() -> None:
    snapshot = played(layers=32)
    text = heatmap.render_heatmap(snapshot, COLOURS, 44, 14).plain
    rows = [line for line in text.splitlines() if line.startswith("e")]
    assert len(rows) == 8 and all(len(row) >= heatmap.LABEL + 32 for row in rows)


def test_cache_rows_show_k_slots_with_status_marks() -> None:
    snapshot = played(k=3)
    text = cache.render_cache(snapshot, COLOURS, 50, 30).plain
    rows = [line for line in text.splitlines() if line.startswith("L")]
    assert len(rows) == 6
    for state, row in zip(snapshot.layers, rows, strict=True):
        slots = row[5:].split("%")[0].split()[:-1]
        assert len(slots) == 3
        for cell, expert, status in zip(slots, state.slots, state.slot_status, strict=True):
            if expert is None:
                assert set(cell) == {"·"}
            else:
                assert cell.startswith(str(expert))
                assert cell[len(str(expert)) :] in ("+", "!", "^", "~", "")
                assert status in ("hit", "miss", "prefetch", "prefetched", "idle")
    summary = text.splitlines()[0]
    assert f"{snapshot.totals.hit_rate * 100:.1f}%" in summary and "k=3 lru" in summary


def test_cache_row_announces_a_pending_resize() -> None:
    snapshot = played(k=2)
    resized = replace(snapshot.layers[0], cache_size=4)
    assert "→k=4" in cache.layer_row(resized, 1, COLOURS, 60).plain


def test_prefetch_panel_reports_counts_and_tiers() -> None:
    snapshot = played()
    text = prefetch.render_prefetch(snapshot, COLOURS, 60, 40).plain
    totals = snapshot.totals
    assert f"guesses {totals.prefetch_issued} · used {totals.prefetch_used} · wasted {totals.prefetch_wasted}" in text
    assert f"precision {totals.prefetch_precision * 100:.0f}%" in text
    assert "no GPU, copies are memcpy" in text
    assert "issued  used  prec  recall" in text, "per-layer table when tall enough"
    off = played(prefetch_depth=0)
    assert "prefetch off" in prefetch.render_prefetch(off, COLOURS, 60, 10).plain
    assert "real PCIe copies" in prefetch.describe_tiers("cuda:0", "pinned")


def test_panels_name_the_expert_format_and_count_misses_computed_on_the_host() -> None:
    snapshot = played()
    assert "experts" not in prefetch.render_prefetch(snapshot, COLOURS, 60, 10).plain  # an old trace says nothing
    assert "host" not in cache.summary_line(snapshot, COLOURS, 60).plain
    hosted = replace(
        snapshot,
        header=replace(snapshot.header, miss="host", expert_format="hqq2 (unfused)"),
        totals=replace(snapshot.totals, host=17),
    )
    assert "experts hqq2 (unfused) · misses computed on host" in prefetch.render_prefetch(hosted, COLOURS, 60, 10).plain
    line = cache.summary_line(hosted, COLOURS, 60).plain
    assert f"{hosted.totals.hits}/{hosted.totals.accesses} host 17  k=2 lru" in line
    fused = replace(hosted, header=replace(hosted.header, miss="copy", expert_format="int4"))
    assert "experts int4 · misses copied into slots" in prefetch.render_prefetch(fused, COLOURS, 60, 10).plain


def test_memory_panel_with_a_gpu_and_without_one() -> None:
    budget = EngineBudget("cuda:0", "pinned", 3 << 30, 40 << 30, 170 << 20)
    text = memory.render_memory(FakeProbe().sample(), budget, COLOURS, 60).plain
    assert "GPU0 Fake GPU 16GB" in text
    assert "6.0 GiB / 16.0 GiB" in text and "util 37%" in text
    assert "this process 5.0 GiB (4.0 GiB allocated)" in text
    assert "engine slots 3.0 GiB in cuda:0" in text and "store 40.0 GiB in pinned" in text
    assert "KV cache" not in text  # not known (a replay)
    talking = replace(budget, kv_bytes=48 << 20, kv_tokens=380, context=4096)
    text = memory.render_memory(FakeProbe().sample(), talking, COLOURS, 60).plain
    assert "KV cache 48.0 MiB · 380/4096 tokens" in text
    no_gpu = memory.render_memory(FakeProbe(gpu=False).sample(), None, COLOURS, 60).plain
    assert "no NVIDIA GPU" in no_gpu and "showing host memory only" in no_gpu
    assert "RAM" in no_gpu and "RSS 3.0 GiB" in no_gpu and "GPU0" not in no_gpu


def test_unknown_gpu_values_read_na() -> None:
    from moe_tui.system import GpuSample

    host = HostSample(ram_total=1, ram_used=1, ram_available=0, rss=1)
    sample = SystemSample(gpus=(GpuSample(index=0, uuid="u", name="x"),), gpu_status="", host=host, time=0)
    text = memory.render_memory(sample, None, COLOURS, 60).plain
    assert "N/A / N/A" in text and "util N/A" in text and "rx N/A" in text


def test_status_bar_text() -> None:
    text = statusbar.status_text("demo", "live", played(), "generating…").plain
    assert "demo" in text and "k=2 lru" in text and "prefetch 1" in text and "generating…" in text


def test_text_helpers() -> None:
    assert sparkline([0.0, 0.5, 1.0], 3) == "▁▅█"
    assert sparkline([0.1] * 50, 4) == "▁▁▁▁"
    assert bar(0.5, 4) == "██░░" and bar(None, 3) == "░░░"


def test_keymap_ids_are_unique_and_checked() -> None:
    ids = [key.id for key in KEYS]
    assert len(ids) == len(set(ids))
    known, unknown = check_keymap({"chat.stop": "ctrl+x", "nope": "a"})
    assert known == {"chat.stop": "ctrl+x"} and unknown == ["nope"]
    assert display_keys("ctrl+j,alt+enter") == "ctrl+j / alt+enter"


def test_the_help_text_names_the_keys_in_effect() -> None:
    default = panel_help({})
    assert "[ and ] move it, x hides it, f11 maximises it" in default and "To send with enter" in default
    remapped = panel_help({"panel.hide": "h", "chat.send": "enter", "chat.newline": "ctrl+j"})
    assert "h hides it" in remapped and "Send: enter, as your keymap says; a new line: ctrl+j." in remapped


def test_keys_given_to_two_bindings_in_one_place_are_found() -> None:
    assert clashes({}) == [], "the defaults never clash"
    assert clashes({"chat.send": "enter"}) == ["enter is set for both chat.send and chat.newline"]
    assert clashes({"chat.send": "enter", "chat.newline": "ctrl+j"}) == []
    assert clashes({"chat.new": "f2"}) == ["f2 is set for both chat.new and chat.conversations"]
    assert clashes({"conversations.rename": "c"}) == [], "c copies a message in the chat log, not in the chat list"


def test_every_theme_gives_distinct_heat_cells() -> None:
    for theme in load_themes().values():
        colours = Colours.from_variables({**theme.variables, "foreground": theme.foreground or "#ffffff"})
        styles = {str(colours.heat_cell(level).bgcolor) for level in range(6)}
        assert len(styles) == 6


class FakeClock:
    """Wall and CPU clocks the test moves by hand."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0


def test_pacer_slows_down_when_drawing_is_expensive_and_recovers() -> None:
    from moe_tui.tui.pacing import FramePacer

    clock = FakeClock()
    pacer = FramePacer(max_hz=10, min_hz=2, budget=0.1, clock=lambda: clock.wall, cpu=lambda: clock.cpu)
    assert pacer.due() and not pacer.due(), "at most one redraw per interval"

    def run(seconds: float, cpu_share: float) -> int:
        draws = 0
        for _ in range(int(seconds * 100)):
            clock.wall += 0.01
            clock.cpu += 0.01 * cpu_share
            draws += pacer.due()
        return draws

    assert 9 <= run(1.0, 0.02) <= 10, "cheap drawing: the full 10 Hz"
    run(20.0, 0.5)
    assert pacer.hz == 2.0, "expensive drawing slows down to the floor"
    assert run(2.0, 0.5) <= 5
    run(20.0, 0.01)
    assert pacer.hz == 10.0, "back to 10 Hz once drawing is cheap again"


def test_pacer_rejects_impossible_rates() -> None:
    from moe_tui.tui.pacing import FramePacer

    with pytest.raises(ValueError):
        FramePacer(max_hz=2, min_hz=5)


# --- today's large shapes: 48-61 layers, 128-256 experts, top-8 -----------------------------------------------


def big(layers: int = 61, experts: int = 256, shared: int = 1):
    head = header(layers=layers, experts=experts, k=16, prefetch=8, top_k=8, shared=shared)
    replay = Replay(head, synthetic_events(head, tokens=20))
    replay.play()
    return replay.snapshot()


@pytest.mark.parametrize(("width", "height"), [(38, 20), (47, 44), (75, 44)])
def test_a_folded_heatmap_keeps_every_layer_and_expert_inside_the_panel(width: int, height: int) -> None:
    snapshot = big()
    text = heatmap.render_heatmap(snapshot, COLOURS, width, height).plain
    lines = text.splitlines()
    assert "+1 shared" in lines[0]  # the shared expert, apart from the routed ones
    assert all(len(line) <= width for line in lines[1:])
    rows = [line for line in lines if line.startswith("L")]
    covered = []
    for row in rows:
        first, _, last = row.split()[0][1:].partition("-")
        covered += range(int(first), int(last or first) + 1)
    assert covered == list(range(61))
    per_expert = int(lines[1].split()[1])
    assert {len(row.split()[1]) for row in rows} == {-(-256 // per_expert)}
    assert heatmap.PICK not in "".join(rows)  # rows of several layers: no current picks, only heat
    assert "picks/token" in lines[-1]


def test_a_folded_heatmap_of_one_layer_per_row_marks_the_picks() -> None:
    snapshot = big(layers=12, experts=128, shared=0)
    text = heatmap.render_heatmap(snapshot, COLOURS, 40, 30).plain
    rows = [line for line in text.splitlines() if line.startswith("L")]
    per_expert = int(text.splitlines()[1].split()[1])
    for state, row in zip(snapshot.layers, rows, strict=True):
        cells = row.split()[1]
        assert {i for i, c in enumerate(cells) if c == heatmap.PICK} == {e // per_expert for e in state.last_experts}


def test_the_cache_panel_counts_slots_and_shows_the_worst_layers_when_they_do_not_fit() -> None:
    snapshot = big()
    text = cache.render_cache(snapshot, COLOURS, 38, 20).plain
    lines = text.splitlines()
    rows = [line for line in lines if line.startswith("L")]
    assert len(rows) == 20 - 4 and "worst layers" in lines[1]
    assert lines[-2].startswith(f"… {61 - len(rows)} more layers, hit ")
    shown = {int(row.split()[0][1:]) for row in rows}
    rates = {state.layer: state.counters.hit_rate for state in snapshot.layers}
    assert max(rates[layer] for layer in shown) <= min(rates[layer] for layer in rates if layer not in shown)
    for row in rows:
        state = snapshot.layers[int(row.split()[0][1:])]
        parts = row.split()
        counted = sum(int(part[:-1]) for part in parts[2:] if part[-1] in "+!^~·" and part[:-1].isdigit())
        counted += sum(int(parts[i - 1]) for i, part in enumerate(parts) if part == "idle")
        assert parts[1] == "k=16" and counted == len(state.slots)


def test_the_prefetch_panel_lists_the_layers_of_lowest_recall() -> None:
    snapshot = big()
    text = prefetch.render_prefetch(snapshot, COLOURS, 47, 20).plain
    assert "lowest recall, 9 of 61 layers:" in text
    listed = [int(line.split()[0][1:]) for line in text.splitlines() if line.startswith("L")]
    recall = {state.layer: state.counters.prefetch_recall for state in snapshot.layers}
    assert len(listed) == 9 and listed == sorted(listed)
    assert max(recall[layer] for layer in listed) <= min(recall[layer] for layer in recall if layer not in listed)
