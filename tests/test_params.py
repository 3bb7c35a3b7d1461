"""Parameter breakdown: exact totals and active counts, checked against published figures and an independent
calculation from each config's numbers (architecture formulas written out here, not the program's walk)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

from moe_tui import precision
from moe_tui.errors import UserError
from moe_tui.params import build_tree, expert_weight_shapes, load_config, routed_expert_bytes, tree_from_model
from moe_tui.params.build import meta_model
from moe_tui.params.report import breakdown, to_json
from moe_tui.params.tree import ParamNode

CONFIGS = Path(__file__).resolve().parent.parent / "samples" / "configs"
SHIPPED = sorted(CONFIGS.glob("*.json"))


def expected_counts(raw: dict) -> dict[str, int]:
    """Parameter counts from a config's numbers, by the published architecture formulas."""
    mt = raw["model_type"]
    hidden, vocab, layers = raw["hidden_size"], raw["vocab_size"], raw["num_hidden_layers"]
    heads = raw["num_attention_heads"]
    kv_heads = raw.get("num_key_value_heads") or heads
    head_dim = raw.get("head_dim") or hidden // heads
    q_out, kv_out = heads * head_dim, kv_heads * head_dim

    if mt in ("deepseek_v2", "deepseek_v3"):
        qk = raw["qk_nope_head_dim"] + raw["qk_rope_head_dim"]
        q_rank = raw.get("q_lora_rank")
        q = hidden * heads * qk if q_rank is None else hidden * q_rank + q_rank + q_rank * heads * qk
        kv_rank = raw["kv_lora_rank"]
        kv = hidden * (kv_rank + raw["qk_rope_head_dim"]) + kv_rank
        kv += kv_rank * heads * (raw["qk_nope_head_dim"] + raw["v_head_dim"])
        attention = q + kv + heads * raw["v_head_dim"] * hidden
    else:
        attention = 2 * hidden * q_out + 2 * hidden * kv_out
        if mt in ("qwen2_moe", "glm4_moe"):
            attention += q_out + 2 * kv_out  # q/k/v biases
        if mt in ("phimoe", "gpt_oss"):
            attention += q_out + 2 * kv_out + hidden  # q/k/v/o biases
        if mt == "gpt_oss":
            attention += heads  # attention sinks
        if mt == "qwen3_moe":
            attention += 2 * head_dim  # per-head q/k norms
        if mt == "olmoe":
            attention += q_out + kv_out  # q/k norms over all heads

    norm = 2 * hidden if mt == "phimoe" else hidden  # LayerNorm has a bias
    experts_count = raw.get("num_local_experts") or raw.get("num_experts") or raw.get("n_routed_experts") or 0
    top_k = raw.get("num_experts_per_tok", 0)
    moe_inter = raw.get("moe_intermediate_size") or raw.get("intermediate_size")
    one_expert = 3 * hidden * moe_inter + (2 * moe_inter + hidden if mt == "gpt_oss" else 0)
    router = experts_count * hidden + (experts_count if mt == "gpt_oss" else 0)
    shared = 0
    if mt == "qwen2_moe":
        shared = 3 * hidden * raw["shared_expert_intermediate_size"] + hidden
    if mt in ("deepseek_v2", "deepseek_v3", "glm4_moe"):
        shared = 3 * hidden * raw["n_shared_experts"] * raw["moe_intermediate_size"]
    dense_layers = raw.get("first_k_dense_replace", 0) if experts_count else layers
    moe_layers = layers - dense_layers

    embeddings = vocab * hidden
    lm_head = 0 if raw.get("tie_word_embeddings") else vocab * hidden + (vocab if raw.get("lm_head_bias") else 0)
    counts = {
        "embeddings": embeddings,
        "attention": layers * attention,
        "mlp": dense_layers * 3 * hidden * raw["intermediate_size"],
        "router": moe_layers * router,
        "experts": moe_layers * experts_count * one_expert,
        "shared_experts": moe_layers * shared,
        "norm": layers * 2 * norm + norm,
        "lm_head": lm_head,
    }
    counts["total"] = sum(counts.values())
    counts["active"] = counts["total"] - moe_layers * (experts_count - top_k) * one_expert
    counts["one_expert"] = one_expert
    return counts


