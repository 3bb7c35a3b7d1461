"""Token ids to text pieces as they are generated, and a stop switch for ``model.generate``.

Decoding one token at a time does not work: a character can span several byte tokens, and SentencePiece-style
tokenizers drop or add a leading space depending on where decoding starts. :class:`IncrementalDecoder`
decodes a short window that starts a few tokens back, emits only what that window added, and holds text back
while it ends in an unfinished character, so that the pieces joined equal decoding all ids at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

_UNFINISHED = "\ufffd"


class IncrementalDecoder:
    """Turns a growing list of token ids into new text pieces; their concatenation is :attr:`text`."""

    def __init__(self, tokenizer: Any):
        self._tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix_start = 0
        self._read_start = 0
        self._pieces: list[str] = []

    def push(self, token_id: int) -> str:
        """Add one token; returns the text it completes (empty while a character or word is unfinished)."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self._prefix_start : self._read_start])
        after = self._decode(self.ids[self._prefix_start :])
        if len(after) <= len(before) or after.endswith(_UNFINISHED) or not after.startswith(before):
            return ""
        piece = after[len(before) :]
        self._prefix_start, self._read_start = self._read_start, len(self.ids)
        self._pieces.append(piece)
        return piece

    def finish(self) -> str:
        """Whatever text is still held back (an unfinished character at the very end, say); call once at the end."""
        full = self._decode(self.ids)
        shown = "".join(self._pieces)
        rest = full[len(shown) :] if full.startswith(shown) else ""
        if rest:
            self._pieces.append(rest)
        return rest

    @property
    def text(self) -> str:
        """All text emitted so far."""
        return "".join(self._pieces)

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True) if ids else ""


class TokenStreamer(BaseStreamer):
    """A ``generate`` streamer for one sequence: skips the prompt, then calls ``on_token(piece)`` per new token.

    ``on_token`` runs in the generating thread right after each forward pass, with the text that token
    completed ("" for a token that ends inside a character, and for special tokens).
    """

    def __init__(self, tokenizer: Any, on_token: Callable[[str], None]):
        self.decoder = IncrementalDecoder(tokenizer)
        self._on_token = on_token
        self._seen_prompt = False
        self.tail = ""

    def put(self, value: torch.Tensor) -> None:
        """Receive the prompt (first call, ignored) or the next token of the single sequence."""
        if not self._seen_prompt:
            self._seen_prompt = True
            return
        for token_id in value.reshape(-1).tolist():
            self._on_token(self.decoder.push(int(token_id)))

    def end(self) -> None:
        """Generation is over: keep any held-back text in :attr:`tail` for the caller to show."""
        self.tail = self.decoder.finish()

    @property
    def tokens(self) -> int:
        """Tokens generated so far (special tokens included)."""
        return len(self.decoder.ids)


class StopOnEvent(StoppingCriteria):
    """Ends generation after the current token once ``event`` is set; remembers whether it did."""

    def __init__(self, event: threading.Event):
        self.event = event
        self.triggered = False

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        """One flag per sequence: True (stop) for all of them once the event is set."""
        if self.event.is_set():
            self.triggered = True
        return torch.full((input_ids.shape[0],), self.triggered, dtype=torch.bool, device=input_ids.device)

    def as_list(self) -> StoppingCriteriaList:
        """This criterion in the list form ``generate`` takes."""
        return StoppingCriteriaList([self])
