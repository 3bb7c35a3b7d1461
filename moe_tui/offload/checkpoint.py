"""Reading a safetensors checkpoint lazily: which tensor is in which shard, its shape, and one expert at a time.

Only the headers are read when a checkpoint is opened, so every problem (missing file, corrupted header,
missing expert tensor, wrong shape) is found before the heavy work starts. Both expert layouts are read:
the original one (one tensor per expert and projection, e.g. Mixtral's ``block_sparse_moe.experts.E.w1``)
and the fused transformers-5 one (``mlp.experts.gate_up_proj`` [E, 2I, H] and ``down_proj`` [E, H, I]).
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from torch import Tensor

from moe_tui.errors import UserError
from moe_tui.offload.arch import MoEModel

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class Checkpoint:
    """The tensors of a checkpoint directory, opened lazily (use as a context manager)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._files = self._shard_files(directory)
        self._stack = ExitStack()
        self._handles: dict[str, Any] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.shard_of: dict[str, str] = {}
        from safetensors import SafetensorError, safe_open

        for name in sorted(set(self._files.values()) | set(self._files_without_index())):
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
                self.shapes[key] = tuple(handle.get_slice(key).get_shape())
                self.shard_of[key] = name
        for key, name in self._files.items():
            if key not in self.shard_of:
                self.close()
                raise UserError(f"{directory / INDEX_FILE} lists {key} in {name}, but that file does not contain it")

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
        """One whole tensor."""
        return self._handles[self.shard_of[key]].get_tensor(key)

    def row(self, key: str, index: int) -> Tensor:
        """``tensor(key)[index]`` reading only that slice."""
        return self._handles[self.shard_of[key]].get_slice(key)[index]

    # ----------------------------------------------------------------- experts
    def expert_layout(self, moe: MoEModel) -> str:
        """``"fused"`` or ``"original"``, after checking that every expert tensor exists with the right shape."""
        first = moe.layers[0].decoder_index
        fused = moe.family.fused_keys(first)[0] in self.shapes
        original = moe.family.original_keys(first, 0)[0] in self.shapes
        if not fused and not original:
            raise UserError(
                f"{self.directory} has no expert weights for MoE layer {first}: expected "
                f"{moe.family.fused_keys(first)[0]} or {moe.family.original_keys(first, 0)[0]}"
            )
        layout = "fused" if fused else "original"
        e, i, h = moe.num_experts, moe.intermediate_size, moe.hidden_size
        for moe_layer in moe.layers:
            if layout == "fused":
                gate_up, down = moe.family.fused_keys(moe_layer.decoder_index)
                self._expect(gate_up, (e, 2 * i, h))
                self._expect(down, (e, h, i))
                continue
            for expert in range(e):
                for key, shape in zip(
                    moe.family.original_keys(moe_layer.decoder_index, expert), moe.expert_shapes, strict=True
                ):
                    self._expect(key, shape)
        return layout

    def expert(self, moe: MoEModel, layout: str, decoder_index: int, expert: int) -> tuple[Tensor, Tensor, Tensor]:
        """One expert's gate (I, H), up (I, H) and down (H, I) weights, read from the shards."""
        if layout == "fused":
            gate_up_key, down_key = moe.family.fused_keys(decoder_index)
            gate_up = self.row(gate_up_key, expert)
            i = moe.intermediate_size
            return gate_up[:i], gate_up[i:], self.row(down_key, expert)
        gate, up, down = moe.family.original_keys(decoder_index, expert)
        return self.tensor(gate), self.tensor(up), self.tensor(down)

    def _expect(self, key: str, shape: tuple[int, ...]) -> None:
        if key not in self.shapes:
            raise UserError(f"checkpoint {self.directory} is missing the expert tensor {key}")
        if self.shapes[key] != tuple(shape):
            raise UserError(
                f"checkpoint tensor {key} in {self.shard_of[key]} has shape {list(self.shapes[key])}, "
                f"expected {list(shape)} from the model config"
            )

    # ----------------------------------------------------------------- files
    @staticmethod
    def _shard_files(directory: Path) -> dict[str, str]:
        index = directory / INDEX_FILE
        if not index.is_file():
            return {}
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise UserError(f"{index} is not a valid safetensors index ({error})") from None
        for name in set(weight_map.values()):
            if not (directory / name).is_file():
                raise UserError(f"{index} refers to {name}, which is missing from {directory}")
        return dict(weight_map)

    def _files_without_index(self) -> list[str]:
        if self._files:
            return []
        if (self.directory / SINGLE_FILE).is_file():
            return [SINGLE_FILE]
        raise UserError(f"{self.directory} has no {SINGLE_FILE} or {INDEX_FILE} (only safetensors checkpoints load)")
