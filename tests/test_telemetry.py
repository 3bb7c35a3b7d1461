"""The telemetry aggregate, its snapshots and the trace format (write, read back, reject bad files)."""

from __future__ import annotations

import io
import json
import threading
from dataclasses import replace

import pytest
from tui_fakes import FullDisk

from moe_tui.telemetry import (
    ConfigEvent,
    Counters,
    LayerStep,
    Telemetry,
    TokenEvent,
    TraceError,
    TraceHeader,
    read_trace,
)
from moe_tui.telemetry import live as telemetry_module

HEADER = TraceHeader(model="tiny", num_layers=2, num_experts=4, top_k=2, cache_size=(2, 2), policy="lru", prefetch=1)


def make_step(step: int, layer: int, experts, hits, prefetch_hits=None, issued=(), slots=(None, None), **kw):
    """A LayerStep of one token with equal router weights."""
    n = len(experts)
    return LayerStep(
        step=step,
        layer=layer,
        n_tokens=1,
        experts=tuple(experts),
        counts=(1,) * n,
        weights=(1.0 / n,) * n,
        hits=tuple(hits),
        prefetch_hits=tuple(prefetch_hits or (False,) * n),
        prefetch_issued=tuple(issued),
        slots=tuple(slots),
        **kw,
    )


def test_counters_fold_hits_misses_and_prefetch():
    telemetry = Telemetry(HEADER)
    telemetry.record_step(make_step(0, 0, [0, 1], [False, False], slots=(0, 1), bytes_loaded=200))
    telemetry.record_step(make_step(1, 0, [1, 2], [True, True], [False, True], issued=(2, 3), slots=(1, 2)))
    totals = telemetry.counters()
    assert (totals.hits, totals.misses) == (2, 2)
    assert totals.hit_rate == 0.5
    assert (totals.prefetch_issued, totals.prefetch_used, totals.prefetch_wasted) == (2, 1, 1)
    assert totals.prefetch_precision == 0.5
    # recall: of the experts not cached before prefetch ran (2 misses + 1 prefetched), prefetch brought 1
    assert totals.prefetch_recall == pytest.approx(1 / 3)
    assert totals.bytes_loaded == 200
    assert [c.accesses for c in telemetry.layer_counters()] == [4, 0]


def test_snapshot_is_versioned_and_reused_until_something_changes():
    telemetry = Telemetry(HEADER)
    first = telemetry.snapshot()
    assert telemetry.snapshot() is first
    telemetry.record_step(make_step(0, 1, [3, 0], [False, True], slots=(0, 3)))
    second = telemetry.snapshot()
    assert second.version > first.version
    layer = second.layers[1]
    assert layer.slots == (0, 3)
    assert layer.slot_status == ("hit", "miss")
    assert layer.last_experts == (3, 0)
    assert second.layers[0].slots == (None, None) and second.layers[0].slot_status == ("empty", "empty")


def test_two_telemetries_never_share_a_snapshot_version():
    """A reader switching from one model's telemetry to a new one's (the app loading another model) redraws,
    because a fresh telemetry's version is not one the old one already had."""
    seen = set()
    for _ in range(3):
        telemetry = Telemetry(HEADER)
        seen.add(telemetry.snapshot().version)
        telemetry.record_step(make_step(0, 1, [3, 0], [False, True], slots=(0, 3)))
        seen.add(telemetry.snapshot().version)
    assert len(seen) == 6


def test_window_frequency_and_slot_status_for_prefetch():
    telemetry = Telemetry(HEADER, window=2)
    telemetry.record_step(make_step(0, 0, [0, 1], [False, False], slots=(0, 1)))
    telemetry.record_step(make_step(1, 0, [0, 2], [True, True], [False, True], issued=(2, 3), slots=(3, 2)))
    telemetry.record_step(make_step(2, 0, [0, 2], [True, True], slots=(2, 0)))
    layer = telemetry.snapshot().layers[0]
    # the window holds the last two steps: expert 0 and 2 picked in both, 1 in neither
    assert layer.window_frequency == (1.0, 0.0, 1.0, 0.0)
    telemetry.record_step(make_step(3, 0, [1], [False], issued=(3,), slots=(3, 1)))
    assert telemetry.snapshot().layers[0].slot_status == ("prefetched", "miss")


