"""FP8 checkpoints with block scales load dequantized: the same logits as the same weights stored plainly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from offload_models import build, mixtral_config, prompt, save_original
from safetensors.torch import load_file, save_file

from moe_tui.errors import UserError
from moe_tui.offload import OffloadConfig, load_offloaded

BLOCK = (16, 16)


def fp8_quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-scaled float8: values (same shape) and one float32 scale per BLOCK, as FP8 releases store them."""
    n, k = weight.shape
    rows, cols = -(-n // BLOCK[0]), -(-k // BLOCK[1])
    padded = torch.zeros(rows * BLOCK[0], cols * BLOCK[1])
    padded[:n, :k] = weight.float()
    blocks = padded.view(rows, BLOCK[0], cols, BLOCK[1])
    scale = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12) / 448.0
    values = (blocks / scale[:, None, :, None]).view_as(padded)[:n, :k].to(torch.float8_e4m3fn)
    return values, scale


def is_quantized_in_fp8_releases(key: str, tensor: torch.Tensor) -> bool:
    """Linear weights are FP8 there; embeddings, norms, routers and the head stay in 16 bits."""
    return (
        tensor.dim() == 2
        and key.endswith(".weight")
        and "embed" not in key
        and "lm_head" not in key
        and ".gate." not in key
    )


def write_checkpoints(tmp_path: Path) -> tuple[Path, Path]:
    """The same model as an FP8 checkpoint and as a plain one holding the FP8 weights dequantized."""
    config = mixtral_config(experts=4, hidden=64, intermediate=48, layers=2)
    plain = save_original(build(config, seed=11), tmp_path / "source")
    fp8_dir, reference_dir = tmp_path / "fp8", tmp_path / "dequantized"
    for directory in (fp8_dir, reference_dir):
        directory.mkdir()
    tensors = load_file(str(plain / "model.safetensors"))
    quantized, dequantized = {}, {}
    for key, tensor in tensors.items():
        if is_quantized_in_fp8_releases(key, tensor):
            values, scale = fp8_quantize(tensor)
            quantized[key], quantized[key + "_scale_inv"] = values, scale
            spread = scale.repeat_interleave(BLOCK[0], 0)[: tensor.shape[0]].repeat_interleave(BLOCK[1], 1)
            dequantized[key] = values.float() * spread[:, : tensor.shape[1]]
        else:
            quantized[key] = dequantized[key] = tensor
    save_file(quantized, str(fp8_dir / "model.safetensors"), metadata={"format": "pt"})
    save_file(dequantized, str(reference_dir / "model.safetensors"), metadata={"format": "pt"})
    data = json.loads((plain / "config.json").read_text())
    (reference_dir / "config.json").write_text(json.dumps(data))
    data["quantization_config"] = {
        "quant_method": "fp8",
        "weight_block_size": list(BLOCK),
        "activation_scheme": "dynamic",
    }
    (fp8_dir / "config.json").write_text(json.dumps(data))
    return fp8_dir, reference_dir


@pytest.mark.parametrize("bits", [None, 4])
def test_an_fp8_checkpoint_loads_as_its_dequantized_weights(tmp_path: Path, bits) -> None:
    fp8_dir, reference_dir = write_checkpoints(tmp_path)
    settings = OffloadConfig(cache_size=2, prefetch=1, expert_bits=bits, group_size=16, dtype="float32")
    from_fp8 = load_offloaded(fp8_dir, settings, progress=lambda *_: None)
    reference = load_offloaded(reference_dir, settings, progress=lambda *_: None)
    ids = prompt(batch=2, length=7)
    with torch.no_grad():
        assert torch.equal(from_fp8.model(ids).logits, reference.model(ids).logits)
    for layer in range(2):
        for expert in range(4):
            assert torch.equal(from_fp8.store.row(layer, expert), reference.store.row(layer, expert))


def test_fp8_tensors_without_their_scales_are_refused_before_loading(tmp_path: Path) -> None:
    fp8_dir, _ = write_checkpoints(tmp_path)
    tensors = load_file(str(fp8_dir / "model.safetensors"))
    dropped = next(key for key in tensors if key.endswith("w1.weight_scale_inv"))
    del tensors[dropped]
    save_file(tensors, str(fp8_dir / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"the scales of the FP8 tensor .*w1\.weight .* is missing"):
        load_offloaded(fp8_dir, OffloadConfig(cache_size=2), progress=lambda *_: None)
