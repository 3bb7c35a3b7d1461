"""A KV cache whose full-attention layers grow in blocks instead of copying themselves for every new token.

transformers' ``DynamicLayer`` appends a token's keys and values with ``torch.cat``, so every decoded token
copies each layer's whole cache into a new allocation. On a GPU the caching allocator and the memory's speed
hide it; on a CPU each copy lands in freshly mapped pages (the engine has glibc map large blocks, so that freed
memory goes back) and the cost grows with the conversation: at Mixtral-8x7B's shapes a decoded token took
1.13x as long as with blocks at 2048 tokens of context, 1.21x at 16384 (``benchmarks/kv_growth.py``).
:class:`BlockKVLayer` keeps each layer in a buffer rounded up to whole blocks of :data:`moe_tui.fit.KV_BLOCK`
tokens and writes new tokens in place; it copies only when a block fills. It hands attention the same values (a
view of the filled part), so answers are unchanged. :func:`new_cache` builds transformers' own cache for the
model, with its full-attention layers replaced; sliding-window and other layer kinds stay transformers'.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from moe_tui import fit


class BlockKVLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are views of buffers that grow by whole blocks of ``fit.KV_BLOCK``.

    Everything that reads the layer (sequence length, masks, cropping) sees ``keys`` and ``values`` as the
    plain layer's; when they were replaced by something that is not a view of the buffers (beam reordering,
    moving the layer to another device), the next update starts new buffers from them.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new tokens' keys and values after those held; return all of them (views of the buffers)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        held = self.keys.shape[-2] if self.keys.dim() == key_states.dim() else 0
        total = held + key_states.shape[-2]
        if not self._fits(held, total, key_states, value_states):
            self._grow(held, total, key_states, value_states)
        self._key_buffer[..., held:total, :].copy_(key_states)
        self._value_buffer[..., held:total, :].copy_(value_states)
        self.keys = self._key_buffer[..., :total, :]
        self.values = self._value_buffer[..., :total, :]
        return self.keys, self.values

    def _fits(self, held: int, total: int, key_states: torch.Tensor, value_states: torch.Tensor) -> bool:
        """Whether the buffers hold the layer's tokens at their start and have room for ``total`` tokens."""
        keys, values = self._key_buffer, self._value_buffer
        if keys is None or values is None or total > keys.shape[-2]:
            return False
        same_kind = (
            keys.shape[:-2] == key_states.shape[:-2]
            and values.shape[:-2] == value_states.shape[:-2]
            and keys.dtype == key_states.dtype
            and keys.device == key_states.device
        )
        if not same_kind:
            return False
        return held == 0 or (self.keys.data_ptr() == keys.data_ptr() and self.values.data_ptr() == values.data_ptr())

    def _grow(self, held: int, total: int, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """New buffers for ``total`` tokens rounded up to whole blocks, holding the tokens already there."""
        capacity = fit.kv_block_tokens(total)  # what the fit check counts
        keys = key_states.new_empty((*key_states.shape[:-2], capacity, key_states.shape[-1]))
        values = value_states.new_empty((*value_states.shape[:-2], capacity, value_states.shape[-1]))
        if held:
            keys[..., :held, :].copy_(self.keys)
            values[..., :held, :].copy_(self.values)
        self._key_buffer, self._value_buffer = keys, values


def new_cache(model: Any) -> DynamicCache | None:
    """An empty cache for ``model`` with block-growing full-attention layers; None for a model that brings its
    own kind of cache (transformers then makes it, as it would have)."""
    supports = getattr(model, "_supports_default_dynamic_cache", None)
    if supports is None or not supports() or model.config.is_encoder_decoder:
        return None
    cache = DynamicCache(config=model.config.get_text_config(decoder=True))
    cache.layers = [BlockKVLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
