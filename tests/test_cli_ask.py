"""``moe-tui ask``: one answer on stdout for scripts, and traces read from stdin by lab, plan and chat."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest

from moe_tui import cli, config, paths
from moe_tui.telemetry import LayerStep, Telemetry, TraceHeader


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str], stdin: str | None = None, monkeypatch=None):
    """Exit code, stdout and stderr of one command (``stdin`` fed to standard input)."""
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_ask_streams_the_demo_models_greedy_answer(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    argv = ["ask", "What does len() return?", "--temperature", "0", "--max-new-tokens", "16"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0 and out.strip() and "Traceback" not in err
    code, from_stdin, _ = run_cli(["ask", "-", *argv[2:]], capsys, "What does len() return?\n", monkeypatch)
    assert code == 0 and from_stdin == out  # the same question from stdin, the same greedy answer


def test_ask_json_holds_the_text_and_the_engines_counters(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["ask", "Explain zip()", "--json", "--temperature", "0", "--max-new-tokens", "8"], capsys)
    report = json.loads(out)
    assert code == 0 and report["model"] == "demo-mixtral" and report["tokens"] == 8 and report["text"]
    assert 0 < report["first_token_s"] < report["seconds"] and report["decode_tokens_per_s"] > report["tokens_per_s"]
    counters = report["counters"]
    # 6 MoE layers, top-2: each single-token pass uses 12 experts; the prompt's pass uses fewer than 12 per token.
    accesses = counters["hits"] + counters["misses"] + counters["host"]
    assert counters["steps"] == 8 and 7 * 12 < accesses < counters["tokens"] * 12


def test_ask_follows_the_models_generation_config_unless_told(capsys: pytest.CaptureFixture[str]) -> None:
    # The demo model recommends max_new_tokens 256 and sampling; saved settings and flags override it.
    config.save_settings(config.Settings(generation={"temperature": 0.0, "max_new_tokens": 5}))
    code, out, _ = run_cli(["ask", "Explain zip()", "--json"], capsys)
    assert code == 0 and json.loads(out)["tokens"] == 5
    code, out, _ = run_cli(["ask", "Explain zip()", "--json", "--max-new-tokens", "7"], capsys)
    assert json.loads(out)["tokens"] == 7


@pytest.mark.parametrize("content", ['{"temperature": ', '{"temperature": "hot", "top_p": 7, "max_new_tokens": 6}'])
def test_a_models_broken_generation_config_costs_its_recommendations_not_the_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    """An unreadable generation_config.json ended ``ask`` (and a load in the app) with a traceback; a value no
    setting may hold (top-p 7) refused every answer. The file's good values are still followed."""
    directory = tmp_path / "model"
    shutil.copytree(paths.DEMO_MODEL_DIR, directory)
    (directory / "generation_config.json").write_text(content)
    code, out, err = run_cli(["ask", "Explain zip()", "--model", str(directory), "--json"], capsys)
    assert code == 0 and "Traceback" not in err, err
    if content.endswith("}"):
        assert json.loads(out)["tokens"] == 6  # the model's max_new_tokens, its two bad values left out
        assert "note: the model's generation_config.json sets top_p to 7, which must be a number above 0" in err
        assert "sets temperature to 'hot', which must be a number from 0 to 2: left out" in err
    else:
        assert f"moe-tui: note: {directory / 'generation_config.json'} is unreadable" in err
        assert json.loads(out)["text"]


def test_ask_uses_the_engine_settings_saved_in_the_settings_file(capsys: pytest.CaptureFixture[str]) -> None:
    config.save_settings(config.Settings(generation={"temperature": 0.0}, engine={"prefetch": 0, "policy": "fifo"}))
    code, out, _ = run_cli(["ask", "Explain zip()", "--json", "--max-new-tokens", "4"], capsys)
    assert code == 0 and json.loads(out)["counters"]["prefetch_issued"] == 0  # chat's default would prefetch 1
    code, out, _ = run_cli(["ask", "Explain zip()", "--json", "--max-new-tokens", "4", "--prefetch", "1"], capsys)
    assert json.loads(out)["counters"]["prefetch_issued"] > 0  # the flag wins


@pytest.mark.parametrize(
    ("argv", "stdin", "message"),
    [
        (["ask", "  "], None, "the question is empty"),
        (["ask", "-"], "", "the question is empty (nothing came on stdin)"),
        (["ask", "python " * 800], None, "tokens over, counting one for the answer"),
        (["ask", "hi", "--context", "100000"], None, "more than this model reads (512)"),
    ],
)
def test_bad_questions_are_one_line(
    argv: list[str], stdin: str | None, message: str, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    code, out, err = run_cli(argv, capsys, stdin, monkeypatch)
    assert code == 2 and message in err and err.count("\n") == 1 and not out


def test_a_model_that_is_not_a_causal_lm_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    code, _, err = run_cli(["ask", "hi", "--model", str(tmp_path)], capsys)
    assert code == 2 and "is not a causal language model (BertModel)" in err


def small_trace(path: Path) -> str:
    header = TraceHeader(model="tiny", num_layers=2, num_experts=4, top_k=2, cache_size=(2, 2), expert_bytes=1)
    with path.open("w") as handle:
        telemetry = Telemetry(header, trace=handle)
        for step in range(12):
            for layer in range(2):
                experts = ((step + layer) % 4, (step + layer + 1) % 4)
                telemetry.record_step(
                    LayerStep(step, layer, 1, experts, (1, 1), (0.5, 0.5), (False,) * 2, (False,) * 2, (), ())
                )
        telemetry.close()
    return path.read_text()


def test_lab_and_plan_read_a_trace_from_stdin(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    text = small_trace(tmp_path / "t.jsonl")
    code, from_file, _ = run_cli(["lab", str(tmp_path / "t.jsonl"), "--json"], capsys)
    code_stdin, from_stdin, _ = run_cli(["lab", "-", "--json"], capsys, text, monkeypatch)
    assert code == code_stdin == 0 and json.loads(from_stdin) == json.loads(from_file)
    code, out, err = run_cli(["lab", "-"], capsys, "not a trace\n", monkeypatch)
    assert code == 2 and "stdin" in err
    tiny = tmp_path / "config.json"
    tiny.write_text(
        json.dumps(
            {
                "model_type": "mixtral",
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "num_local_experts": 4,
                "num_experts_per_tok": 2,
                "vocab_size": 256,
            }
        )
    )
    plan = ["plan", str(tiny), "--ram", "1GiB", "--bandwidth", "10", "--compute-bandwidth", "100", "--json"]
    plan += ["--overhead-ms", "0", "--trace", "-"]
    code, out, _ = run_cli(plan, capsys, text, monkeypatch)
    assert code == 0 and "LRU replay of trace -" in json.loads(out)["routing"]


def test_an_answer_piped_into_a_reader_that_stops_early_ends_quietly(tmp_path: Path) -> None:
    """`moe-tui ask ... | head -c 20`: the reader closes the pipe mid-answer; the answer stops there, with no
    traceback and the status of a process ended by SIGPIPE."""
    import os
    import subprocess
    import sys

    environment = {**os.environ, "MOE_TUI_DATA_DIR": str(tmp_path), "MOE_TUI_CONFIG_DIR": str(tmp_path)}
    question = ["ask", "Tell me about lists and tuples", "--temperature", "0", "--max-new-tokens", "64"]
    done = subprocess.run(
        [
            "bash",
            "-c",
            'set -o pipefail; "$@" | head -c 20 > /dev/null',
            "ask",
            sys.executable,
            "-m",
            "moe_tui",
            *question,
        ],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 141
