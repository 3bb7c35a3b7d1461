"""The conversation's KV cache, kept from one answer to the next so a new turn prefills only what is new.

With offloaded experts a prefill streams nearly every expert of every layer, so re-reading a long conversation
for every turn costs more with each turn. After an answer the session keeps the cache transformers filled (the
prompt and the answer, all but the last token) with the token ids it holds. The next prompt reuses the longest
prefix the two share, cropping the rest away: the same conversation one turn later shares everything up to the
new question; another conversation, a new system prompt, trimmed history or a template that renders the
answer differently share less, and the cache is cropped to what is still exact (nothing, when the first token
differs). A cache whose layers cannot be cropped exactly (sliding-window layers past their window, recurrent
states) is never reused.

The bytes a cache holds (:func:`cache_bytes`) let the engine tell the KV cache it promised a conversation from
the part already allocated, when the cache is resized mid-conversation.
"""

from __future__ import annotations

from typing import Any


class ConversationCache:
    """The KV cache of the last answer and the token ids it holds."""

    def __init__(self) -> None:
        self._cache: Any = None
        self._ids: list[int] = []

    @property
    def tokens(self) -> int:
        """Tokens whose keys and values are held."""
        return len(self._ids)

    def take(self, ids: list[int]) -> tuple[Any, int]:
        """The cache cropped to the prefix it shares with ``ids`` (leaving at least one token to compute), and that
        prefix's length; ``(None, 0)`` when nothing can be reused. The cache is handed over: until :meth:`keep`
        is called again, this holds none."""
        cache, held = self._cache, self._ids
        self.clear()
        if cache is None or not getattr(cache, "is_croppable", False):
            return None, 0
        shared = 0
        limit = min(len(held), len(ids) - 1)
        while shared < limit and held[shared] == ids[shared]:
            shared += 1
        if shared == 0:
            return None, 0
        if len(held) > shared:
            cache.crop(shared - len(held))  # a negative count: how many of the last tokens to drop
        return cache, shared

    def keep(self, cache: Any, sequence: list[int]) -> None:
        """Hold ``cache`` after an answer; ``sequence`` is the prompt and the answer's ids (the cache holds all
        but the tokens past its length)."""
        length = cache.get_seq_length() if cache is not None else 0
        self._cache, self._ids = (cache, list(sequence[:length])) if length else (None, [])

    @property
    def nbytes(self) -> int:
        """Bytes the held cache's tensors occupy (0 when none is held)."""
        return cache_bytes(self._cache)

    def clear(self) -> None:
        """Forget the cache (its memory goes with it)."""
        self._cache, self._ids = None, []


def cache_bytes(cache: Any) -> int:
    """Bytes the tensors of a transformers cache's layers occupy, each storage once: a block layer's keys are
    views of a buffer, so the whole buffer counts. 0 for None or a cache without layers.

    Safe to call from another thread while the cache grows (it may miss the newest allocation).
    """
    import torch  # imported here: the session module (and so this one) loads without torch

    storages: dict[int, int] = {}
    for layer in list(getattr(cache, "layers", None) or ()):
        for value in list(vars(layer).values()):
            if isinstance(value, torch.Tensor) and value.device.type != "meta":
                storage = value.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
    storages.pop(0, None)  # empty tensors have no memory
    return sum(storages.values())