def raw_config(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


def tiny(model_type: str, **fields) -> AutoConfig:
    """A small config of ``model_type`` (plus the dict it came from, for the formula)."""
    config = AutoConfig.for_model(model_type, **fields)
    config.raw = {"model_type": model_type, **fields}
    return config


TINY = {
    "gpt_oss": dict(
        hidden_size=64,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_local_experts=6,
        num_experts_per_tok=2,
        vocab_size=120,
    ),
    "deepseek_v3": dict(
        hidden_size=64,
        intermediate_size=96,
        moe_intermediate_size=32,
        num_hidden_layers=5,
        first_k_dense_replace=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_routed_experts=8,
        n_shared_experts=1,
        n_group=2,
        topk_group=1,
        num_experts_per_tok=3,
        q_lora_rank=24,
        kv_lora_rank=16,
        qk_nope_head_dim=8,
        qk_rope_head_dim=8,
        v_head_dim=8,
        vocab_size=100,
    ),
    "mixtral": dict(
        hidden_size=32,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        vocab_size=1000,
        tie_word_embeddings=True,
    ),
}


def test_mixtral_8x7b_published_figures():
    tree = build_tree(load_config(CONFIGS / "mixtral-8x7b.json"))
    assert tree.total == 46_702_792_704
    assert tree.active == 12_879_925_248
    assert sum(node.total for node in tree.find_all("attention")) == 1_342_177_280
    assert sum(node.total for node in tree.find_all("moe")) == 45_098_205_184


def test_llama_2_13b_published_figures():
    tree = build_tree(load_config(CONFIGS / "llama-2-13b.json"))
    assert tree.total == 13_015_864_320
    assert tree.active == tree.total
    parts = breakdown(tree)
    assert parts["attention"].total == 4_194_304_000
    assert parts["mlp"].total == 8_493_465_600
    assert parts["experts"].total == 0


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_configs_match_independent_formula(path: Path):
    raw = json.loads(path.read_text())
    expected = expected_counts(raw)
    tree = build_tree(load_config(path))
    assert tree.total == expected["total"]
    assert tree.active == expected["active"]
    parts = breakdown(tree)
    for category in ("embeddings", "attention", "mlp", "router", "experts", "shared_experts", "norm", "lm_head"):
        assert parts[category].total == expected[category], category
    assert parts["other"].total == 0
    assert sum(part.total for part in parts.values()) == tree.total
    assert sum(part.active for part in parts.values()) == tree.active


@pytest.mark.parametrize("name", ["mixtral-8x22b", "qwen1.5-moe-a2.7b", "qwen3-30b-a3b", "olmoe-1b-7b", "phi-3.5-moe"])
def test_published_rounded_sizes(name: str):
    """The model cards' headline sizes in billions (total, active), within one unit of the last digit shown
    (cards round or truncate: Qwen3-30B-A3B has 3.35 B active and calls it 3.3 B)."""
    published = {
        "mixtral-8x22b": (141, 39, 1),
        "qwen1.5-moe-a2.7b": (14.3, 2.7, 0.1),
        "qwen3-30b-a3b": (30.5, 3.3, 0.1),
        "olmoe-1b-7b": (6.9, 1.3, 0.1),
        "phi-3.5-moe": (41.9, 6.6, 0.1),
    }
    tree = build_tree(load_config(CONFIGS / f"{name}.json"))
    total, active, unit = published[name]
    assert abs(tree.total / 1e9 - total) < unit
    assert abs(tree.active / 1e9 - active) < unit


def test_deepseek_v2_lite_groups_dense_first_layer_apart():
    tree = build_tree(load_config(CONFIGS / "deepseek-v2-lite.json"))
    groups = [node for node in tree.children if node.kind == "layers"]
    assert [(g.label, g.span) for g in groups] == [("layer 0", (0, 0)), ("layers 1-26 (x26)", (1, 26))]
    assert groups[0].find("experts") is None and groups[0].find("mlp") is not None
    assert groups[1].find("experts").label == "routed experts (64 x 8.65 M, top-6)"
    assert groups[1].find("shared_experts") is not None
    assert groups[1].find("attention").label == "attention (MLA)"
    assert sum(g.total for g in groups) == sum(g.per_copy * g.repeat for g in groups)


def _check_sums(node: ParamNode) -> None:
    assert node.total == node.copies * node.own_params + sum(child.total for child in node.children)
    for child in node.children:
        _check_sums(child)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_tree_children_add_up_and_match_num_parameters(path: Path):
    config = load_config(path)
    tree = build_tree(config)
    _check_sums(tree)
    assert tree.total == meta_model(config).num_parameters()
    assert tree.share_of(tree.total) == 1.0


def test_mixtral_expert_shapes_and_bytes():
    config = load_config(CONFIGS / "mixtral-8x7b.json")
    assert expert_weight_shapes(config) == [(14336, 4096), (14336, 4096), (4096, 14336)]
    assert routed_expert_bytes(config, "bf16") == 2 * 176_160_768
    assert routed_expert_bytes(config, "fp32") == 4 * 176_160_768
    experts = build_tree(config).find("experts")
    assert (experts.repeat, experts.active_repeat, experts.per_copy) == (8, 2, 176_160_768)


@pytest.mark.parametrize("path", [p for p in SHIPPED if "llama" not in p.stem], ids=lambda p: p.stem)
@pytest.mark.parametrize("prec_name", precision.PRECISIONS)
def test_routed_expert_bytes_is_tensors_bytes_of_the_shapes(path: Path, prec_name: str):
    config = load_config(path)
    shapes = expert_weight_shapes(config)
    assert sum(math.prod(shape) for shape in shapes) == expected_counts(json.loads(path.read_text()))["one_expert"]
    matrices = [shape for shape in shapes if len(shape) == 2]
    vectors = [shape for shape in shapes if len(shape) == 1]  # gpt-oss's biases: 16-bit whatever the matrices
    vector_precision = prec_name if prec_name in precision.FLOAT_BYTES else "bf16"
    for group_size in (32, 64, 128):
        assert routed_expert_bytes(config, prec_name, group_size) == precision.tensors_bytes(
            matrices, prec_name, group_size
        ) + precision.tensors_bytes(vectors, vector_precision)


def test_dense_model_has_no_routed_expert():
    with pytest.raises(UserError, match="no routed experts"):
        expert_weight_shapes(load_config(CONFIGS / "llama-2-13b.json"))


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_small_configs_match_formula(model_type: str):
    config = tiny(model_type, **TINY[model_type])
    expected = expected_counts(config.raw)
    tree = build_tree(config)
    assert tree.total == expected["total"] == meta_model(config).num_parameters()
    assert tree.active == expected["active"]
    parts = breakdown(tree)
    for category in ("attention", "mlp", "router", "experts", "shared_experts", "lm_head"):
        assert parts[category].total == expected[category], category


def test_gpt_oss_experts_are_split_from_transposed_fused_tensors_with_biases():
    config = tiny("gpt_oss", **TINY["gpt_oss"])
    hidden, inter = 64, 48
    assert expert_weight_shapes(config) == [
        (hidden, inter),
        (inter,),
        (hidden, inter),
        (inter,),
        (inter, hidden),
        (hidden,),
    ]
    assert build_tree(config).find("router").shapes == ((6, hidden), (6,))
    # bias vectors stay 16-bit when the matrices are quantized
    matrices = precision.tensors_bytes([(hidden, inter), (hidden, inter), (inter, hidden)], "hqq4")
    assert routed_expert_bytes(config, "hqq4") == matrices + 2 * (2 * inter + hidden)


def test_tied_embeddings_are_counted_once():
    config = tiny("mixtral", **TINY["mixtral"])
    tree = build_tree(config)
    lm_head = tree.find("lm_head")
    assert lm_head.total == 0 and "tied" in lm_head.label
    assert tree.find("embeddings").total == 1000 * 32
    assert to_json(tree)["lm_head"]["tied"] is True


def test_per_expert_module_lists_give_the_same_tree_as_fused_tensors():
    """The transformers-4 layout (a ModuleList of expert MLPs) is walked just like the fused 3-D tensors."""
    config = tiny("mixtral", **{**TINY["mixtral"], "tie_word_embeddings": False})
    hidden, inter, count = 32, 40, 4
    with torch.device("meta"):
        model = meta_model(config)
        for layer in model.model.layers:
            experts = torch.nn.ModuleList()
            for _ in range(count):
                expert = torch.nn.Module()
                expert.w1 = torch.nn.Linear(hidden, inter, bias=False)
                expert.w2 = torch.nn.Linear(inter, hidden, bias=False)
                expert.w3 = torch.nn.Linear(hidden, inter, bias=False)
                experts.append(expert)
            layer.mlp.experts = experts
    listed = tree_from_model(model, config)
    fused = build_tree(config)
    assert (listed.total, listed.active) == (fused.total, fused.active)
    node = listed.find("experts")
    assert node.label == "routed experts (4 x 3.84 K, top-2)"
    assert [leaf.name for leaf in node.children] == ["w1", "w2", "w3"]
    assert node.tensor_shapes() == [(inter, hidden), (hidden, inter), (inter, hidden)]


@pytest.mark.parametrize(
    "model_type",
    ["llama", "mistral", "qwen2", "qwen3"],
)
def test_dense_families_have_active_equal_total(model_type: str):
    config = AutoConfig.for_model(
        model_type, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, vocab_size=64
    )
    tree = build_tree(config)
    assert tree.total == meta_model(config).num_parameters()
    assert tree.active == tree.total
    assert tree.find("experts") is None


UNKNOWN = {
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, vocab_size=64),
}