def test_hit_rate_sparklines_follow_the_last_passes_not_the_whole_run():
    """After a long run of hits, a cold stretch shows in the sparklines within a window of passes, while the
    cumulative rate barely moves: the points are each the hit rate over the last ``window`` passes."""
    telemetry = Telemetry(HEADER, window=4)
    for step in range(40):
        telemetry.record_step(make_step(step, 0, [0, 1], [True, True], slots=(0, 1)))
        telemetry.record_step(make_step(step, 1, [0, 1], [True, False], slots=(0, 1)))
    for step in range(40, 44):
        telemetry.record_step(make_step(step, 0, [2, 3], [False, False], slots=(2, 3)))
        telemetry.record_step(make_step(step, 1, [2, 3], [False, False], slots=(2, 3)))
    snapshot = telemetry.snapshot()
    layer0, layer1 = snapshot.layers
    assert layer0.hit_rate_history[39] == 1.0 and layer1.hit_rate_history[39] == 0.5
    # the misses slide in one pass at a time: 3 of 4, 2 of 4, 1 of 4 passes all hits, then none
    assert layer0.hit_rate_history[-4:] == (0.75, 0.5, 0.25, 0.0)
    assert layer1.hit_rate_history[-1] == 0.0
    assert layer0.counters.hit_rate == pytest.approx(80 / 88)
    # overall, a point is taken as each pass starts (its layer 0 step in, layer 1 still a pass behind)
    assert snapshot.hit_rate_history[39] == pytest.approx(12 / 16)
    assert snapshot.hit_rate_history[-1] == pytest.approx(1 / 16)
    assert len(snapshot.hit_rate_history) == 44


def test_tokens_per_second_and_bytes_per_token():
    telemetry = Telemetry(HEADER)
    telemetry.record_step(make_step(0, 0, [0, 1], [False, False], bytes_loaded=1000))
    for index, moment in enumerate((10.0, 10.5, 11.0)):
        telemetry.record_token(TokenEvent(step=index, text=f"t{index}", time=moment))
    snapshot = telemetry.snapshot()
    assert snapshot.tokens == 3
    assert snapshot.last_token == "t2"
    assert snapshot.tokens_per_s == pytest.approx(2.0)
    assert snapshot.bytes_per_token == pytest.approx(1000 / 3)


def test_tokens_per_second_is_the_current_answers_rate():
    telemetry = Telemetry(HEADER)
    for answer, start in enumerate((10.0, 100.0)):
        telemetry.record_step(replace(make_step(answer * 10, 0, [0, 1], [False, False]), n_tokens=7))
        for index in range(4):
            telemetry.record_token(TokenEvent(step=answer * 10 + index, text="t", time=start + index * 0.25))
    assert telemetry.snapshot().tokens_per_s == pytest.approx(4.0), "the pause between answers is not counted"


def test_an_answer_without_a_prefill_pass_starts_its_own_rate():
    """A regenerated answer whose prompt the kept KV cache holds but for one token has no multi-token pass:
    its first token, marked ``first``, is what starts the rate afresh (the header read 1.8 tok/s after one)."""
    telemetry = Telemetry(HEADER)
    for answer, start in enumerate((10.0, 100.0)):
        telemetry.record_step(make_step(answer * 10, 0, [0, 1], [False, False]))  # a one-token "prefill"
        for index in range(4):
            event = TokenEvent(step=answer * 10 + index, text="t", time=start + index * 0.25, first=index == 0)
            telemetry.record_token(event)
    assert telemetry.snapshot().tokens_per_s == pytest.approx(4.0)


def test_config_event_changes_the_header_shown():
    telemetry = Telemetry(HEADER)
    telemetry.record_config(ConfigEvent(step=5, cache_size=(3, 1), policy="lfu", prefetch=0))
    snapshot = telemetry.snapshot()
    assert snapshot.header.cache_size == (3, 1)
    assert snapshot.header.policy == "lfu"
    assert [layer.cache_size for layer in snapshot.layers] == [3, 1]


