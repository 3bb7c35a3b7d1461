"""``moe-tui lab TRACE``: tables, JSON, agreement with the recording, and clear errors on bad traces."""

from __future__ import annotations

import json
import random
from collections import OrderedDict
from pathlib import Path

import pytest

from moe_tui import cli
from moe_tui.telemetry import LayerStep, Telemetry, TokenEvent, TraceHeader


def record_trace(
    path: Path, num_layers: int = 2, num_experts: int = 4, top_k: int = 2, k: int = 2, steps: int = 40, seed: int = 0
) -> TraceHeader:
    """Write a trace the way an LRU engine with one-expert prefetch would, through the real trace writer.

    The toy engine keeps an OrderedDict per layer (oldest first), fetches held experts before missing ones,
    never evicts an expert of the current pass, and prefetches one guess per pass (right 60% of the time);
    a prefetch mark lasts one pass.
    """
    rng = random.Random(seed)
    header = TraceHeader(
        model="toy-moe",
        num_layers=num_layers,
        num_experts=num_experts,
        top_k=top_k,
        cache_size=(k,) * num_layers,
        policy="lru",
        prefetch=1,
        expert_bytes=1000,
    )
    caches: list[OrderedDict[int, bool]] = [OrderedDict() for _ in range(num_layers)]
    with path.open("w", encoding="utf-8") as handle:
        telemetry = Telemetry(header, trace=handle)
        for step in range(steps):
            for layer, cache in enumerate(caches):
                used = rng.sample(range(num_experts), top_k)
                guess = used[0] if rng.random() < 0.6 else rng.randrange(num_experts)
                issued = ()
                if guess not in cache:
                    if len(cache) >= k:
                        cache.popitem(last=False)
                    cache[guess] = True  # True: brought in by prefetch, not used since
                    issued = (guess,)
                order = [e for e in used if e in cache] + [e for e in used if e not in cache]
                hits, prefetch_hits = [], []
                for expert in order:
                    hit = expert in cache
                    hits.append(hit)
                    prefetch_hits.append(hit and cache[expert])
                    if hit:
                        cache.move_to_end(expert)
                        cache[expert] = False
                        continue
                    if len(cache) >= k:
                        victim = next(e for e in cache if e not in used)
                        del cache[victim]
                    cache[expert] = False
                for expert in cache:
                    cache[expert] = False
                telemetry.record_step(
                    LayerStep(
                        step=step,
                        layer=layer,
                        n_tokens=1,
                        experts=tuple(order),
                        counts=(1,) * top_k,
                        weights=(1 / top_k,) * top_k,
                        hits=tuple(hits),
                        prefetch_hits=tuple(prefetch_hits),
                        prefetch_issued=issued,
                        slots=tuple(cache),
                        bytes_loaded=header.expert_bytes * (len(issued) + hits.count(False)),
                    )
                )
            telemetry.record_token(TokenEvent(step=step, text=f"t{step}"))
        telemetry.close()
    return header


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    """A 40-token trace of a 2-layer, 4-expert, top-2 model recorded at k=2 with prefetch."""
    path = tmp_path / "toy.jsonl"
    record_trace(path)
    return path


def test_lab_table(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["lab", str(trace)]) == 0
    out = capsys.readouterr().out
    assert "toy-moe, 2 MoE layers x 4 experts, top-2, 40 forward passes, 40 tokens" in out
    assert "MIN (optimum)" in out and "lru+prefetch" in out
    assert "hit rate per MoE layer at k=2" in out
    overall = out.split("hit rate over all MoE layers")[1].split("\n\n")[0].splitlines()
    assert [line.split()[0] for line in overall[3:]] == ["1", "2", "3", "4"]


def test_lab_json_matches_the_recording_and_bounds(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["lab", str(trace), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["policies"] == ["lru", "lfu", "fifo", "lru+prefetch", "lru+prefetch+host", "min"]
    replays = {(r["policy"], r["cache_size"][0]): r for r in data["replays"]}
    assert len(replays) == 4 * 6
    recorded = data["recorded"]["total"]
    hosted = replays[("lru+prefetch+host", 2)]["total"]
    assert hosted["misses"] == 0 and hosted["hits"] + hosted["host"] == recorded["hits"] + recorded["misses"]
    replayed = replays[("lru+prefetch", 2)]["total"]
    for key in ("hits", "misses", "prefetch_issued", "prefetch_used", "bytes_loaded"):
        assert replayed[key] == recorded[key], key
    for k in range(1, 5):
        optimum = replays[("min", k)]["total"]["hit_rate"]
        for policy in ("lru", "lfu", "fifo"):
            assert replays[(policy, k)]["total"]["hit_rate"] <= optimum
            assert replays[(policy, k)]["gap_to_min"] >= 0
    assert replays[("min", 4)]["total"]["misses"] == 8  # only the first use of each expert in each layer


def test_lab_every_layer_table(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["lab", str(trace), "--all-layers"]) == 0
    out = capsys.readouterr().out
    assert all(f"hit rate per MoE layer at k={k}" in out for k in range(1, 5))


def error_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI expecting a user error: exit 2 and one line on stderr, no traceback."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("moe-tui: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_empty_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    assert "is empty" in error_of(["lab", str(path)], capsys)


def test_missing_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "cannot read trace" in error_of(["lab", str(tmp_path / "nope.jsonl")], capsys)


def test_truncated_line(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = trace.read_text().splitlines()
    trace.write_text("\n".join([*lines[:5], lines[5][: len(lines[5]) // 2]]) + "\n")
    assert "line 6: not valid JSON" in error_of(["lab", str(trace)], capsys)


def test_step_of_another_shape(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = trace.read_text().splitlines()
    record = json.loads(lines[4])
    record["experts"][0] = 7
    lines[4] = json.dumps(record)
    trace.write_text("\n".join(lines) + "\n")
    assert "line 5: expert 7 is outside this model's 4 experts" in error_of(["lab", str(trace)], capsys)


def test_header_only(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace.write_text(trace.read_text().splitlines()[0] + "\n")
    assert "no routing steps" in error_of(["lab", str(trace)], capsys)


def test_cache_size_out_of_range(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "--k 9 is outside 1..4" in error_of(["lab", str(trace), "--k", "9"], capsys)


def test_binary_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(bytes(range(256)) * 4)
    assert "not a text trace file" in error_of(["lab", str(path)], capsys)


def mixtral_config(path: Path, layers: int, experts: int, top_k: int) -> Path:
    """A small Mixtral config.json."""
    config = {
        "model_type": "mixtral",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_local_experts": experts,
        "num_experts_per_tok": top_k,
        "vocab_size": 256,
    }
    path.write_text(json.dumps(config))
    return path


def test_model_check(trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    same = mixtral_config(tmp_path / "same.json", layers=2, experts=4, top_k=2)
    assert cli.main(["lab", str(trace), "--model", str(same), "--json"]) == 0
    capsys.readouterr()
    other = mixtral_config(tmp_path / "other.json", layers=2, experts=8, top_k=2)
    err = error_of(["lab", str(trace), "--model", str(other)], capsys)
    assert "recorded on a model with 2 MoE layers x 4 experts, top-2" in err and "8 experts" in err