@pytest.mark.parametrize("model_type", sorted(UNKNOWN))
def test_unknown_architecture_reports_total_but_never_guesses_active(model_type: str):
    config = AutoConfig.for_model(model_type, **UNKNOWN[model_type])
    tree = build_tree(config)
    assert tree.total == meta_model(config).num_parameters()
    assert tree.active is None
    assert all(node.active is None for _, node in tree.walk())
    assert f"{model_type!r}" in tree.note and "not derived" in tree.note
    document = to_json(tree)
    assert document["active"] is None and document["active_share"] is None
    assert document["active_note"] == tree.note
    keys = ("embeddings", "attention", "mlp", "router", "experts", "shared_experts", "norms", "lm_head", "other")
    assert sum(document[key]["total"] for key in keys) == tree.total


def test_bytes_follow_precision_formulas():
    tree = build_tree(load_config(CONFIGS / "mixtral-8x7b.json"))
    assert tree.bytes("bf16") == 2 * tree.total
    assert tree.bytes("fp32") == 4 * tree.total
    assert tree.active_bytes("bf16") == 2 * tree.active
    q_proj = tree.find("attention").children[0]
    assert q_proj.name == "q_proj" and q_proj.copies == 32
    assert q_proj.bytes("hqq4", 64) == 32 * precision.matrix_bytes((4096, 4096), "hqq4", 64)
    norm = tree.find("norm")
    assert norm.bytes("hqq2") == 2 * norm.total  # vectors stay 16-bit
    assert norm.bytes("fp32") == 4 * norm.total


