"""One layer pass's routing on the host: which experts, how many tokens each, and each expert's inputs.

Everything the host needs (the selected experts, the router weights when telemetry is on, the next layer's
prefetch guesses) comes over in one small transfer. A single-token pass (decoding) is the common case and
takes a short path: no sorting, the token's row is every expert's input.
"""

from __future__ import annotations

import torch
from torch import Tensor


class Routing:
    """The routing of ``hidden`` (T, H) by ``top_k_index`` / ``top_k_weights`` (T, K) over ``num_experts``."""

    def __init__(
        self, top_k_index: Tensor, top_k_weights: Tensor, num_experts: int, guesses: Tensor | None, weights: bool
    ):
        self.tokens, self.top_k = top_k_index.shape
        self._index = top_k_index
        self._weights = top_k_weights
        self._grouped: tuple[Tensor, Tensor, dict[int, int]] | None = None
        pieces = []
        if self.tokens == 1:
            pieces.append(top_k_index[0].float())
            if weights:
                pieces.append(top_k_weights[0].float())
        else:
            flat = top_k_index.reshape(-1)
            pieces.append(torch.bincount(flat, minlength=num_experts + 1)[:num_experts].float())
            if weights:
                sums = torch.bincount(flat, weights=top_k_weights.reshape(-1).float(), minlength=num_experts + 1)
                pieces.append(sums[:num_experts].float())
        if guesses is not None:
            pieces.append(guesses.float())
        summary = torch.cat(pieces).tolist()  # the pass's one synchronisation with the device
        depth = 0 if guesses is None else guesses.numel()
        self.guesses = [int(g) for g in summary[len(summary) - depth :]] if depth else []
        self._mean: dict[int, float] = {}
        if self.tokens == 1:
            chosen = [int(e) for e in summary[: self.top_k]]
            self._position = {e: j for j, e in enumerate(chosen) if e < num_experts}
            self.counts = dict.fromkeys(self._position, 1)
            if weights:
                self._mean = {e: summary[self.top_k + j] for e, j in self._position.items()}
        else:
            self.counts = {e: int(c) for e, c in enumerate(summary[:num_experts]) if c}
            if weights:
                self._mean = {e: summary[num_experts + e] / c for e, c in self.counts.items()}
        self.experts = sorted(self.counts)

    def mean_weight(self, expert: int) -> float:
        """Mean router weight of the tokens sent to ``expert`` (known only when weights were asked for)."""
        return self._mean[expert]

    def inputs(self, expert: int, hidden: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """(rows of ``hidden`` for ``expert``, their indices or None for all of a single token, weights (n, 1))."""
        if self.tokens == 1:
            j = self._position[expert]
            return hidden, None, self._weights[:, j : j + 1]
        token_of, weight_of, start = self._group()
        begin = start[expert]
        end = begin + self.counts[expert]
        rows = token_of[begin:end]
        return hidden[rows], rows, weight_of[begin:end, None]

    def combine(self, outputs: dict[int, Tensor], dtype: torch.dtype) -> Tensor:
        """A single token's output (1, H): each selected expert's (1, H) output weighted by the token's router
        weight and summed, in one float32 matmul, then cast to ``dtype``."""
        rows = [outputs[e] for e in sorted(outputs, key=self._position.__getitem__)]  # the router's own order
        weights = self._weights if len(rows) == self.top_k else self._weights[:, sorted(self._position.values())]
        return torch.mm(weights.float(), torch.cat(rows).float()).to(dtype)

    def _group(self) -> tuple[Tensor, Tensor, dict[int, int]]:
        """Token positions sorted by expert, with each expert's start (computed once per pass)."""
        if self._grouped is None:
            flat = self._index.reshape(-1)
            order = torch.argsort(flat, stable=True)
            start: dict[int, int] = {}
            running = 0
            for expert in self.experts:
                start[expert] = running
                running += self.counts[expert]
            self._grouped = (order // self.top_k, self._weights.reshape(-1)[order], start)
        return self._grouped
