"""Finding and checking configs: paths, model directories, bundled samples, the local hub cache, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moe_tui.errors import UserError
from moe_tui.params import load_config
from moe_tui.paths import DEMO_MODEL_DIR

CONFIGS = Path(__file__).resolve().parent.parent / "samples" / "configs"
MIXTRAL = json.loads((CONFIGS / "mixtral-8x7b.json").read_text())


def write_config(directory: Path, data: object, name: str = "config.json") -> Path:
    path = directory / name
    path.write_text(json.dumps(data))
    return path


def test_loads_a_file_a_directory_and_a_bundled_sample(tmp_path: Path):
    from_file = load_config(CONFIGS / "mixtral-8x7b.json")
    write_config(tmp_path, MIXTRAL)
    from_dir = load_config(tmp_path)
    from_sample = load_config("mixtral-8x7b")
    for config in (from_file, from_dir, from_sample):
        assert config.model_type == "mixtral"
        assert (config.num_local_experts, config.num_experts_per_tok, config.hidden_size) == (8, 2, 4096)
    assert from_dir.name_or_path == str(tmp_path / "config.json")


def test_the_demo_model_is_found_by_the_name_the_app_shows():
    """``moe-tui params demo-mixtral`` and ``plan demo-mixtral`` read the bundled demo's own config."""
    config = load_config("demo-mixtral")
    assert (config.model_type, config.num_local_experts, config.num_hidden_layers) == ("mixtral", 8, 6)
    assert Path(config.name_or_path) == DEMO_MODEL_DIR / "config.json"


def fake_hub_cache(root: Path, repo_id: str, config: dict) -> Path:
    """The layout huggingface_hub uses: models--org--name/{refs/main, snapshots/<commit>/config.json}."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    write_config(snapshot, config)
    return snapshot / "config.json"


def test_hub_id_resolves_through_the_local_cache_only(tmp_path: Path):
    cached = fake_hub_cache(tmp_path, "acme/tiny-moe", {**MIXTRAL, "num_hidden_layers": 3})
    config = load_config("acme/tiny-moe", hf_cache_dir=tmp_path)
    assert config.num_hidden_layers == 3
    assert config.name_or_path == str(cached)
    with pytest.raises(UserError) as error:
        load_config("acme/other-moe", hf_cache_dir=tmp_path)
    message = str(error.value)
    assert "acme/other-moe" in message and str(tmp_path) in message and "not a file or directory" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda d: d / "missing.json", "no such file or directory"),
        (lambda d: d, "has no config.json"),
        (lambda d: (d / "c.json").write_text("{not json") and d / "c.json", "not valid JSON"),
        (lambda d: (d / "c.json").write_bytes(b"\xff\xfe\x00garbage") and d / "c.json", "not a JSON text file"),
        (lambda d: write_config(d, [1, 2, 3]), "JSON list, not a config object"),
        (lambda d: write_config(d, {"hidden_size": 8}), "no 'model_type'"),
        (lambda d: write_config(d, {"model_type": "no_such_arch"}), "unknown to transformers"),
        (lambda d: write_config(d, {"model_type": "t5"}), "not a causal language model"),
        (lambda d: write_config(d, {"model_type": "vit"}), "not a causal language model"),
        (lambda d: write_config(d, {**MIXTRAL, "num_experts_per_tok": 9}), "larger than num_local_experts = 8"),
        (lambda d: write_config(d, {**MIXTRAL, "num_hidden_layers": 0}), "num_hidden_layers = 0"),
        (lambda d: write_config(d, {**MIXTRAL, "num_local_experts": 0}), "num_local_experts = 0"),
        (lambda d: write_config(d, {**MIXTRAL, "num_experts_per_tok": 0}), "num_experts_per_tok = 0"),
        (lambda d: write_config(d, {**MIXTRAL, "num_key_value_heads": 5}), "not a multiple"),
        (lambda d: write_config(d, {**MIXTRAL, "hidden_size": "big"}), "transformers rejects this config"),
        (
            lambda d: write_config(
                d, json.loads((CONFIGS / "deepseek-v2-lite.json").read_text()) | {"n_group": 5, "topk_group": 1}
            ),
            "does not divide",
        ),
        (
            lambda d: write_config(
                d,
                {
                    k: v
                    for k, v in json.loads((CONFIGS / "deepseek-v2-lite.json").read_text()).items()
                    if k != "num_experts_per_tok"
                },
            ),
            "num_experts_per_tok is missing",
        ),
    ],
    ids=[
        "missing-file",
        "dir-without-config",
        "not-json",
        "binary",
        "json-list",
        "no-model-type",
        "unknown-model-type",
        "t5",
        "vit",
        "top-k-above-experts",
        "zero-layers",
        "zero-experts",
        "zero-top-k",
        "kv-heads",
        "wrong-type",
        "expert-groups",
        "missing-top-k",
    ],
)
def test_bad_input_is_a_one_line_user_error(tmp_path: Path, setup, expected: str):
    spec = setup(tmp_path)
    with pytest.raises(UserError) as error:
        load_config(spec)
    message = str(error.value)
    assert expected in message
    assert "\n" not in message


def test_empty_spec_is_rejected():
    with pytest.raises(UserError, match="no model given"):
        load_config("  ")
