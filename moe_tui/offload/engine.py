"""The per-layer expert computation: routing summary, cache lookups, loads, prefetch, telemetry.

One :class:`Engine` serves every MoE layer of a model. For each layer pass it:

1. brings the routing to the host (:class:`~moe_tui.offload.routing.Routing`) together with, when prefetch
   is on, the next MoE layer's router scored on this layer's MoE input: **one** small transfer, the only
   synchronisation of the pass (the resident model reads its routing too);
2. splits the selected experts into hits and misses, marks the hits used, decides whether this pass's misses
   are computed on the host from the store instead of copied (``miss``: copy, host, or auto by
   :mod:`.misses`' cost model; every miss of a pass costs the same, so they all go one way), and starts the
   copies of the copied ones into free or evictable slots (never evicting an expert this pass still needs);
3. starts the copies of the next layer's guessed experts (prefetch) that are not cached, evicting only
   experts outside the guesses;
4. computes hits first (overlapping the copies on CUDA), then copied misses, then host misses, each with the
   expert format's own kernel; when a pass needs more experts than its layer has slots (a long prefill), the
   remaining misses stream through the slots one after another. A single token's expert outputs are summed
   in one matmul with its router weights; a longer pass scatters each expert's rows into the output;
5. keeps a :class:`~moe_tui.telemetry.LayerStep` for the pass, recorded when the forward pass ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from moe_tui.offload.cache import LayerCache
from moe_tui.offload.experts import Biases
from moe_tui.offload.families.base import Choice, GatedUnit
from moe_tui.offload.formats import ExpertFormat
from moe_tui.offload.misses import MissCosts, host_can_compute, measure_costs
from moe_tui.offload.routing import Routing
from moe_tui.offload.store import ExpertStore
from moe_tui.offload.transfer import Mover, Timer
from moe_tui.telemetry import LayerStep, Telemetry


@dataclass
class PendingStep:
    """A layer pass whose LayerStep waits for its timings (recorded at the end of the forward pass)."""

    layer: int
    n_tokens: int
    experts: tuple[int, ...]
    counts: tuple[int, ...]
    weights: tuple[float, ...]
    hits: tuple[bool, ...]
    prefetch_hits: tuple[bool, ...]
    host: tuple[bool, ...]
    prefetch_issued: tuple[int, ...]
    prefetch_guesses: tuple[int, ...]
    slots: tuple[int | None, ...]
    bytes_loaded: int
    timer: Timer


@dataclass
class Tally:
    """Counters kept even with telemetry off (cheap integers)."""

    steps: int = 0
    tokens: int = 0
    hits: int = 0
    misses: int = 0  # copied into a slot
    host: int = 0  # computed on the host from the store
    prefetch_issued: int = 0
    prefetch_used: int = 0
    bytes_loaded: int = 0
    pending: list[PendingStep] = field(default_factory=list)


class Engine:
    """Runs the offloaded experts of every MoE layer (see the module docstring)."""

    def __init__(
        self,
        store: ExpertStore,
        caches: list[LayerCache],
        routers: list[nn.Module],
        choice: Choice,
        glu: GatedUnit,
        fmt: ExpertFormat,
        mover: Mover,
        telemetry: Telemetry,
        num_experts: int,
        prefetch: int,
        record: bool,
        miss: str = "copy",
    ):
        self.store = store
        self.caches = caches
        self.routers = routers
        self.choice = choice  # the family's ranking of a router's experts (see moe_tui.offload.families)
        self.glu = glu  # the family's gated unit, e.g. act(gate) * up
        self.fmt = fmt
        self.mover = mover
        self.telemetry = telemetry
        self.num_experts = num_experts
        self.prefetch = prefetch
        self.record = record
        self.miss = miss
        self.costs: MissCosts | None = None  # measured on the first ``auto`` decision
        self.step = 0
        self.tally = Tally()
        self.layer_hits = [0] * len(caches)
        self.layer_accesses = [0] * len(caches)

    # ----------------------------------------------------------------- forward-pass boundaries
    def begin_pass(self) -> None:
        """A forward pass starts: count it and drop transient state an interrupted pass may have left."""
        self.step += 1
        self.tally.steps += 1
        self.tally.pending.clear()
        for cache in self.caches:
            cache.forget_prefetch()

    def end_pass(self) -> None:
        """A forward pass ended (or failed): record the LayerSteps of the layers it ran."""
        pending, self.tally.pending = self.tally.pending, []
        for item in pending:
            load_s, compute_s = item.timer.seconds()
            self.telemetry.record_step(
                LayerStep(
                    step=self.step,
                    layer=item.layer,
                    n_tokens=item.n_tokens,
                    experts=item.experts,
                    counts=item.counts,
                    weights=item.weights,
                    hits=item.hits,
                    prefetch_hits=item.prefetch_hits,
                    host=item.host,
                    prefetch_issued=item.prefetch_issued,
                    prefetch_guesses=item.prefetch_guesses,
                    slots=item.slots,
                    bytes_loaded=item.bytes_loaded,
                    load_s=load_s,
                    compute_s=compute_s,
                )
            )

    # ----------------------------------------------------------------- one layer pass
    @torch.no_grad()
    def run_layer(
        self, layer: int, hidden: Tensor, top_k_index: Tensor, top_k_weights: Tensor, biases: Biases | None = None
    ) -> Tensor:
        """The experts' output for ``hidden`` (T, H) routed by ``top_k_index`` / ``top_k_weights`` (T, K);
        ``biases``: every expert's gate, up and down biases, for families that have them."""
        cache = self.caches[layer]
        record = self.record
        mover = self.mover

        # 1. one host transfer: the routing and the next layer's guesses
        depth = min(self.prefetch, self.caches[layer + 1].capacity) if layer + 1 < len(self.caches) else 0
        guesses = self._guess(layer + 1, hidden, depth) if depth else None
        routing = Routing(top_k_index, top_k_weights, self.num_experts, guesses, weights=record)
        hits = [e for e in routing.experts if e in cache.slot_of]
        misses = [e for e in routing.experts if e not in cache.slot_of]
        host_computes = bool(misses) and self.miss != "copy" and self._misses_on_host(layer, routing.tokens)
        copied, on_host = ([], misses) if host_computes else (misses, [])
        order = hits + copied + on_host
        prefetch_hits = [cache.use(expert) for expert in hits]

        timer = Timer(mover.cuda) if record else None
        mover.start_pass(timer)
        bytes_loaded = cache.prefetch_bytes

        # 2. start the copied misses that have a slot to go to; the rest stream through the slots below
        remaining = set(hits + copied)
        for expert in copied:
            slot = cache.victim(protected=remaining)
            if slot is None:
                break
            bytes_loaded += self._load(cache, layer, slot, expert, timer)

        # 3. prefetch the next layer's guesses
        if routing.guesses:
            self._prefetch(layer + 1, routing.guesses)

        # 4. compute, hits first, misses computed on the host last (their copies would have been the slowest)
        fmt, glu = self.fmt, self.glu
        single = routing.tokens == 1
        out = None if single else torch.zeros_like(hidden)
        outputs: dict[int, Tensor] = {}  # a single token's expert outputs, combined in one matmul at the end
        for expert in order:
            if single:
                inputs, rows, weights = hidden, None, None
            else:
                inputs, rows, weights = routing.inputs(expert, hidden)
            if biases is not None:
                glu = _biased(self.glu, biases[0][expert], biases[1][expert])
            if host_computes and expert in on_host:
                token = mover.begin(timer)
                result = self._compute_on_host(layer, expert, inputs, glu)
                mover.after_host_compute(timer, token)
            else:
                slot = cache.slot_of.get(expert)
                if slot is None:
                    slot = cache.victim(protected=remaining)
                    if slot is None:  # cannot happen: every computed expert is evictable
                        raise RuntimeError(f"layer {layer}: no slot free for expert {expert}")
                    bytes_loaded += self._load(cache, layer, slot, expert, timer)
                mover.before_compute(cache, slot, timer)
                token = mover.begin(timer)
                views = cache.views[slot]
                if views is None:
                    views = cache.views[slot] = fmt.views(cache.slots[slot])
                result = fmt.forward(views, inputs, glu)
                mover.after_compute(cache, slot, timer, token)
                remaining.discard(expert)
            if biases is not None:
                result = result + biases[2][expert]
            if single:
                outputs[expert] = result
            else:
                out.index_put_((rows,), (result * weights).to(out.dtype), accumulate=True)  # index_add_ is slow on CPU
        if single:  # no outputs only when every pick was a padding index
            out = routing.combine(outputs, hidden.dtype) if outputs else torch.zeros_like(hidden)
        mover.end_pass(timer)

        # 5. bookkeeping
        tally = self.tally
        if layer == 0:
            tally.tokens += routing.tokens
        tally.hits += len(hits)
        tally.misses += len(copied)
        tally.host += len(on_host)
        self.layer_hits[layer] += len(hits)
        self.layer_accesses[layer] += len(order)
        tally.prefetch_issued += len(cache.issued)
        tally.prefetch_used += sum(prefetch_hits)
        tally.bytes_loaded += bytes_loaded
        if timer is not None:
            tally.pending.append(
                PendingStep(
                    layer=layer,
                    n_tokens=routing.tokens,
                    experts=tuple(order),
                    counts=tuple(routing.counts[e] for e in order),
                    weights=tuple(routing.mean_weight(e) for e in order),
                    hits=(True,) * len(hits) + (False,) * len(misses),
                    prefetch_hits=tuple(prefetch_hits) + (False,) * len(misses),
                    host=(False,) * len(hits) + (True,) * len(on_host) if host_computes else (),
                    prefetch_issued=tuple(cache.issued),
                    prefetch_guesses=tuple(cache.guesses),
                    slots=cache.eviction_order(),
                    bytes_loaded=bytes_loaded,
                    timer=timer,
                )
            )
        cache.forget_prefetch()
        return out

    def _misses_on_host(self, layer: int, tokens: int) -> bool:
        """Whether this pass's misses are computed on the host (``miss`` = host: always; auto: when the cost
        model says a miss of ``tokens`` tokens is cheaper there than copied)."""
        if self.miss == "host":
            return True
        if not host_can_compute(self.fmt):
            return False
        if self.costs is None:
            self.costs = measure_costs(self.fmt, self.store, self.caches[layer].device, self.glu)
        accesses = self.layer_accesses[layer]
        reuse = self.layer_hits[layer] / accesses if accesses else self.caches[layer].capacity / self.num_experts
        return self.costs.host_is_cheaper(tokens, reuse)

    def _compute_on_host(self, layer: int, expert: int, inputs: Tensor, glu: GatedUnit) -> Tensor:
        """One expert computed by the CPU straight from its store buffer (inputs and output move if need be)."""
        views = self.fmt.views(self.store.row(layer, expert))
        if inputs.device.type == "cpu":
            return self.fmt.forward(views, inputs, glu)
        return self.fmt.forward(views, inputs.to("cpu"), glu).to(inputs.device, non_blocking=True)

    def _guess(self, layer: int, hidden: Tensor, depth: int) -> Tensor:
        """The next layer's ``depth`` most likely experts for these tokens, ranked as the family's router ranks
        them (one token: its own ranking; several: summed over tokens after a softmax over each token's scores)."""
        scores = self.choice(self.routers[layer], hidden)
        scores = scores[0] if scores.shape[0] == 1 else torch.softmax(scores.float(), dim=-1).sum(dim=0)
        return torch.topk(scores, depth).indices

    def _prefetch(self, layer: int, guesses: list[int]) -> None:
        """Start loading the guessed experts of ``layer`` that are not cached, evicting only non-guesses."""
        cache = self.caches[layer]
        cache.guesses = list(guesses)
        protected = set(guesses)
        for expert in guesses:
            if expert in cache.slot_of:
                continue
            slot = cache.victim(protected=protected)
            if slot is None:
                break
            cache.prefetch_bytes += self._load(cache, layer, slot, expert, None)
            cache.prefetched.add(expert)
            cache.issued.append(expert)

    def _load(self, cache: LayerCache, layer: int, slot: int, expert: int, timer: Timer | None) -> int:
        """Put ``expert`` into ``slot`` (bookkeeping, then the copy); a failed copy leaves the slot empty."""
        cache.assign(slot, expert)
        try:
            self.mover.load(cache, slot, self.store.row(layer, expert), timer)
        except BaseException:
            cache.clear(slot)
            raise
        return self.store.nbytes


def _biased(glu: GatedUnit, gate_bias: Tensor, up_bias: Tensor) -> GatedUnit:
    """``glu`` applied to the gate and up projections with one expert's biases added."""

    def unit(gate: Tensor, up: Tensor) -> Tensor:
        return glu(gate + gate_bias.to(gate.device), up + up_bias.to(up.device))

    return unit