def test_trace_round_trip(tmp_path):
    path = tmp_path / "run.jsonl"
    with path.open("w") as handle:
        telemetry = Telemetry(HEADER, trace=handle)
        steps = [
            make_step(0, 0, [0, 1], [False, False], slots=(0, 1), bytes_loaded=10, load_s=0.5, time=1.0),
            make_step(0, 1, [2, 3], [False, False], slots=(2, 3), time=1.0),
        ]
        for step in steps:
            telemetry.record_step(step)
        telemetry.record_token(TokenEvent(step=0, text=" hello", time=1.5, first=True))
        telemetry.record_token(TokenEvent(step=1, text=" world", time=1.6))
        telemetry.record_config(ConfigEvent(step=1, cache_size=(1, 1), policy="fifo", prefetch=0))
    header, events = read_trace(path)
    assert header == HEADER
    assert events[:2] == steps
    assert events[2] == TokenEvent(step=0, text=" hello", time=1.5, first=True)
    assert events[3] == TokenEvent(step=1, text=" world", time=1.6)
    assert events[4] == ConfigEvent(step=1, cache_size=(1, 1), policy="fifo", prefetch=0)
    tokens = [json.loads(line) for line in path.read_text().splitlines() if '"type":"token"' in line]
    assert [token.get("first") for token in tokens] == [True, None], "only an answer's first token says so"


def test_replaying_a_trace_rebuilds_the_same_counters(tmp_path):
    path = tmp_path / "run.jsonl"
    live = Telemetry(HEADER, trace=path.open("w"))
    live.record_step(make_step(0, 0, [0, 1], [False, False], slots=(0, 1)))
    live.record_step(make_step(1, 0, [0, 2], [True, False], slots=(0, 2)))
    live.close()
    header, events = read_trace(path)
    replayed = Telemetry(header)
    for event in events:
        replayed.record_step(event)
    assert replayed.counters() == live.counters()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ('{"type": "step"}\n', "starts with a header"),
        ('{"type": "header", "schema": 99}\n', "schema 99"),
        ("HEADER\n{not json\n", "line 2: not valid JSON"),
        ('HEADER\n{"type": "step", "step": 0}\n', "line 2: missing field"),
        ("HEADER\nSTEP_BAD_LAYER\n", "outside this model's 2 MoE layers"),
        ("HEADER\nSTEP_BAD_EXPERT\n", "outside this model's 4 experts"),
        ("HEADER\n[1, 2]\n", "expected a JSON object"),
        ("HEADER\nHEADER\n", "second header"),
    ],
)
def test_bad_traces_are_rejected_with_the_line(tmp_path, content, message):
    header = json.dumps(
        {
            "type": "header",
            "schema": 1,
            "model": "m",
            "num_layers": 2,
            "num_experts": 4,
            "top_k": 2,
            "cache_size": [2, 2],
        }
    )
    step = {
        "type": "step", "step": 0, "layer": 0, "n_tokens": 1, "experts": [0], "counts": [1], "weights": [1.0],
        "hits": [False], "prefetch_hits": [False], "prefetch_issued": [], "slots": [0, None],
    }  # fmt: skip
    bad_layer = json.dumps({**step, "layer": 7})
    bad_expert = json.dumps({**step, "experts": [9]})
    content = content.replace("HEADER", header).replace("STEP_BAD_LAYER", bad_layer)
    content = content.replace("STEP_BAD_EXPERT", bad_expert)
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(TraceError, match=message):
        read_trace(path)


def test_missing_and_binary_trace_files(tmp_path):
    with pytest.raises(TraceError, match="cannot read trace"):
        read_trace(tmp_path / "nope.jsonl")
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(TraceError, match="not a text trace"):
        read_trace(binary)
    with pytest.raises(TraceError, match=r"is a directory, not a trace file \(traces in it: binary.jsonl\)$"):
        read_trace(tmp_path)
    for name in "abcdef":
        (tmp_path / f"{name}.jsonl").write_text("")
    with pytest.raises(TraceError, match=r"a.jsonl, b.jsonl, binary.jsonl, c.jsonl and 3 more\)$"):
        read_trace(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TraceError, match=r"is a directory, not a trace file$"):
        read_trace(tmp_path / "empty")


def test_impossible_header_shapes_are_refused():
    with pytest.raises(ValueError, match="impossible model shape"):
        TraceHeader(model="m", num_layers=1, num_experts=2, top_k=3, cache_size=(1,))
    with pytest.raises(ValueError, match="cache_size has 1 entries for 2 layers"):
        TraceHeader(model="m", num_layers=2, num_experts=2, top_k=1, cache_size=(1,))


