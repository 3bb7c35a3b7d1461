"""load_offloaded(): both checkpoint layouts, shards, mmap store, the local hub cache, and every broken input."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_checks import TOLERANCE, copy_is_asynchronous, logits
from offload_models import build, llama_config, mixtral_config, prompt, qwen2_moe_config, save_fused, save_original
from safetensors import safe_open
from safetensors.torch import save_file

from moe_tui import fit
from moe_tui.errors import UserError
from moe_tui.offload import OffloadConfig, load_offloaded
from moe_tui.offload import loader as offload_loader
from moe_tui.offload import memory as offload_memory


@pytest.fixture(scope="module")
def mixtral():
    """A small Mixtral and its logits on a fixed prompt."""
    model = build(mixtral_config(experts=4), seed=31)
    return model, logits(model, prompt(batch=2, length=7))


@pytest.mark.parametrize(
    ("writer", "layout"),
    [
        (lambda m, d: save_original(m, d), "original"),
        (lambda m, d: save_original(m, d, shard_size="60KB"), "original"),
        (lambda m, d: save_fused(m, d), "fused"),
        (lambda m, d: save_fused(m, d, shards=3), "fused"),
    ],
    ids=["original", "original-sharded", "fused", "fused-sharded"],
)
def test_both_layouts_load_to_the_same_logits(mixtral, tmp_path: Path, writer, layout: str) -> None:
    model, expected = mixtral
    directory = writer(model, tmp_path / "ckpt")
    stages: list[tuple[str, int, int]] = []
    om = load_offloaded(directory, OffloadConfig(cache_size=2, prefetch=1), progress=lambda *a: stages.append(a))
    assert om.load_info["layout"] == layout
    assert (logits(om.model, prompt(batch=2, length=7)) - expected).abs().max().item() <= TOLERANCE
    names = [stage for stage, _, _ in stages]
    assert {"reading checkpoint", "loading weights", "packing experts"} <= set(names)
    packing = [(done, total) for stage, done, total in stages if stage == "packing experts"]
    assert packing[0] == (0, 12) and packing[-1] == (12, 12)  # one step per expert, streamed
    assert type(om.model.model.layers[0].mlp.experts).__name__ == "OffloadedExperts"


def test_generation_after_loading_matches_the_original_model(mixtral, tmp_path: Path) -> None:
    model, _ = mixtral
    om = load_offloaded(save_original(model, tmp_path / "ckpt"), OffloadConfig(cache_size=1, prefetch=2))
    ids = prompt(batch=1, length=5)
    with torch.no_grad():
        expected = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
        got = om.model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(expected, got)


def test_mmap_store_and_saved_quantized_store(mixtral, tmp_path: Path, monkeypatch) -> None:
    model, expected = mixtral
    directory = save_fused(model, tmp_path / "ckpt")
    settings = {"cache_size": 2, "store": "mmap", "expert_bits": 4, "group_size": 16, "quant_cache_dir": tmp_path / "q"}
    first = load_offloaded(directory, OffloadConfig(**settings))
    assert first.memory()["slow_tier"] == "mmap" and first.load_info["store"] == "built"
    saved = Path(first.load_info["store_dir"])
    assert (saved / "experts.bin").stat().st_size == first.memory()["slow_tier_bytes"]
    ids = prompt(batch=2, length=7)
    quantized = logits(first.model, ids)
    assert 0 < (quantized - expected).abs().max().item() < 0.5
    monkeypatch.setattr("moe_tui.offload.quant.quantize_matrix", lambda *a, **k: pytest.fail("quantized again"))
    stages: list[tuple[str, int, int]] = []
    second = load_offloaded(directory, OffloadConfig(**settings), progress=lambda *a: stages.append(a))
    assert second.load_info["store"] == "reused"
    assert torch.equal(logits(second.model, ids), quantized)
    layers = len(second.moe.layers)  # a mapped store reads nothing: its stage is done at once
    assert [a for a in stages if a[0] == "loading saved expert store"] == [
        ("loading saved expert store", layers, layers)
    ]
    ram = load_offloaded(directory, OffloadConfig(**{**settings, "store": "ram"}))
    assert ram.load_info["store"] == "reused" and torch.equal(logits(ram.model, ids), quantized)


def test_the_predicted_host_memory_counts_what_a_cpu_run_allocates_after_loading(mixtral, tmp_path: Path) -> None:
    """On a CPU the slots and an unfused format's dequantization workspace are host memory too; they are allocated
    once quantizing's temporaries are gone, so the peak is the larger of the two, not their sum."""
    model, _ = mixtral
    directory = save_fused(model, tmp_path / "ckpt")
    settings = OffloadConfig(cache_size=2, device="cpu", expert_bits=2, group_size=16, quant_cache_dir=tmp_path / "q")
    first = load_offloaded(directory, settings)
    second = load_offloaded(directory, settings)
    assert (first.load_info["store"], second.load_info["store"]) == ("built", "reused")
    with safe_open(str(directory / "model.safetensors"), "pt") as handle:
        resident = sum(handle.get_tensor(k).nbytes for k in handle.keys() if ".experts." not in k)  # noqa: SIM118
    memory = second.memory()
    assert memory["workspace_bytes"] > 0  # 2 bits compute through HQQ's unpacking
    running = sum(memory["cache_size"]) * memory["expert_bytes"] + memory["workspace_bytes"]
    base = resident + memory["slow_tier_bytes"]
    assert second.load_info["predicted_host_bytes"] == base + running
    transient = second.format.pack_transient_bytes
    assert first.load_info["predicted_host_bytes"] == base + max(transient, running)