def test_json_document_for_mixtral():
    tree = build_tree(load_config(CONFIGS / "mixtral-8x7b.json"))
    document = to_json(tree, source="x", precision="hqq4", group_size=128)
    assert document["total"] == 46_702_792_704 and document["active"] == 12_879_925_248
    assert document["attention"]["total"] == 1_342_177_280
    assert document["moe_blocks"]["total"] == 45_098_205_184
    assert document["experts"]["count"] == 8 and document["experts"]["top_k"] == 2
    assert document["experts"]["moe_layers"] == 32
    assert document["experts"]["per_expert_bytes"] == routed_expert_bytes(tree_config("mixtral-8x7b"), "hqq4", 128)
    assert document["layers"] == [
        {
            "name": "layers 0-31",
            "first": 0,
            "last": 31,
            "count": 32,
            "moe": True,
            "per_layer": 1_451_270_144,
            "per_layer_active": 394_305_536,
            "total": 46_440_644_608,
            "active": 12_617_777_152,
        }
    ]
    assert set(document["bytes"]) == {"fp32", "bf16", "int8", "hqq4", "hqq3", "hqq2"}
    assert document["bytes"]["bf16"]["total"] == 2 * document["total"]
    assert (
        sum(document[key]["total"] for key in ("embeddings", "attention", "router", "experts", "norms", "lm_head"))
        == (document["total"])
    )


def tree_config(name: str):
    return load_config(CONFIGS / f"{name}.json")


# --- any MoE transformers builds -------------------------------------------------------------------------------


def _expected_active(config, experts_field: str, top_k_field: str) -> tuple[int, int]:
    """Total and active parameters counted independently of the tree: every parameter, less the routed experts
    a token does not use (each ``experts`` module holds E experts, top-k of them used)."""
    from moe_tui.params.build import meta_model

    model = meta_model(config)
    total = sum(p.numel() for p in model.parameters())
    routed = sum(p.numel() for name, p in model.named_parameters() if ".experts." in name)
    experts, top_k = getattr(config, experts_field), getattr(config, top_k_field)
    return total, total - routed * (experts - top_k) // experts