def test_snapshots_are_consistent_while_another_thread_records():
    telemetry = Telemetry(HEADER)
    done = threading.Event()

    def produce():
        for step in range(2000):
            telemetry.record_step(make_step(step, step % 2, [0, 1], [True, False], slots=(0, 1)))
        done.set()

    thread = threading.Thread(target=produce)
    thread.start()
    while not done.is_set():
        snapshot = telemetry.snapshot()
        assert snapshot.totals.hits == snapshot.totals.misses
        assert sum(layer.counters.accesses for layer in snapshot.layers) == snapshot.totals.accesses
    thread.join()
    assert telemetry.snapshot().totals.accesses == 4000


def test_trace_writer_emits_one_json_object_per_line():
    buffer = io.StringIO()
    telemetry = Telemetry(HEADER, trace=buffer)
    telemetry.record_step(make_step(0, 0, [1], [False], slots=(1, None)))
    lines = buffer.getvalue().splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["header", "step"]
    assert json.loads(lines[1])["slots"] == [1, None]


def test_a_trace_that_can_no_longer_be_written_stops_the_recording_not_the_engine():
    """A full disk under --record failed every answer from then on, and quitting ended with a traceback."""
    trace = FullDisk(room=2)  # the header and one step
    telemetry = Telemetry(HEADER, trace=trace)
    for step in range(3):
        telemetry.record_step(make_step(step, 0, [1], [step > 0]))  # the second write fails: no exception
    snapshot = telemetry.snapshot()
    assert snapshot.totals.hits == 2 and snapshot.steps == 3  # the counters went on
    assert snapshot.recording_stopped == (
        "recording stopped: cannot write /mnt/full/session.jsonl (No space left on device)"
    )
    assert trace.closed and [json.loads(line)["type"] for line in trace.written.splitlines()] == ["header", "step"]
    telemetry.close()  # nothing left to close


@pytest.mark.parametrize("when", ["flush", "close"])
def test_a_trace_whose_buffered_records_cannot_be_written_out_says_so(when: str):
    """The engine flushes the trace after every pass (and closes it at the end): there a full disk shows."""
    trace = FullDisk(room=2)
    telemetry = Telemetry(HEADER, trace=trace)
    telemetry.record_step(make_step(0, 0, [1], [False]))
    trace.room = 0  # the disk filled meanwhile: the buffered records fail as they are written out
    telemetry.flush() if when == "flush" else telemetry.close()
    assert telemetry.snapshot().recording_stopped.startswith("recording stopped: cannot write /mnt/full/")
    telemetry.record_step(make_step(1, 0, [1], [True]))
    telemetry.flush()
    telemetry.close()
    assert Telemetry(HEADER).snapshot().recording_stopped == ""


def test_journal_keeps_the_last_passes_in_order(monkeypatch):
    monkeypatch.setattr(telemetry_module, "JOURNAL_PASSES", 3)
    telemetry = Telemetry(HEADER)
    for step in range(1, 6):
        for layer in range(HEADER.num_layers):
            telemetry.record_step(make_step(step, layer, [step % 4, 0], [False, False]))
        telemetry.record_token(TokenEvent(step=step, text=f"t{step}"))
    header, events = telemetry.journal()
    assert header == HEADER
    expected = [(step, layer) for step in (3, 4, 5) for layer in (0, 1, "token")]
    assert [(e.step, e.layer if isinstance(e, LayerStep) else "token") for e in events] == expected
    telemetry.reset(HEADER)
    assert telemetry.journal()[1] == []


def test_counters_subtract_to_what_happened_between_two_readings() -> None:
    before = Counters(hits=3, misses=1, prefetch_issued=2, prefetch_used=1, bytes_loaded=10, host=0)
    after = Counters(hits=9, misses=2, prefetch_issued=6, prefetch_used=4, bytes_loaded=40, host=1)
    delta = after - before
    assert (delta.hits, delta.misses, delta.host, delta.bytes_loaded) == (6, 1, 1, 30)
    assert delta.hit_rate == 6 / 8 and delta.prefetch_recall == 3 / (1 + 1 + 3)
    assert delta + before == after
    stats = {"hits": 9, "misses": 2, "prefetch_issued": 6, "prefetch_used": 4, "bytes_loaded": 40, "host": 1}
    assert Counters.from_mapping({**stats, "tokens": 7, "hit_rate": 0.5}) == after
    assert Counters().rates() == {"hit_rate": 0.0, "prefetch_recall": 0.0, "prefetch_precision": 0.0}
