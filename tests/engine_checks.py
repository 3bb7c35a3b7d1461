"""Checks the engine tests share: greedy generation with every step's logits, exactness against a reference
within TOLERANCE, the trace's layer steps, an independent LRU over recorded routing, and the routing a
model's routers select."""

from __future__ import annotations

import time
from collections import OrderedDict

import torch

from moe_tui.offload import OffloadedModel
from moe_tui.offload.formats import HqqFormat
from moe_tui.offload.quant import quantize_matrix
from moe_tui.telemetry import LayerStep, read_trace

TOLERANCE = 1e-5


def generate(model, ids: torch.Tensor, new_tokens: int = 6, **kwargs):
    """Greedy generation returning tokens and the logits of every step (prefill included)."""
    with torch.no_grad():
        out = model.generate(
            ids.to(model.device),
            attention_mask=torch.ones_like(ids).to(model.device),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
            **kwargs,
        )
    return out.sequences.cpu(), torch.stack([step.cpu() for step in out.logits])


def assert_same_generation(reference, om: OffloadedModel, ids: torch.Tensor, new_tokens: int = 6) -> None:
    """Identical greedy tokens and logits within TOLERANCE at every step.

    ``reference`` is a plain model or the (tokens, logits) it generated before (to run it only once).
    """
    ref_tokens, ref_logits = reference if isinstance(reference, tuple) else generate(reference, ids, new_tokens)
    tokens, logits = generate(om.model, ids, new_tokens)
    assert torch.equal(tokens, ref_tokens)
    assert (logits - ref_logits).abs().max().item() <= TOLERANCE


def steps_of(om: OffloadedModel) -> list[LayerStep]:
    """Every LayerStep recorded so far (read back from the trace file)."""
    _, events = read_trace(om.config.trace_path)
    return [event for event in events if isinstance(event, LayerStep)]


def reference_lru(routing: list[list[set[int]]], k: int) -> tuple[int, int, list[list[list[int]]]]:
    """Independent LRU over recorded routing: per pass hits (ascending) then misses (ascending).

    Returns hits, misses and, per pass and layer, the slot contents from least to most recently used.
    """
    layers = len(routing[0])
    caches = [OrderedDict() for _ in range(layers)]
    hits = misses = 0
    contents = []
    for passes in routing:
        after = []
        for layer, needed in enumerate(passes):
            cache = caches[layer]
            present = sorted(e for e in needed if e in cache)
            absent = sorted(e for e in needed if e not in cache)
            for expert in present:
                cache.move_to_end(expert)
                hits += 1
            for expert in absent:
                if len(cache) >= k:
                    cache.popitem(last=False)
                cache[expert] = True
                misses += 1
            after.append(list(cache))
        contents.append(after)
    return hits, misses, contents


def record_routing(om: OffloadedModel) -> list[list[set[int]]]:
    """Attach hooks to the routers that collect the set of experts each pass selects per MoE layer."""
    routing: list[list[set[int]]] = []
    layers = [moe_layer.router for moe_layer in om.moe.layers]

    def hook(index):
        def collect(module, args, output):
            if index == 0:
                routing.append([set() for _ in layers])
            routing[-1][index].update(int(e) for e in output[2].reshape(-1).tolist())

        return collect

    for index, router in enumerate(layers):
        router.register_forward_hook(hook(index))
    return routing


def copy_is_asynchronous(source: torch.Tensor) -> bool:
    """Whether a copy of host tensor ``source`` to the GPU returns before the GPU has reached it, which CUDA
    allows only from page-locked memory: from pageable memory it waits for the stream first (except a small copy,
    which the driver stages and may return before the GPU reaches it: a control needs megabytes).

    PyTorch's ``is_pinned()`` answers only for its own pinned allocator's blocks (it says False for memory
    registered with ``cudaHostRegister``, seen on an H200 with torch 2.11), so the store is judged by this."""
    target = torch.empty(source.numel(), dtype=source.dtype, device="cuda")
    torch.cuda.synchronize()
    torch.cuda._sleep(200_000_000)  # the stream is busy for about 100 ms of GPU clock
    start = time.perf_counter()
    target.copy_(source, non_blocking=True)
    returned = time.perf_counter() - start
    torch.cuda.synchronize()
    return returned < 0.05


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids.to(model.device)).logits.cpu()


def hqq_dequantized(weight: torch.Tensor, bits: int, group_size: int, fmt: HqqFormat) -> torch.Tensor:
    """HQQ's own dequantization of ``weight`` with its scale and zero rounded to the 2-byte metadata dtype."""
    from hqq.core.quantize import Quantizer

    values, scale, zero = quantize_matrix(weight, bits, group_size)
    meta = {
        "nbits": bits,
        "group_size": group_size,
        "shape": weight.shape,
        "axis": 1,
        "packing": None,
        "view_as_float": False,
        "scale": scale.to(fmt.meta_dtype).to(fmt.dtype),
        "zero": zero.to(fmt.meta_dtype).to(fmt.dtype),
        "compute_dtype": fmt.dtype,
    }
    return Quantizer.dequantize(values.to(fmt.dtype), meta)