@pytest.mark.parametrize(
    ("make", "experts_field"),
    [
        ("JambaConfig", "num_local_experts"),  # MoE every other layer, Mamba and attention layers between
        ("Qwen3NextConfig", "num_experts"),  # a family with no table entry, with a shared expert
        ("Glm4MoeConfig", "n_routed_experts"),
        ("GraniteMoeSharedConfig", "num_local_experts"),
    ],
)
def test_any_moe_transformers_builds_gets_exact_active_parameters(make: str, experts_field: str) -> None:
    import transformers

    config = getattr(transformers, make)(num_hidden_layers=4)
    tree = build_tree(config)
    total, active = _expected_active(config, experts_field, "num_experts_per_tok")
    assert (tree.total, tree.active) == (total, active)


def test_experts_as_parallel_linear_modules_and_inside_attention_are_counted_exactly() -> None:
    # JetMoE: each MoE block keeps its experts as two [E, out, in] tensors beside a router, and its attention
    # holds a mixture of attention experts built the same way.
    from transformers import JetMoeConfig

    config = JetMoeConfig(num_hidden_layers=2)
    tree = build_tree(config)
    model = meta_model(config)
    experts, top_k = config.num_local_experts, config.num_experts_per_tok
    routed = sum(p.numel() for p in model.parameters() if p.dim() == 3 and p.shape[0] == experts)
    total = sum(p.numel() for p in model.parameters())
    assert (tree.total, tree.active) == (total, total - routed * (experts - top_k) // experts)
    attention = tree.find("attention")
    assert "mixture of attention experts" in attention.label and attention.find("experts") is not None


def test_routed_weights_it_cannot_read_leave_active_parameters_underived_and_say_why() -> None:
    from torch import nn
    from transformers import PretrainedConfig

    class Block(nn.Module):  # [E, out, in] weights with no router beside them: which are used is unknown
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(4, 8, 8))

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mlp = nn.Module()
            self.mlp.experts = nn.Linear(8, 8)
            self.mlp.odd = Block()

    class Toy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = nn.Module()
            self.model.layers = nn.ModuleList([Layer()])

    config = PretrainedConfig(num_experts=4, num_experts_per_tok=2)
    config.model_type = "toy"
    tree = tree_from_model(Toy(), config)
    assert tree.active is None and "routed experts are stored where moe-tui does not read them" in tree.note


def test_a_config_without_a_top_k_is_refused_in_one_line() -> None:
    from transformers import DeepseekV2Config

    with pytest.raises(UserError, match="num_experts_per_tok is None"):
        build_tree(DeepseekV2Config(num_hidden_layers=2))


def test_deepseek_v3_matches_its_published_size() -> None:
    # DeepSeek-V3: "671B total parameters, of which 37B are activated for each token" (58 MoE layers of 256
    # routed experts, top-8, one shared expert, three dense first layers; the multi-token-prediction module
    # is not part of the causal LM).
    tree = build_tree(load_config("deepseek-v3"))
    assert round(tree.total / 1e9) == 671 and int(tree.active / 1e9) == 37
    experts = tree.find_all("experts")
    assert sum(node.copies // node.repeat for node in experts) == 58 and experts[0].repeat == 256


@pytest.mark.parametrize(
    ("name", "total", "active_without_embedding", "digits"),
    [
        ("gpt-oss-20b", 20.91, 3.61, 2),  # OpenAI's model card: 20.91 B total, 3.61 B active
        ("granite-3.1-3b-a800m", 3.3, 0.8, 1),  # IBM: 3.3 B total, 800 M active ("A800M")
        ("glm-4.5-air", 106, 12, 0),  # Zhipu: 106 B total, 12 B active
    ],
)
def test_vendor_figures_that_leave_the_embedding_out(
    name: str, total: float, active_without_embedding: float, digits: int
) -> None:
    """These vendors count active parameters without the embedding lookup (a token reads one row of it); the
    tree counts the whole matrix, as Mixtral's published 12.9 B does, so the two differ by exactly it. Cards
    truncate or round to the digits they show."""
    tree = build_tree(load_config(CONFIGS / f"{name}.json"))
    embedding = tree.find("embeddings").total
    shown = 10**digits
    assert int(tree.total / 1e9 * shown) == round(total * shown) or round(tree.total / 1e9, digits) == total
    without = (tree.active - embedding) / 1e9
    assert int(without * shown) == round(active_without_embedding * shown) or round(without, digits) == (
        active_without_embedding
    )
