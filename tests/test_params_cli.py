"""``moe-tui params`` through the real entry point: the tree, the options, the JSON shape, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moe_tui.cli import main

CONFIGS = Path(__file__).resolve().parent.parent / "samples" / "configs"
SHIPPED = sorted(CONFIGS.glob("*.json"))
PART_KEYS = ("embeddings", "attention", "mlp", "router", "shared_experts", "norms", "lm_head", "other")


def run_params(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["params", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_tree_output_for_mixtral(capsys: pytest.CaptureFixture[str]):
    code, out, err = run_params(capsys, str(CONFIGS / "mixtral-8x7b.json"))
    assert code == 0 and err == ""
    for text in (
        "MixtralForCausalLM (Mixtral)",
        "layers 0-31 (x32)",
        "routed experts (8 x 176.16 M, top-2)",
        "q_proj [4096x4096]",
        "gate_proj [14336x4096]",
        "46,702,792,704",
        "12,879,925,248",
        "27.6% per token",
        "176,160,768",
        "memory (HQQ group size 64)",
    ):
        assert text in out, text
    lines = out.splitlines()
    tree_lines = [line for line in lines if "── " in line]
    assert len(tree_lines) == 17
    assert all(line.rstrip().endswith("iB") for line in tree_lines)  # the bytes column is never cut off
    for precision in ("fp32", "bf16", "int8", "hqq4", "hqq3", "hqq2"):
        assert any(line.startswith(precision) for line in lines), precision


def test_depth_precision_and_group_size(capsys: pytest.CaptureFixture[str]):
    _, full, _ = run_params(capsys, "mixtral-8x7b", "--precision", "hqq4", "--group-size", "128")
    assert "bytes hqq4" in full and "memory (HQQ group size 128)" in full and "q_proj" in full
    _, shallow, _ = run_params(capsys, "mixtral-8x7b", "--depth", "1")
    assert "layers 0-31 (x32)" in shallow and "attention" not in shallow and "q_proj" not in shallow
    _, root_only, _ = run_params(capsys, "mixtral-8x7b", "--depth", "0")
    assert "embeddings" not in root_only and "MixtralForCausalLM" in root_only


def test_unknown_architecture_says_why_active_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    config = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 4, "vocab_size": 64}
    (tmp_path / "config.json").write_text(json.dumps(config))
    code, out, err = run_params(capsys, str(tmp_path))
    assert code == 0 and err == ""
    assert "active parameters not derived" in " ".join(out.split())
    assert "n/a" in out
    code, out, _ = run_params(capsys, str(tmp_path), "--json")
    document = json.loads(out)
    assert document["active"] is None and "not derived" in document["active_note"]
    assert document["total"] > 0


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_json_shape_for_every_shipped_config(path: Path, capsys: pytest.CaptureFixture[str]):
    code, out, err = run_params(capsys, str(path), "--json")
    assert code == 0 and err == ""
    document = json.loads(out)
    assert document["model"] == str(path)
    assert isinstance(document["total"], int) and isinstance(document["active"], int)
    assert 0 < document["active"] <= document["total"]
    assert document["active_note"] is None
    for key in PART_KEYS:
        part = document[key]
        assert isinstance(part["total"], int) and isinstance(part["active"], int), key
        assert part["active"] <= part["total"], key
    experts = document["experts"]
    totals = sum(document[key]["total"] for key in PART_KEYS) + experts["total"]
    actives = sum(document[key]["active"] for key in PART_KEYS) + experts["active"]
    assert (totals, actives) == (document["total"], document["active"])
    if "llama" in path.stem:
        assert experts["total"] == 0 and "count" not in experts
        assert document["active"] == document["total"]
    else:
        assert experts["count"] > experts["top_k"] > 0 and experts["moe_layers"] > 0
        assert experts["active"] * experts["count"] == experts["total"] * experts["top_k"]
        assert experts["per_expert"] * experts["count"] * experts["moe_layers"] == experts["total"]
    layers = document["layers"]
    assert isinstance(layers, list) and layers
    assert layers[0]["first"] == 0 and sum(group["count"] for group in layers) == layers[-1]["last"] + 1
    assert all(group["per_layer"] * group["count"] == group["total"] for group in layers)
    assert set(document["bytes"]) == {"fp32", "bf16", "int8", "hqq4", "hqq3", "hqq2"}
    assert document["bytes"]["hqq2"]["total"] < document["bytes"]["hqq4"]["total"] < document["bytes"]["bf16"]["total"]
    tree = document["tree"]
    assert tree["total"] == document["total"] and tree["share"] == 1.0
    assert sum(child["total"] for child in tree["children"]) == tree["total"]


def test_json_depth_limits_the_tree(capsys: pytest.CaptureFixture[str]):
    _, out, _ = run_params(capsys, "deepseek-v2-lite", "--json", "--depth", "1")
    tree = json.loads(out)["tree"]
    assert [child["name"] for child in tree["children"]][:3] == ["embed_tokens", "layer 0", "layers 1-26"]
    assert all("children" not in child for child in tree["children"])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["/no/such/config.json"], "no such file or directory"),
        (["acme/not-in-the-cache-moe"], "local Hugging Face cache"),
        (["NOT_JSON"], "not valid JSON"),
        (["NOT_CAUSAL"], "not a causal language model"),
        (["TOP_K"], "larger than num_local_experts"),
        (["ZERO_LAYERS"], "num_hidden_layers = 0"),
        (["mixtral-8x7b", "--depth", "-1"], "--depth must be 0 or more"),
        (["mixtral-8x7b", "--group-size", "0"], "--group-size must be a positive"),
    ],
    ids=["missing", "hub-not-cached", "not-json", "not-causal", "top-k", "zero-layers", "depth", "group-size"],
)
def test_bad_input_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
):
    mixtral = json.loads((CONFIGS / "mixtral-8x7b.json").read_text())
    files = {
        "NOT_JSON": "{'model_type': 'mixtral'}",
        "NOT_CAUSAL": json.dumps({"model_type": "t5"}),
        "TOP_K": json.dumps({**mixtral, "num_experts_per_tok": 12}),
        "ZERO_LAYERS": json.dumps({**mixtral, "num_hidden_layers": 0}),
    }
    if args[0] in files:
        path = tmp_path / "config.json"
        path.write_text(files[args[0]])
        args = [str(path), *args[1:]]
    code, out, err = run_params(capsys, *args)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("moe-tui: error: ")
    assert expected in err
    assert "Traceback" not in err


def test_invalid_precision_is_rejected_by_argparse(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit_info:
        main(["params", "mixtral-8x7b", "--precision", "fp8"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'fp8'" in capsys.readouterr().err
