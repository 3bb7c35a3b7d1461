"""``moe-tui bench`` on a tiny synthetic Mixtral: the numbers it reports, forced routing, recording, bad input."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from moe_tui import bench, cli, paths
from moe_tui.errors import UserError
from moe_tui.telemetry import TokenEvent, read_trace

TINY = ["--synthetic", "--layers", "2", "--hidden", "64", "--intermediate", "96", "--heads", "4", "--vocab", "128"]


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    """Two short prompts."""
    path = tmp_path / "prompts.txt"
    path.write_text("# two prompts\nHello there.\n\nWhy is the sky blue?\n")
    return path


def test_load_prompts_skips_comments_and_blank_lines(prompts: Path) -> None:
    assert bench.load_prompts(prompts) == ["Hello there.", "Why is the sky blue?"]


def test_shipped_prompt_set_is_varied() -> None:
    shipped = bench.load_prompts(bench.DEFAULT_PROMPTS)
    assert len(shipped) >= 6 and len(set(shipped)) == len(shipped)


@pytest.mark.parametrize("text", ["", "# only a comment\n\n"])
def test_empty_prompt_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.txt"
    path.write_text(text)
    with pytest.raises(UserError, match="holds no prompts"):
        bench.load_prompts(path)


def test_parse_spec() -> None:
    assert bench.parse_spec("resident", 8).kind == "resident"
    assert bench.parse_spec("hf-offload", 8).kind == "hf-offload"
    spec = bench.parse_spec("k=E,prefetch=1,policy=lfu,bits=4,telemetry=off", 8)
    engine = spec.engine
    assert (spec.kind, engine.cache_size, engine.prefetch, engine.policy, engine.expert_bits, engine.telemetry) == (
        "engine", 8, 1, "lfu", 4, False,
    )  # fmt: skip
    assert spec.label == "k=8,prefetch=1,policy=lfu,bits=4,telemetry=off"


def test_parse_spec_takes_a_k_per_layer_and_a_group_size() -> None:
    spec = bench.parse_spec("k=3,2,2,1,prefetch=1,bits=4,group=128", 8, group_size=32)
    engine = spec.engine
    assert (engine.cache_size, engine.prefetch, engine.group_size) == ([3, 2, 2, 1], 1, 128)
    assert spec.label == "k=3,2,2,1,prefetch=1,bits=4,group=128"
    assert bench.parse_spec("k=2,bits=2", 8, group_size=32).engine.group_size == 32  # the run's --group-size
    assert bench.parse_spec("k=2,bits=2", 8).engine.group_size == 64


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prefetch=1", "needs k=N"),
        ("k=9", "k must be 1..8"),
        ("k=2,9", "k must be 1..8"),
        ("k=two", "k must be a whole number"),
        ("k=2,colour=red", "cannot read configuration"),
        ("k=2,prefetch=1,3", "cannot read configuration"),  # a bare number continues k's list only
        ("k=2,telemetry=maybe", "telemetry must be on or off"),
        ("k=2,bits=4,group=12", "group size must be a positive multiple of 8"),
        ("k=2,prefetch=1,prefetch=2", "sets prefetch twice"),
    ],
)
def test_parse_spec_rejects(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        bench.parse_spec(text, 8)


def run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    """Run the CLI and parse its JSON output."""
    assert cli.main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_compare_reports_ratios_and_engine_counters(prompts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", *TINY, "--tokens", "3", "--runs", "1", "--prompts", str(prompts), "--json"]
    data = run_json([*argv, "--compare", "resident", "k=2,prefetch=1", "hf-offload"], capsys)
    assert data["machine"]["cores"] >= 1 and "both host RAM" in data["tiers"]
    assert data["prompt_tokens"] == [len(b"Hello there."), len(b"Why is the sky blue?")]
    resident, engine, offload = data["results"]
    assert [r["label"] for r in data["results"]] == ["resident", "k=2,prefetch=1", "hf-offload"]
    assert resident["decode_vs_first"] == 1.0
    for entry in data["results"]:
        assert len(entry["samples"]) == 2 and all(s["new_tokens"] == 3 for s in entry["samples"])
        assert entry["decode_tokens_per_s"] > 0 and entry["ttft_s"] > 0
        assert entry["decode_vs_first"] == pytest.approx(entry["decode_tokens_per_s"] / resident["decode_tokens_per_s"])
    counters = engine["engine"]
    assert counters["hits"] + counters["misses"] > 0 and counters["prefetch_issued"] > 0
    assert engine["bytes_per_token"] == pytest.approx(counters["bytes_loaded"] / 6)
    assert engine["slow_tier_bytes"] == 2 * 8 * 3 * 64 * 96 * 4  # every fp32 expert of both layers in the store
    assert resident["engine"] is None and offload["engine"] is None
    assert offload["slow_tier_bytes"] > 0  # the MoE blocks went to the offload folder


def test_table_output(prompts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", *TINY, "--tokens", "2", "--runs", "1", "--prompts", str(prompts), "--config", "k=1"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "synthetic mixtral: 2 layers, hidden 64" in out
    assert "config  experts  decode tok/s  x first" in out and "\nk=1 " in out and " fp32 " in out


def test_miss_modes_and_formats_in_one_run(prompts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shape = [*TINY[:6], "128", *TINY[7:]]  # intermediate 128: the int4 kernel's group size (64) divides it
    base = ["bench", *shape, "--dtype", "bfloat16", "--tokens", "3", "--runs", "1", "--prompts", str(prompts), "--json"]
    specs = ["k=2,bits=4,optimize=off", "k=2,bits=4,optimize=off,fused=off", "k=2,bits=4,optimize=off,miss=host"]
    data = run_json([*base, "--compare", *specs], capsys)
    fused, unfused, hosted = data["results"]
    assert (fused["expert_format"], unfused["expert_format"]) == ("int4", "hqq4 (unfused)")
    assert fused["engine"]["host"] == 0 and fused["engine"]["misses"] > 0
    assert hosted["engine"]["misses"] == 0 and hosted["engine"]["host"] > 0 and hosted["host_per_token"] > 0
    assert hosted["bytes_per_token"] == 0  # no copy at all: no prefetch and every miss computed from the store


def test_record_then_lab_and_forced_routing(tmp_path: Path, prompts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "run.jsonl"
    base = ["bench", *TINY, "--tokens", "4", "--runs", "1", "--prompts", str(prompts), "--json"]
    run_json([*base, "--config", "k=2,prefetch=1", "--record", str(trace)], capsys)
    header, events = read_trace(trace)
    assert (header.num_layers, header.num_experts, header.top_k, header.cache_size) == (2, 8, 2, (2, 2))
    assert sum(isinstance(e, TokenEvent) for e in events) == 4 + 2 * 4  # warm-up and two prompts, 4 tokens each
    assert cli.main(["lab", str(trace)]) == 0
    capsys.readouterr()

    # Forced from that trace, the routers can only pick the experts of its 9 decoded steps per layer. The
    # warm-up (a 12-token prompt and 3 decoded tokens) walks all 9 routes, so with k=8 every expert the
    # measured runs need is already cached: no misses, and the hit count is the fetches themselves.
    forced = run_json([*base, "--config", "k=E", "--routing", str(trace)], capsys)
    assert "routing forced from" in forced["notes"][0]
    assert sum(getattr(e, "n_tokens", 0) == 1 for e in events) == 2 * 9
    counters = forced["results"][0]["engine"]
    assert counters["misses"] == 0 and counters["hits"] > 0


def test_forced_routing_hook_picks_trace_experts() -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from moe_tui.telemetry import LayerStep, TraceHeader

    config = transformers.MixtralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
    )  # fmt: skip
    model = transformers.MixtralForCausalLM(config).eval()
    header = TraceHeader(model="toy", num_layers=2, num_experts=4, top_k=2, cache_size=(2, 2))
    routes = [(0, 1), (2, 3), (1, 3)]
    events = [
        LayerStep(step, layer, 1, routes[step], (1, 1), (0.25, 0.75), (False,) * 2, (False,) * 2, (), ())
        for step in range(3)
        for layer in range(2)
    ]
    forced = bench.ForcedRouting(header, events)
    forced.install(model)
    seen = []
    model.model.layers[1].mlp.gate.register_forward_hook(lambda m, a, out: seen.append(out[2].tolist()))
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3, 4]]))  # four tokens take routes 0, 1, 2, 0
    assert seen == [[[0, 1], [2, 3], [1, 3], [0, 1]]]
    assert forced.cursor == [4, 4]
    forced.remove()
    with torch.no_grad():
        model(torch.tensor([[1]]))
    assert forced.cursor == [4, 4]  # hooks gone: the model routes on its own again


def error_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Exit 2 with one line on stderr."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("moe-tui: error: ") and err.count("\n") == 1
    return err


def test_bad_input(tmp_path: Path, prompts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert "holds no prompts" in error_of(["bench", *TINY, "--prompts", str(empty)], capsys)
    assert "--tokens must be at least 2" in error_of(["bench", *TINY, "--tokens", "1"], capsys)
    assert "no config.json" in error_of(["bench", "--model", str(tmp_path), "--prompts", str(prompts)], capsys)
    assert "nor a model in the local Hugging Face cache" in error_of(["bench", "--model", "acme/absent"], capsys)
    argv = ["bench", *TINY, "--prompts", str(prompts), "--tokens", "2", "--runs", "1"]
    assert "cannot read configuration" in error_of([*argv, "--compare", "k=2", "turbo"], capsys)
    # checked against the model before any configuration runs (no "... loading" line before the error)
    assert "configuration 'k=3,2,2': cache size has 3 entries but the model has 2 MoE layers" in error_of(
        [*argv, "--compare", "k=2", "k=3,2,2"], capsys
    )
    other = tmp_path / "other.jsonl"
    other.write_text(
        json.dumps({"type": "header", "schema": 1, "model": "x", "num_layers": 3, "num_experts": 8, "top_k": 2,
                    "cache_size": [2, 2, 2]}) + "\n"
    )  # fmt: skip
    assert "3 MoE layers x 8 experts" in error_of([*argv, "--routing", str(other)], capsys)
    # an earlier recording is kept, and nothing is loaded first
    assert "already exists: --record writes a new trace" in error_of([*argv, "--record", str(other)], capsys)
    assert other.read_text().startswith('{"type": "header"')


def test_a_k_list_counts_only_the_moe_layers(tmp_path: Path, prompts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from moe_tui.offload.loader import count_moe_layers

    shape = bench.SyntheticShape(layers=3, hidden=64, intermediate=32, experts=8, heads=4, vocab=128)
    model = bench.write_synthetic(replace(shape, family="deepseek_v3"), tmp_path / "ds", "float32")
    assert count_moe_layers(model.directory) == 2  # DeepSeek-V3's first layer is dense
    argv = ["bench", "--model", str(model.directory), "--prompts", str(prompts), "--tokens", "2", "--runs", "1"]
    assert run_json([*argv, "--json", "--config", "k=2,3"], capsys)["results"][0]["label"] == "k=2,3"


def test_configurations_are_checked_before_a_synthetic_model_is_written(
    prompts: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench, "write_synthetic", lambda *args, **kwargs: pytest.fail("the model was written"))
    argv = ["bench", *TINY, "--prompts", str(prompts), "--compare", "k=2", "k=2,bits=5"]
    assert "configuration 'k=2,bits=5'" in error_of(argv, capsys)


class FakeTokenizer:
    """Just enough of a tokenizer: a chat template that wraps the user turn in markers."""

    chat_template = "<user>{content}</user><assistant>"

    def apply_chat_template(self, chat: list[dict], add_generation_prompt: bool, tokenize: bool) -> dict:
        assert add_generation_prompt and tokenize and chat == [{"role": "user", "content": "hi"}]
        return {"input_ids": [1, 7, 8, 2]}

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(96 + i) for i in ids)


def test_prompts_go_through_the_chat_template() -> None:
    model = bench.BenchModel(Path("."), "fake", 1, 2, 1, 16, "float32", tokenizer=FakeTokenizer())
    assert model.encode("hi") == [1, 7, 8, 2]
    assert model.decode(3) == "c"
    plain = bench.BenchModel(Path("."), "fake", 1, 2, 1, 16, "float32")
    assert plain.encode("hi") == [ord("h") % 16, ord("i") % 16]


def test_interleave_runs_every_configuration_on_every_prompt(prompts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", *TINY, "--tokens", "2", "--runs", "2", "--prompts", str(prompts), "--json", "--interleave"]
    data = run_json([*argv, "--compare", "k=2,telemetry=off", "k=2,record=on"], capsys)
    off, on = data["results"]
    assert len(off["samples"]) == len(on["samples"]) == 4
    assert off["engine"]["load_s"] == 0 and on["engine"]["load_s"] > 0  # only telemetry times the copies
    assert (off["engine"]["hits"], off["engine"]["misses"]) == (on["engine"]["hits"], on["engine"]["misses"])
    assert "in turn (--interleave)" in data["notes"][0]


def test_quantized_stores_are_kept_across_runs_with_quant_cache(
    tmp_path: Path, prompts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "kept"
    argv = ["bench", *TINY, "--tokens", "2", "--runs", "1", "--prompts", str(prompts), "--json"]
    argv += ["--config", "k=1,bits=2,optimize=off", "--quant-cache", str(cache)]
    run_json(argv, capsys)
    entries = [p for p in cache.iterdir() if (p / "store.json").is_file()]
    assert len(entries) == 1
    before = (entries[0] / "experts.bin").stat().st_mtime_ns
    run_json(argv, capsys)
    assert (entries[0] / "experts.bin").stat().st_mtime_ns == before  # reused, not written again


def test_quantized_stores_of_a_model_directory_go_to_the_user_cache_unless_told_not_to(
    tmp_path: Path, prompts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shape = bench.SyntheticShape(layers=2, hidden=64, intermediate=96, heads=4, vocab=128)
    model = bench.write_synthetic(shape, tmp_path / "m", "float32")
    argv = ["bench", "--model", str(model.directory), "--tokens", "2", "--runs", "1", "--prompts", str(prompts)]
    argv += ["--json", "--config", "k=1,bits=2,optimize=off"]
    run_json([*argv, "--no-quant-cache"], capsys)
    assert not paths.quant_cache_dir().exists()
    run_json(argv, capsys)  # chat's cache, so a checkpoint quantized by either is quantized once
    entries = [p for p in paths.quant_cache_dir().iterdir() if (p / "store.json").is_file()]
    assert len(entries) == 1
    assert cli.main(argv) == 0
    assert f"k=1,bits=2,optimize=off: reused the quantized store in {entries[0]}" in capsys.readouterr().err
    # A synthetic model is written anew for every run: its stores are kept only with --quant-cache.
    run_json(["bench", *TINY, "--tokens", "2", "--runs", "1", "--prompts", str(prompts), "--json", "--config",
              "k=1,bits=2,optimize=off"], capsys)  # fmt: skip
    assert list(paths.quant_cache_dir().iterdir()) == [entries[0]]


def test_an_engine_configuration_reports_its_loading_stages_to_the_terminal_progress(
    prompts: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from moe_tui.offload import loader

    stages: set[str] = set()

    class Recorded:  # stands in for the terminal's bars
        def __enter__(self) -> Recorded:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def __call__(self, stage: str, done: int, total: int) -> None:
            stages.add(stage)

    monkeypatch.setattr(loader, "TerminalProgress", Recorded)
    argv = ["bench", *TINY, "--tokens", "2", "--runs", "1", "--prompts", str(prompts), "--json"]
    run_json([*argv, "--config", "k=1,bits=2,optimize=off"], capsys)
    assert "quantizing experts to 2 bits" in stages


def test_a_hub_id_in_the_local_cache_is_benchmarked_as_chat_would_open_it(
    tmp_path: Path, prompts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import huggingface_hub.constants

    repo = Path(huggingface_hub.constants.HF_HUB_CACHE) / "models--acme--bench-moe"
    bench.write_synthetic(bench.SyntheticShape(layers=2, hidden=64, intermediate=96, heads=4, vocab=128),
                          repo / "snapshots" / "0123abcd")  # fmt: skip
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    argv = ["bench", "--model", "acme/bench-moe", "--tokens", "2", "--runs", "1", "--prompts", str(prompts)]
    data = run_json([*argv, "--config", "k=1", "--json"], capsys)
    assert data["model"].startswith("acme/bench-moe (mixtral, 2 layers, 8 experts top-2")
    assert data["results"][0]["engine"]["hits"] + data["results"][0]["engine"]["misses"] > 0


def test_quant_cache_and_no_quant_cache_together_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--quant-cache", "x", "--no-quant-cache"]) == 2
    assert "choose either --quant-cache DIR or --no-quant-cache" in capsys.readouterr().err


@pytest.mark.parametrize(("family", "shared"), [("deepseek_v3", 1), ("gpt_oss", 0), ("qwen2_moe", 1), ("mixtral", 0)])
def test_a_synthetic_model_of_any_family_is_benchmarked_and_recorded_for_replay(
    family: str, shared: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from moe_tui.replay import Replay

    trace = tmp_path / f"{family}.jsonl"
    argv = ["bench", "--synthetic", "--family", family, "--layers", "3", "--experts", "16", "--top-k", "4"]
    argv += ["--hidden", "64", "--intermediate", "32", "--heads", "4", "--kv-heads", "2", "--vocab", "128"]
    argv += ["--config", "k=4,prefetch=2", "--tokens", "3", "--runs", "1", "--record", str(trace), "--json"]
    assert cli.main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"].startswith(f"synthetic {family}: 3 layers")
    header, _ = read_trace(trace)
    dense_first = 1 if family == "deepseek_v3" else 0  # DeepSeek-V3's first layer is dense
    assert (header.num_layers, header.num_experts, header.top_k, header.shared_experts) == (
        3 - dense_first, 16, 4, shared,
    )  # fmt: skip
    assert Replay.open(trace).header == header


def test_an_unknown_synthetic_family_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--synthetic", "--family", "llama"]) == 2
    assert "unknown --family 'llama'; choose from mixtral" in capsys.readouterr().err


def test_a_model_whose_tokenizer_does_not_load_is_benchmarked_on_bytes_and_says_so(
    tmp_path: Path, prompts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """bench needs no tokenizer (prompts become bytes), but it used to switch to bytes without a word."""
    import shutil

    directory = tmp_path / "model"
    shutil.copytree(paths.DEMO_MODEL_DIR, directory)
    (directory / "tokenizer.json").write_text("{")
    argv = ["bench", "--model", str(directory), "--tokens", "2", "--runs", "1", "--prompts", str(prompts)]
    assert cli.main([*argv, "--config", "k=1", "--json"]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert any(note.startswith("the model's tokenizer did not load (") and "UTF-8 bytes" in note for note in notes)
    assert bench.open_model(paths.DEMO_MODEL_DIR).tokenizer_problem == ""  # a good one says nothing
