"""What `chat` can ask of the engine from the command line, and `moe-tui cache` over real quantized stores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moe_tui import cli, paths
from moe_tui.commands.chat import options_from_args


def parse(*argv: str):
    return cli.build_parser().parse_args(["chat", *argv])


def test_chat_flags_reach_the_engine_settings(tmp_path: Path) -> None:
    args = parse(
        "--cache-size", "3,2,2,1,2,2", "--store", "mmap", "--dtype", "bfloat16", "--group-size", "32",
        "--expert-bits", "4", "--miss", "auto", "--quant-cache", str(tmp_path / "q"), "--context", "1024",
        "--quant-optimize", "on",
    )  # fmt: skip
    config = options_from_args(args).offload_config()
    assert config.cache_size == [3, 2, 2, 1, 2, 2]
    assert (config.context, config.quant_optimize) == (1024, True)
    assert options_from_args(parse()).offload_config().quant_optimize is None  # the per-device default
    assert (config.store, config.dtype, config.group_size, config.expert_bits, config.miss) == (
        "mmap", "bfloat16", 32, 4, "auto",
    )  # fmt: skip
    assert config.quant_cache_dir == str(tmp_path / "q")


@pytest.mark.parametrize("command", ["chat", "bench"])
def test_dtype_takes_the_short_names_the_app_shows(command: str) -> None:
    """Every panel, plan and bench table says bf16; --dtype bf16 was refused with a list of long names."""
    for short, long in (("bf16", "bfloat16"), ("fp16", "float16"), ("fp32", "float32"), ("bfloat16", "bfloat16")):
        assert cli.build_parser().parse_args([command, "--dtype", short]).dtype == long


def test_the_settings_files_engine_table_gives_defaults_that_flags_override() -> None:
    saved = {"expert_bits": 4, "cache_size": 3, "device": "cpu"}
    engine = options_from_args(parse(), saved).engine
    assert (engine.expert_bits, engine.cache_size, engine.device, engine.prefetch) == (4, 3, "cpu", 1)
    engine = options_from_args(parse("-k", "2", "--device", "auto"), saved).engine
    assert (engine.expert_bits, engine.cache_size, engine.device) == (4, 2, "auto")
    assert options_from_args(parse()).engine.device == "auto"  # neither the file nor a flag: auto


def test_quantized_stores_are_kept_in_the_user_cache_unless_told_otherwise() -> None:
    assert options_from_args(parse("--expert-bits", "2")).offload_config().quant_cache_dir == str(
        paths.quant_cache_dir()
    )
    assert options_from_args(parse("--expert-bits", "2", "--no-quant-cache")).offload_config().quant_cache_dir is None
    assert options_from_args(parse()).offload_config().quant_cache_dir is None  # nothing quantized, nothing kept


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--cache-size", "2,x"], "expected a whole number or a comma list"),
        (["--cache-size", "2,0"], "every cache size must be at least 1"),
        (["--store", "disk"], "invalid choice: 'disk'"),
        (["--group-size", "0"], "must be at least 1"),
        (["--context", "0"], "must be at least 1"),
        (["--quant-optimize", "maybe"], "invalid choice: 'maybe'"),
        (["--dtype", "bf17"], "unknown dtype 'bf17'; choose from bfloat16 (bf16), float16 (fp16), float32 (fp32)"),
    ],
)
def test_bad_engine_flags_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["chat", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_quant_cache_and_no_quant_cache_together_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["chat", "--quant-cache", "x", "--no-quant-cache"]) == 2
    assert "choose either --quant-cache DIR or --no-quant-cache" in capsys.readouterr().err


def test_cache_command_lists_sizes_and_removes_entries(capsys: pytest.CaptureFixture[str]) -> None:
    from moe_tui.offload import OffloadConfig, load_offloaded

    root = paths.quant_cache_dir()
    settings = OffloadConfig(cache_size=2, expert_bits=2, quant_cache_dir=root, quant_optimize=False)
    om = load_offloaded(paths.DEMO_MODEL_DIR, settings, progress=lambda *_: None)
    name = Path(om.load_info["store_dir"]).name
    om.close()
    (root / "half-written").mkdir()
    (root / "half-written" / "experts.bin.partial").write_bytes(b"\0" * 100)

    assert cli.main(["cache", "--json"]) == 0
    entries = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)["entries"]}
    assert entries[name]["complete"] and entries[name]["format"] == "hqq2" and entries[name]["model"] == "demo-mixtral"
    assert entries[name]["bytes"] > 6 * 8 * 60_000  # every expert of the demo model at 2 bits
    assert not entries["half-written"]["complete"]
    assert cli.main(["cache"]) == 0
    table = capsys.readouterr().out
    assert name in table and "incomplete" in table
    assert cli.main(["cache", "--remove", "half-written"]) == 0
    capsys.readouterr()
    assert cli.main(["cache"]) == 0
    table = capsys.readouterr().out
    assert "incomplete" not in table and not any(line.endswith(" ") for line in table.splitlines())

    assert cli.main(["cache", "--remove", "nothing-here"]) == 2
    assert "no cache entry named nothing-here" in capsys.readouterr().err
    assert cli.main(["cache", "--remove", name]) == 0
    assert "removed 1 entry" in capsys.readouterr().out and not (root / name).exists()
    assert cli.main(["cache", "--clear"]) == 0
    assert list(root.iterdir()) == []


def test_cache_command_finds_the_entries_no_start_will_read_and_removes_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A store laid out as an older version laid out its format (int3's first packing had no "packing" key) is
    never looked at again, since its name digests the format's description: the listing says so."""
    from moe_tui.offload import OffloadConfig, load_offloaded

    root = paths.quant_cache_dir()
    names = []
    for bits in (3, 2):
        settings = OffloadConfig(
            cache_size=2, expert_bits=bits, dtype="bfloat16", quant_cache_dir=root, quant_optimize=False
        )
        om = load_offloaded(paths.DEMO_MODEL_DIR, settings, progress=lambda *_: None)
        names.append(Path(om.load_info["store_dir"]).name)
        om.close()
    int3, int2 = names
    description = root / int3 / "store.json"
    meta = json.loads(description.read_text())
    assert meta["format"].pop("packing") == "spread-free-bits"
    description.write_text(json.dumps(meta))  # as the first int3 packing described itself
    (root / "half-written").mkdir()
    (root / "hand-edited").mkdir()  # a description nothing can be built from: outdated, not a traceback
    broken = {**meta, "format": {**meta["format"], "group_size": 0}}
    (root / "hand-edited" / "store.json").write_text(json.dumps(broken))

    assert cli.main(["cache", "--json"]) == 0
    entries = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)["entries"]}
    assert entries["hand-edited"]["outdated"]
    assert entries[int3]["outdated"] and entries[int3]["unused"] and entries[int3]["complete"]
    assert not entries[int2]["outdated"] and not entries[int2]["unused"]
    assert entries["half-written"]["unused"]
    assert cli.main(["cache"]) == 0
    table = capsys.readouterr().out
    assert any(line.startswith(int3) and line.endswith("outdated") for line in table.splitlines())
    assert "--remove-outdated frees" in table
    assert cli.main(["cache", "--remove-outdated", "--clear"]) == 2
    assert "choose one of" in capsys.readouterr().err
    assert cli.main(["cache", "--remove-outdated"]) == 0
    assert "removed 3 entries" in capsys.readouterr().out
    assert sorted(path.name for path in root.iterdir()) == [int2]


def test_the_hqq_optimiser_defaults_to_off_when_quantizing_on_a_cpu() -> None:
    from offload_models import build, mixtral_config

    from moe_tui.offload import OffloadConfig, offload_model

    quiet = {"progress": lambda stage, done, total: None}
    default = offload_model(build(mixtral_config()), OffloadConfig(expert_bits=4, group_size=16), **quiet)
    asked = offload_model(
        build(mixtral_config()), OffloadConfig(expert_bits=4, group_size=16, quant_optimize=True), **quiet
    )
    assert (default.format.optimize, asked.format.optimize) == (False, True)
    assert default.format.describe()["optimize"] is False  # part of a saved store's identity
