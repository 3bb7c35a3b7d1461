"""Reading a safetensors checkpoint lazily: which tensor is in which shard, its shape, and one expert at a time.

Only the headers are read when a checkpoint is opened, so every problem (missing file, corrupted header,
missing expert tensor, wrong shape) is found before the heavy work starts. Both expert layouts are read:
the original one (one tensor per expert and projection, e.g. Mixtral's ``block_sparse_moe.experts.E.w1``)
and the fused transformers-5 one (``mlp.experts.gate_up_proj`` [E, 2I, H] and ``down_proj`` [E, H, I]).

FP8 checkpoints with block scales (``quantization_config`` ``fp8`` with ``weight_block_size``, as DeepSeek-V3 and
Qwen3's FP8 releases are published) are read too: every float8 tensor ``X.weight`` comes with
``X.weight_scale_inv`` (one float per block of the weight) and is handed out dequantized,
``weight * scale_inv`` block by block, so the rest of the loader sees ordinary weights.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from moe_tui.errors import UserError
from moe_tui.offload.arch import MoEModel

INDEX_FILE = "model.safetensors.index.json"
SCALE_SUFFIX = "_scale_inv"  # FP8 block scales: ``X.weight_scale_inv`` beside ``X.weight``
MXFP4_SUFFIXES = ("_blocks", "_scales")  # gpt-oss: ``X_blocks`` (packed FP4 pairs) and ``X_scales`` (exponents)
FLOAT_DTYPES = ("BF16", "F16", "F32", "F64")  # safetensors' names of the unquantized weight types
SINGLE_FILE = "model.safetensors"


class Checkpoint:
    """The tensors of a checkpoint directory, opened lazily (use as a context manager)."""

    def __init__(self, directory: Path, fp8_block: tuple[int, int] | None = None, mxfp4: bool = False):
        self.directory = directory
        self.fp8_block = fp8_block
        self.mxfp4_keys: set[str] = set()  # tensors stored as MXFP4 blocks and scales, read dequantized
        self._files, shards = checkpoint_files(directory)
        self._stack = ExitStack()
        self._handles: dict[str, Any] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.shard_of: dict[str, str] = {}
        self.dtypes: dict[str, str] = {}  # safetensors' dtype name of every stored tensor ("BF16", "I8", ...)
        self.fp8_keys: set[str] = set()
        from safetensors import SafetensorError, safe_open

        for name in shards:
            path = directory / name
            try:
                with open(path, "rb"):  # the operating system's own reason (permission, a directory, ...) first
                    pass
            except OSError as error:
                self._stack.close()
                raise UserError(f"cannot read {path}: {error.strerror or error}") from None
            try:
                handle = self._stack.enter_context(safe_open(str(path), framework="pt"))
            except (SafetensorError, OSError) as error:
                self._stack.close()
                raise UserError(f"{path} is not a readable safetensors file ({error})") from None
            self._handles[name] = handle
            for key in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                tensor_slice = handle.get_slice(key)
                self.shapes[key] = tuple(tensor_slice.get_shape())
                self.shard_of[key] = name
                self.dtypes[key] = tensor_slice.get_dtype()
                if tensor_slice.get_dtype().startswith("F8"):
                    self.fp8_keys.add(key)
        for key, name in self._files.items():
            if key not in self.shard_of:
                self.close()
                raise UserError(f"{directory / INDEX_FILE} lists {key} in {name}, but that file does not contain it")
        self._check_fp8_scales()
        if mxfp4:
            self._find_mxfp4()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every shard."""
        self._stack.close()
        self._handles = {}

    def files(self) -> list[Path]:
        """The shard files, sorted."""
        return [self.directory / name for name in sorted(self._handles)]

    def tensor(self, key: str) -> Tensor:
        """One whole tensor (an FP8 one dequantized with its block scales, in float32; an MXFP4 one in bf16)."""
        if key in self.mxfp4_keys:
            return self._mxfp4(key, slice(None))
        value = self._handles[self.shard_of[key]].get_tensor(key)
        if key in self.fp8_keys:
            return _dequantize_fp8(value, self.tensor(key + SCALE_SUFFIX), self.fp8_block or (1, 1))
        return value

    def row(self, key: str, index: int) -> Tensor:
        """``tensor(key)[index]`` reading only that slice (dequantized when it is FP8 or MXFP4)."""
        if key in self.mxfp4_keys:
            return self._mxfp4(key, slice(index, index + 1))[0]
        value = self._handles[self.shard_of[key]].get_slice(key)[index]
        if key in self.fp8_keys:
            scale = self._handles[self.shard_of[key + SCALE_SUFFIX]].get_slice(key + SCALE_SUFFIX)[index]
            return _dequantize_fp8(value, scale, self.fp8_block or (1, 1))
        return value

    def _find_mxfp4(self) -> None:
        """Every ``X_blocks`` [E, R, G, 16] with its ``X_scales`` [E, R, G] is read as ``X`` [E, G * 32, R] (the
        layout transformers' gpt-oss experts use); blocks without their scales are refused."""
        blocks_suffix, scales_suffix = MXFP4_SUFFIXES
        for key in [key for key in self.shapes if key.endswith(blocks_suffix)]:
            name = key.removesuffix(blocks_suffix)
            blocks, scales = self.shapes[key], self.shapes.get(name + scales_suffix)
            if len(blocks) != 4 or scales != blocks[:3]:
                self.close()
                what = "is missing" if scales is None else f"has shape {list(scales)}, expected {list(blocks[:3])}"
                raise UserError(
                    f"checkpoint {self.directory}: the MXFP4 scales of {key} ({name}{scales_suffix}) {what}"
                )
            self.shapes[name] = (blocks[0], blocks[2] * blocks[3] * 2, blocks[1])
            self.shard_of[name] = self.shard_of[key]
            self.mxfp4_keys.add(name)

    def _mxfp4(self, name: str, experts: slice) -> Tensor:
        """Experts ``experts`` of the MXFP4 tensor ``name``, dequantized by transformers' own gpt-oss routine."""
        from transformers.integrations.mxfp4 import convert_moe_packed_tensors

        blocks_suffix, scales_suffix = MXFP4_SUFFIXES
        blocks = self._handles[self.shard_of[name + blocks_suffix]].get_slice(name + blocks_suffix)[experts]
        scales = self._handles[self.shard_of[name + scales_suffix]].get_slice(name + scales_suffix)[experts]
        return convert_moe_packed_tensors(blocks, scales, dtype=torch.bfloat16)

    def _check_fp8_scales(self) -> None:
        """Every FP8 tensor needs its block scales (and a declared block size), or it would load as garbage."""
        if not self.fp8_keys:
            return
        if self.fp8_block is None:
            self.close()
            raise UserError(
                f"{self.directory} holds float8 tensors but its config declares no fp8 weight_block_size: "
                "cannot tell how to scale them"
            )
        rows, cols = self.fp8_block
        for key in sorted(self.fp8_keys):
            *lead, n, k = self.shapes[key]
            expected = (*lead, -(-n // rows), -(-k // cols))
            found = self.shapes.get(key + SCALE_SUFFIX)
            if found != expected:
                self.close()
                what = "is missing" if found is None else f"has shape {list(found)}, expected {list(expected)}"
                raise UserError(
                    f"checkpoint {self.directory}: the scales of the FP8 tensor {key} ({key}{SCALE_SUFFIX}) {what}"
                )

    # ----------------------------------------------------------------- experts
    def expert_layout(self, moe: MoEModel) -> str:
        """``"fused"`` (transformers-5 names), ``"original-fused"`` (an original checkpoint's own fused tensors) or
        ``"original"`` (one tensor per expert), after checking that every expert tensor exists with its shape."""
        first = moe.layers[0].decoder_index
        candidates = {
            "fused": moe.family.fused_keys(first),
            "original-fused": moe.family.original_fused_keys(first),
            "original": moe.family.original_keys(first, 0),
        }
        layout = next((name for name, keys in candidates.items() if keys and keys[0] in self.shapes), None)
        if layout is None:
            expected = " or ".join(keys[0] for keys in candidates.values() if keys)
            raise UserError(f"{self.directory} has no expert weights for MoE layer {first}: expected {expected}")
        e, i, h = moe.num_experts, moe.intermediate_size, moe.hidden_size
        gate_up_shape, down_shape = moe.family.fused_shapes(e, i, h)
        for moe_layer in moe.layers:
            if layout != "original":
                gate_up, down = self._fused_keys(moe, layout, moe_layer.decoder_index)
                self._expect(gate_up, gate_up_shape)
                self._expect(down, down_shape)
                continue
            for expert in range(e):
                keys = moe.family.original_keys(moe_layer.decoder_index, expert) or ()
                for key, shape in zip(keys, moe.expert_shapes, strict=True):
                    self._expect(key, shape)
        return layout

    def expert(self, moe: MoEModel, layout: str, decoder_index: int, expert: int) -> tuple[Tensor, Tensor, Tensor]:
        """One expert's gate (I, H), up (I, H) and down (H, I) weights, read from the shards."""
        if layout != "original":
            gate_up_key, down_key = self._fused_keys(moe, layout, decoder_index)
            return moe.family.split(self.row(gate_up_key, expert), self.row(down_key, expert))
        gate, up, down = moe.family.original_keys(decoder_index, expert) or ()
        return self.tensor(gate), self.tensor(up), self.tensor(down)

    @staticmethod
    def _fused_keys(moe: MoEModel, layout: str, decoder_index: int) -> tuple[str, str]:
        keys = (
            moe.family.fused_keys(decoder_index) if layout == "fused" else moe.family.original_fused_keys(decoder_index)
        )
        assert keys is not None  # the layout was found by these keys
        return keys

    def _expect(self, key: str, shape: tuple[int, ...]) -> None:
        if key not in self.shapes:
            raise UserError(f"checkpoint {self.directory} is missing the expert tensor {key}")
        if self.shapes[key] != tuple(shape):
            raise UserError(
                f"checkpoint tensor {key} in {self.shard_of[key]} has shape {list(self.shapes[key])}, "
                f"expected {list(shape)} from the model config"
            )
        self.check_floating(key)

    def check_floating(self, key: str) -> None:
        """Refuse a weight stored as anything but a floating-point type (or FP8 / MXFP4, read dequantized): an
        integer tensor where the model has a float one would be read as its raw numbers."""
        if key in self.fp8_keys or key in self.mxfp4_keys or self.dtypes[key] in FLOAT_DTYPES:
            return
        raise UserError(
            f"checkpoint tensor {key} in {self.shard_of[key]} is stored as {self.dtypes[key]}, not as a "
            f"floating-point type ({', '.join(FLOAT_DTYPES)}): only unquantized, FP8 and MXFP4 weights load"
        )


def checkpoint_files(directory: Path) -> tuple[dict[str, str], list[str]]:
    """A checkpoint directory's index (tensor name to shard file; empty for a single ``model.safetensors``) and its
    shard files, reading only the index: :class:`UserError` when there is no safetensors checkpoint, the index is
    unreadable or it names a shard that is not there."""
    index = directory / INDEX_FILE
    if not index.is_file():
        if (directory / SINGLE_FILE).is_file():
            return {}, [SINGLE_FILE]
        raise UserError(f"{directory} has no {SINGLE_FILE} or {INDEX_FILE} (only safetensors checkpoints load)")
    try:
        weight_map = dict(json.loads(index.read_text())["weight_map"])
        shards = sorted(set(weight_map.values()))
        if not shards or not all(isinstance(name, str) for name in shards):
            raise ValueError("weight_map must map tensor names to shard file names")
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise UserError(f"{index} is not a valid safetensors index ({error})") from None
    for name in shards:
        if not (directory / name).is_file():
            raise UserError(f"{index} refers to {name}, which is missing from {directory}")
    return weight_map, shards


def _dequantize_fp8(weight: Tensor, scale_inv: Tensor, block: tuple[int, int]) -> Tensor:
    """``weight * scale_inv`` with each scale spread over its block of the last two dimensions, in float32."""
    n, k = weight.shape[-2:]
    scale = scale_inv.float().repeat_interleave(block[0], dim=-2)[..., :n, :]
    return weight.float() * scale.repeat_interleave(block[1], dim=-1)[..., :k]