def test_a_model_with_dense_layers_and_shared_experts_loads(tmp_path: Path) -> None:
    model = build(qwen2_moe_config(), seed=32)
    ids = prompt(batch=1, length=6)
    for directory in (save_original(model, tmp_path / "a"), save_fused(model, tmp_path / "b")):
        om = load_offloaded(directory, OffloadConfig(cache_size=3))
        assert (logits(om.model, ids) - logits(model, ids)).abs().max().item() <= TOLERANCE


def test_a_hub_id_resolves_only_through_the_local_cache(mixtral, tmp_path: Path, monkeypatch) -> None:
    model, expected = mixtral
    cache = tmp_path / "hub"
    snapshot = cache / "models--acme--tiny-mixtral" / "snapshots" / "0123abcd"
    save_original(model, snapshot)
    (cache / "models--acme--tiny-mixtral" / "refs").mkdir()
    (cache / "models--acme--tiny-mixtral" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    om = load_offloaded("acme/tiny-mixtral", OffloadConfig(cache_size=2))
    assert (logits(om.model, prompt(batch=2, length=7)) - expected).abs().max().item() <= TOLERANCE
    with pytest.raises(UserError, match="neither a model directory nor a model in the local Hugging Face cache"):
        load_offloaded("acme/not-downloaded", OffloadConfig())
    with pytest.raises(UserError, match=re.escape("fetch it first: hf download acme/not-downloaded)")):
        load_offloaded("acme/not-downloaded", OffloadConfig())
    for path in ("./models/mixtral", "~/models/mixtral", "/srv/models/mixtral", "mixtral-dir"):
        with pytest.raises(UserError, match=re.escape("(a hub id, owner/name, is looked up there)")):
            load_offloaded(path, OffloadConfig())


def test_the_store_cache_knows_a_checkpoint_by_its_contents_not_its_path(mixtral, tmp_path: Path) -> None:
    # Two snapshots of one hub model share their blobs (files named by the sha256 of their bytes): the second
    # reuses the first's quantized store. A shard rewritten with other tensors is never taken for the old one.
    model, _ = mixtral
    original = save_original(model, tmp_path / "written")
    blobs = tmp_path / "hub" / "blobs"
    blobs.mkdir(parents=True)
    snapshots = [tmp_path / "hub" / "snapshots" / revision for revision in ("aaaa", "bbbb")]
    for file in original.iterdir():
        blob = blobs / hashlib.sha256(file.read_bytes()).hexdigest()
        blob.write_bytes(file.read_bytes())
        for snapshot in snapshots:
            snapshot.mkdir(parents=True, exist_ok=True)
            (snapshot / file.name).symlink_to(blob)
    settings = {"cache_size": 2, "expert_bits": 4, "group_size": 16, "quant_cache_dir": tmp_path / "q"}
    first = load_offloaded(snapshots[0], OffloadConfig(**settings))
    second = load_offloaded(snapshots[1], OffloadConfig(**settings))
    assert (first.load_info["store"], second.load_info["store"]) == ("built", "reused")
    assert first.load_info["store_dir"] == second.load_info["store_dir"]

    rewrite(original / "model.safetensors", lambda tensors: tensors.update({"extra": torch.zeros(1)}))
    copied = load_offloaded(original, OffloadConfig(**settings))
    assert copied.load_info["store"] == "built" and copied.load_info["store_dir"] != first.load_info["store_dir"]


# ----------------------------------------------------------------------------------------------- broken input
def rewrite(path: Path, change) -> None:
    """Rewrite one safetensors file with ``change(tensors)`` applied."""
    with safe_open(str(path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    change(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


@pytest.fixture()
def checkpoint(mixtral, tmp_path: Path) -> Path:
    """A fresh single-file original-layout checkpoint to break."""
    return save_original(mixtral[0], tmp_path / "ckpt")


@pytest.fixture()
def no_heavy_work(monkeypatch):
    """Fail the test if weights start loading (every check must come first)."""
    monkeypatch.setattr(offload_loader, "_load_resident", lambda *a, **k: pytest.fail("heavy work started"))


def test_missing_expert_tensor(checkpoint: Path, no_heavy_work) -> None:
    key = "model.layers.2.block_sparse_moe.experts.3.w2.weight"
    rewrite(checkpoint / "model.safetensors", lambda t: t.pop(key))
    with pytest.raises(UserError, match=f"missing the expert tensor {key}"):
        load_offloaded(checkpoint, OffloadConfig())


def test_expert_tensor_with_a_wrong_shape(checkpoint: Path, no_heavy_work) -> None:
    key = "model.layers.1.block_sparse_moe.experts.0.w1.weight"
    rewrite(checkpoint / "model.safetensors", lambda t: t.update({key: torch.zeros(40, 47)}))
    with pytest.raises(UserError, match=rf"{key} in model.safetensors has shape \[40, 47\], expected \[40, 48\]"):
        load_offloaded(checkpoint, OffloadConfig())


def test_fused_expert_tensor_with_a_wrong_shape(mixtral, tmp_path: Path, no_heavy_work) -> None:
    directory = save_fused(mixtral[0], tmp_path / "fused")
    key = "model.layers.0.mlp.experts.down_proj"
    rewrite(directory / "model.safetensors", lambda t: t.update({key: torch.zeros(3, 48, 40)}))
    with pytest.raises(UserError, match=r"down_proj in model.safetensors has shape \[3, 48, 40\]"):
        load_offloaded(directory, OffloadConfig())


def test_missing_non_expert_tensor(checkpoint: Path, no_heavy_work) -> None:
    rewrite(checkpoint / "model.safetensors", lambda t: t.pop("model.layers.1.self_attn.k_proj.weight"))
    with pytest.raises(UserError, match=re.escape("missing the tensor model.layers.1.self_attn.k_proj.weight")):
        load_offloaded(checkpoint, OffloadConfig())


def test_a_refusal_after_the_bars_started_takes_them_off_the_live_display_first(
    checkpoint: Path, no_heavy_work, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal, the error line the CLI prints next must come under the bars, not be drawn over by them."""
    import io

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr("sys.stderr", screen)
    rewrite(checkpoint / "model.safetensors", lambda t: t.pop("model.norm.weight"))
    with pytest.raises(UserError, match=re.escape("missing the tensor model.norm.weight")):
        load_offloaded(checkpoint, OffloadConfig())
    assert "reading checkpoint" in screen.getvalue()  # its bar was drawn, unfinished
    assert screen.getvalue().rstrip().endswith("\x1b[?25h")  # and the live display ended: the cursor is back


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupted_safetensors(checkpoint: Path, damage: str, no_heavy_work) -> None:
    path = checkpoint / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-1000] if damage == "truncated" else b"\x20\x00\x00\x00\x00\x00\x00\x00" + b"x" * 64)
    with pytest.raises(UserError, match=re.escape("model.safetensors is not a readable safetensors file")):
        load_offloaded(checkpoint, OffloadConfig())


def test_index_naming_a_missing_shard(mixtral, tmp_path: Path, no_heavy_work) -> None:
    directory = save_fused(mixtral[0], tmp_path / "fused", shards=2)
    (directory / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(UserError, match=re.escape("refers to model-00002-of-00002.safetensors, which is missing")):
        load_offloaded(directory, OffloadConfig())


def test_directories_that_are_not_checkpoints(tmp_path: Path, no_heavy_work) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=re.escape("has no config.json")):
        load_offloaded(tmp_path / "empty", OffloadConfig())
    mixtral_config().save_pretrained(tmp_path / "no-weights")
    with pytest.raises(UserError, match=re.escape("has no model.safetensors")):
        load_offloaded(tmp_path / "no-weights", OffloadConfig())
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match="is not a directory"):
        load_offloaded(tmp_path / "file.txt", OffloadConfig())


def test_a_dense_checkpoint_is_refused(tmp_path: Path, no_heavy_work) -> None:
    directory = save_original(build(llama_config()), tmp_path / "llama")
    with pytest.raises(UserError, match="not a Mixture-of-Experts model"):
        load_offloaded(directory, OffloadConfig())


def test_an_unreadable_config_is_refused(checkpoint: Path, no_heavy_work) -> None:
    (checkpoint / "config.json").write_text("{ not json")
    with pytest.raises(UserError, match=r"config\.json is not valid JSON"):
        load_offloaded(checkpoint, OffloadConfig())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"cache_size": 5}, "cache size 5 is out of range"), ({"prefetch": 9}, "prefetch 9 is more than")],
)
def test_settings_beyond_the_model_are_refused_before_loading(checkpoint: Path, kwargs, message, no_heavy_work):
    with pytest.raises(UserError, match=message):
        load_offloaded(checkpoint, OffloadConfig(**kwargs))


def test_not_enough_memory_is_refused_before_loading(mixtral, checkpoint: Path, monkeypatch, no_heavy_work) -> None:
    # On a CPU one RAM holds everything: resident weights, the store (3 layers x 4 fp32 experts), the slots, the
    # KV cache (the model's 256-token limit), a prefill chunk's activations and the margin.
    model = mixtral[0]
    expert = 3 * 48 * 40 * 4
    experts = {id(p) for layer in model.model.layers for p in layer.mlp.experts.parameters()}
    resident = sum(p.numel() for p in model.parameters() if id(p) not in experts) * 4
    costs = fit.TokenCosts.of(model.config, 4, 40)

    def need(k: int) -> int:
        return fit.fast_tier_need(resident, 3 * k * expert, 0, costs, 256, "cpu", store=3 * 4 * expert).total

    monkeypatch.setattr(offload_memory, "free_bytes", lambda device: need(3))
    with pytest.raises(UserError, match=r"what would fit: cache size 3, or --store mmap"):
        load_offloaded(checkpoint, OffloadConfig(cache_size=4))
    monkeypatch.setattr(offload_memory, "free_bytes", lambda device: need(1) - 3 * 4 * expert)
    with pytest.raises(
        UserError,
        match=r"expert store 270.0 KiB, .* short; what would fit: .*, or --store mmap \(the experts stay in a file\)",
    ):
        load_offloaded(checkpoint, OffloadConfig(cache_size=1))


def test_weights_saved_without_index_metadata_still_load(mixtral, tmp_path: Path) -> None:
    directory = save_fused(mixtral[0], tmp_path / "fused", shards=2)
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    del index["metadata"]
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    om = load_offloaded(directory, OffloadConfig(cache_size=4))
    assert (logits(om.model, prompt(batch=2, length=7)) - mixtral[1]).abs().max().item() <= TOLERANCE


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loading_onto_cuda_uses_pinned_memory_and_gpu_slots(mixtral, tmp_path: Path) -> None:
    model, expected = mixtral
    om = load_offloaded(save_original(model, tmp_path / "ckpt"), OffloadConfig(cache_size=2, device="cuda"))
    assert om.memory()["slow_tier"] == "pinned" and copy_is_asynchronous(om.store.row(0, 0))
    assert all(cache.slots.is_cuda for cache in om.caches)
    assert (logits(om.model, prompt(batch=2, length=7)) - expected).abs().max().item() <= 1e-4


def test_tied_embeddings_are_tied_again_after_loading(tmp_path: Path) -> None:
    config = mixtral_config()
    config.tie_word_embeddings = True
    model = build(config, seed=33)
    om = load_offloaded(save_original(model, tmp_path / "tied"), OffloadConfig(cache_size=2))
    assert om.model.lm_head.weight is om.model.model.embed_tokens.weight
    ids = prompt(batch=1, length=5)
    assert (logits(om.model, ids) - logits(model, ids)).abs().max().item() <= TOLERANCE


def test_two_threads_can_import_the_engine_at_once() -> None:
    """The app imports the engine in its loading worker while the model picker's worker may be importing it too:
    in a fresh interpreter, two threads importing two of its modules together both succeed (they failed with
    "partially initialized module" while the package imported its own submodules)."""
    code = """
import importlib, threading, time
failures = []
def load(name):
    try:
        importlib.import_module(name)
    except ImportError as error:
        failures.append(f"{name}: {error}")
threads = [threading.Thread(target=load, args=(name,)) for name in ("moe_tui.offload.arch", "moe_tui.offload.loader")]
for thread in threads:
    thread.start()
    time.sleep(0.1)  # the second starts while the first is importing (torch alone takes seconds)
for thread in threads:
    thread.join()
print(failures)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("key", "dtype", "stored"),
    [
        ("model.layers.1.block_sparse_moe.experts.3.w2.weight", torch.int8, "I8"),  # an expert
        ("model.layers.0.self_attn.q_proj.weight", torch.int32, "I32"),  # a resident weight
    ],
)
def test_a_weight_stored_as_integers_is_refused(
    checkpoint: Path, no_heavy_work, key: str, dtype: torch.dtype, stored: str
) -> None:
    """An integer tensor where the model has a float one used to load as its raw numbers, answering garbage."""
    rewrite(checkpoint / "model.safetensors", lambda t: t.update({key: t[key].to(dtype)}))
    message = f"checkpoint tensor {key} in model.safetensors is stored as {stored}, not as a floating-point type"
    with pytest.raises(UserError, match=re.escape(message)):
        load_offloaded(checkpoint, OffloadConfig())
