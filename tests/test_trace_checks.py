"""Every trace record is checked against its header and the records before it; a cut-off last line is
skipped with a note, a bad record anywhere else is refused with its line number."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from moe_tui import cli
from moe_tui.telemetry import TraceError, read_trace

TRACE = Path(__file__).resolve().parent.parent / "samples" / "traces" / "demo-python-builtins.jsonl"


def lines() -> list[str]:
    return TRACE.read_text(encoding="utf-8").splitlines()[:60]


def decode_step_line(records: list[str]) -> int:
    """The index of the last one-token step record among ``records``."""
    return max(i for i, line in enumerate(records) if '"type":"step"' in line and '"n_tokens":1,' in line)


def mutated(tmp_path: Path, change) -> Path:
    records = lines()
    index = decode_step_line(records)
    record = json.loads(records[index])
    change(record)
    records[index] = json.dumps(record)
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(records) + "\n", encoding="utf-8")
    return path


def set_experts(record: dict, experts: list[int]) -> None:
    for key, value in (("experts", experts), ("counts", [1] * len(experts)), ("weights", [0.1] * len(experts))):
        record[key] = value
    record["hits"] = record["prefetch_hits"] = [False] * len(experts)


CASES = {
    "expert index out of range": (lambda r: r.__setitem__("experts", [99, *r["experts"][1:]]), "expert 99 is outside"),
    "layer out of range": (lambda r: r.__setitem__("layer", 17), "layer 17 is outside"),
    "lists of different lengths": (lambda r: r.__setitem__("weights", r["weights"][:-1]), "same length"),
    "more experts than top-k allows": (lambda r: set_experts(r, [0, 1, 2, 3]), "4 experts for 1 token(s) at top-2"),
    "counts above n_tokens x top_k": (lambda r: r.__setitem__("counts", [5] * len(r["counts"])), "add up to at most"),
    "more slots than the cache holds": (lambda r: r.__setitem__("slots", [*r["slots"], 6, 7]), "whose cache holds 2"),
    "step number going back": (lambda r: r.__setitem__("step", 0), "steps must not go back"),
    "an expert listed twice": (lambda r: r.__setitem__("experts", [r["experts"][0]] * 2), "listed twice"),
    "a prefetch hit that is not a hit": (
        lambda r: (r.__setitem__("hits", [False] * len(r["hits"])), r.__setitem__("prefetch_hits", [True] * 2)),
        "must also be a hit",
    ),
    "a negative weight": (lambda r: r.__setitem__("weights", [-1.0] * len(r["weights"])), "not negative"),
    "an unknown record type": (lambda r: r.__setitem__("type", "stepp"), "unknown record type 'stepp'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_record_that_breaks_a_rule_is_refused_with_its_line(tmp_path: Path, case: str, capsys) -> None:
    change, message = CASES[case]
    path = mutated(tmp_path, change)
    line = decode_step_line(lines()) + 1
    with pytest.raises(TraceError, match=f"line {line}: .*{re.escape(message)}"):
        read_trace(path)
    before = path.read_bytes()
    assert cli.main(["lab", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"line {line}" in err and "Traceback" not in err
    assert path.read_bytes() == before


def test_a_cut_off_last_line_is_skipped_and_said(tmp_path: Path, capsys) -> None:
    records = lines()
    path = tmp_path / "killed.jsonl"
    path.write_text("\n".join(records[:-1]) + "\n" + records[-1][: len(records[-1]) // 2], encoding="utf-8")
    notes: list[str] = []
    _, events = read_trace(path, notes)
    assert len(events) == len(records) - 2  # the header and the cut line are not events
    assert notes == [f"{path}: line {len(records)} is cut off (a recording stopped mid-line); read up to line 59"]
    assert cli.main(["lab", str(path)]) == 0
    assert "is cut off" in capsys.readouterr().err


def test_a_malformed_line_that_is_not_the_last_is_still_an_error(tmp_path: Path) -> None:
    records = lines()
    records[10] = records[10][:40]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(records) + "\n", encoding="utf-8")
    with pytest.raises(TraceError, match="line 11: not valid JSON"):
        read_trace(path)


def test_every_shipped_trace_passes_the_checks() -> None:
    for trace in TRACE.parent.glob("*.jsonl"):
        notes: list[str] = []
        read_trace(trace, notes)
        assert notes == []
