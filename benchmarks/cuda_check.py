"""The CUDA path, proven in one command: tests, stream-ordering stress, host syncs, and Mixtral-size numbers.

Run on a machine with an NVIDIA GPU (planned to take under 8 minutes on one H100/H200; it has not run on one yet)::

    HF_HUB_OFFLINE=1 python benchmarks/cuda_check.py

On the lent GPU machine, which cannot download anything, ``sh scripts/device_wheels.sh`` first (here): it puts
the wheels that machine lacks into ``.whl/`` and prints the command that installs them there and runs this.
There, give ``--deadline SECONDS`` a minute under the call's time limit: the step running at the deadline is cut
off and the rest skipped, each said so in the JSON, which is rewritten after every step.

Steps, each reported as passed, failed or skipped (with the reason):

1. ``tests``: the test suite's CUDA tests (``pytest -m cuda``).
2. ``streams``: a small offloaded Mixtral on the GPU with delays injected with ``torch.cuda._sleep`` on the copy
   stream (before every expert copy) and on the compute stream (before every expert computation); its logits
   must equal the resident model's. Negative control: the same run with the compute stream's wait on a slot's
   ``ready`` event removed must differ (otherwise the check could not see an ordering bug).
3. ``syncs``: host synchronisations per prefill and per decode pass (``torch.cuda.set_sync_debug_mode``), for
   the engine and for the resident model; the engine should add one per MoE layer (its routing summary).
4. ``kernels``: one expert per format at Mixtral-8x7B's and Qwen3-30B-A3B's shapes against the GPU's measured
   memory bandwidth (``benchmarks/expert_kernels.py`` on the GPU).
5. ``transfer``: host-to-device GB/s from pinned and from pageable memory (1 GiB, best of 5), and from the
   expert store's registered (``cudaHostRegister``) layers: the store must be page-locked, take its exact size
   (process RSS growth against the store's bytes; PyTorch's pinned allocator reserving nothing) and copy as
   fast as PyTorch's own pinned memory.
6. ``cli``: the commands a user runs, on the GPU, each as its own process: ``ask`` on the demo model (its
   greedy answer compared with the CPU's), ``ask`` with 4-bit experts from a memory-mapped store twice (the
   second reads the quantized-store cache), ``bench`` of five configurations, ``plan`` for Mixtral-8x7B on a
   24 GiB card, ``cache``, and one reading of the NVML probe while this process holds GPU memory.
7. ``fit``: the fit check against the GPU memory an answer really takes: two layers each of Mixtral-8x7B (SDPA
   attention) and gpt-oss-20b (eager attention) at k=2, a ~3500-token answer, which must finish with PyTorch's
   allocator capped at the count ``chat`` checks before loading, less what CUDA holds outside the allocator.
8. ``mixtral``: 4 Mixtral-8x7B-shaped layers (random bf16 weights), offloaded to the GPU: quantization time to
   4 bits, then decode tokens/s at k=8, k=2 and k=2 with prefetch, in bf16 and at 4 bits, with the measured
   hit rate and the bound that copies at that hit rate put on tokens/s; and k=2 with ``miss=auto``, where the
   engine may have the CPU compute a missed expert from pinned memory instead of copying it (bf16 only: the
   CPU cannot compute the CUDA int4 layout), the figure ``plan`` would need to model that on a GPU.
9. ``overhead``: the fixed cost of a decoded token, with weights too small to matter (32 decoder layers of
   hidden size 64, every expert cached): transformers' own model on the GPU against the engine, in ms per token
   and CUDA kernels launched per token, to say whose cost the first run's 1.7 ms per layer was.

Writes ``benchmarks/results/cuda-<gpu>.json`` (``cuda-check-cpu-only.json`` without a GPU, where only what is
meaningful on a CPU runs and every other step says it was skipped); ``benchmarks/results.py --render-only``
turns it into a RESULTS.md section. Exit code 1 when a step failed.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from moe_tui.engine_config import prefer_expandable_segments

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "results"
sys.path.insert(0, str(HERE))  # expert_kernels.py and fit_check.py beside this file

DEADLINE_GRACE_S = 15.0  # past --deadline, a step stuck in native code ends the process
DELAY_CYCLES = 2_000_000  # about 1 ms of GPU clock per injected sleep
WARMUP_TOKENS = 3  # decoded before a speed is measured (the first CUDA run's k=8 came out at half k=2's speed)


class Skipped(Exception):
    """A step that cannot run here (the message says why)."""


def cuda() -> bool:
    """Whether a CUDA device is present."""
    return torch.cuda.is_available()


# ----------------------------------------------------------------------------------------------- 1. tests
def step_tests(quick: bool) -> dict:
    """Run the tests marked ``cuda`` in a child process; their summary line is the result."""
    if not cuda():
        raise Skipped("no CUDA device: the cuda-marked tests skip themselves")
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", *(["-x"] if quick else [])]
    if importlib.util.find_spec("pytest_timeout"):  # a CUDA test that hangs (a stream waiting forever) fails alone
        command.append("--timeout=120")
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    summary = (done.stdout.strip().splitlines() or [""])[-1]
    return {
        "passed": done.returncode == 0,
        "summary": summary,
        "output_tail": done.stdout[-4000:] + done.stderr[-2000:],
    }


# ----------------------------------------------------------------------------------------------- 2. streams
def small_mixtral(seed: int = 0):
    """A small random Mixtral (8 experts, 4 layers) whose experts are worth copying, in fp32."""
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(
        vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=256,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = MixtralForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.2 if "gate" in name and "experts" not in name else 0.05)
    return model


def delayed_engine_logits(model, ids: torch.Tensor, skip_ready_wait: bool) -> torch.Tensor:
    """Logits of ``model`` offloaded at k=1 with sleeps before every copy and every expert computation."""
    from moe_tui.offload import OffloadConfig, offload_model, transfer

    mover_class = transfer.CudaMover
    original_load, original_begin, original_before = mover_class.load, mover_class.begin, mover_class.before_compute

    def slow_load(self, cache, slot, source, timer):
        if cache.used[slot]:
            self.copy_stream.wait_event(cache.free[slot])
        with torch.cuda.stream(self.copy_stream):
            torch.cuda._sleep(DELAY_CYCLES)  # the copy lands late
        original_load(self, cache, slot, source, timer)

    def slow_begin(self, timer):
        torch.cuda._sleep(DELAY_CYCLES)  # the computation runs late, so a too-early copy would overwrite it
        return original_begin(self, timer)

    def no_wait(self, cache, slot, timer):
        cache.pending[slot] = False  # the bug the control plants: compute without waiting for the copy

    mover_class.load, mover_class.begin = slow_load, slow_begin
    if skip_ready_wait:
        mover_class.before_compute = no_wait
    try:
        om = offload_model(copy.deepcopy(model), OffloadConfig(cache_size=1, prefetch=1, device="cuda"))
        with torch.no_grad():
            logits = om.model(ids.cuda()).logits.float().cpu()
        om.close()
        return logits
    finally:
        mover_class.load, mover_class.begin, mover_class.before_compute = original_load, original_begin, original_before


def step_streams(quick: bool) -> dict:
    """Delays on both streams must not change the logits; without the ready wait they must."""
    if not cuda():
        raise Skipped("no CUDA device: there are no streams to order on a CPU")
    model = small_mixtral()
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = copy.deepcopy(model).cuda()(ids.cuda()).logits.float().cpu()
    delayed = delayed_engine_logits(model, ids, skip_ready_wait=False)
    control = delayed_engine_logits(model, ids, skip_ready_wait=True)
    difference = (delayed - expected).abs().max().item()
    control_difference = (control - expected).abs().max().item()
    return {
        "passed": difference <= 1e-3 and control_difference > 1e-2,
        "max_abs_difference": difference,
        "control_max_abs_difference": control_difference,
        "note": "the control (ready wait removed) must differ, or the check could not catch an ordering bug",
    }


# ----------------------------------------------------------------------------------------------- 3. syncs
def count_syncs(work: Callable[[], object]) -> int:
    """Host synchronisations ``work`` makes, as ``torch.cuda.set_sync_debug_mode('warn')`` reports them."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            work()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def passes_syncs(model, ids: torch.Tensor) -> dict:
    """Syncs of one prefill pass and one decode pass of ``model`` (a transformers causal LM on the GPU)."""
    with torch.no_grad():
        out = model(ids, use_cache=True)
        past = out.cache
        next_id = out.logits[:, -1:].argmax(-1)
        prefill = count_syncs(lambda: model(ids, use_cache=True))
        decode = count_syncs(lambda: model(next_id, cache=past, use_cache=True))
    return {"prefill": prefill, "decode": decode}


def step_syncs(quick: bool) -> dict:
    """The engine's host syncs per pass next to the resident model's."""
    if not cuda():
        raise Skipped("no CUDA device: a CPU has no host synchronisation to count")
    from moe_tui.offload import OffloadConfig, offload_model

    model = small_mixtral()
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(2)).cuda()
    resident = passes_syncs(copy.deepcopy(model).cuda(), ids)
    om = offload_model(copy.deepcopy(model), OffloadConfig(cache_size=2, prefetch=1, device="cuda"))
    engine = passes_syncs(om.model, ids)
    layers = len(om.caches)
    om.close()
    extra = {key: engine[key] - resident[key] for key in engine}
    return {
        "passed": extra["decode"] <= layers,
        "moe_layers": layers,
        "engine": engine,
        "resident": resident,
        "engine_extra": extra,
        "note": "goal: at most one extra synchronisation per MoE layer and pass (the routing summary)",
    }


# ----------------------------------------------------------------------------------------------- 4. kernels
def step_kernels(quick: bool) -> dict:
    """Per-expert compute per format at real shapes (on the GPU when there is one)."""
    import expert_kernels

    device = torch.device("cuda" if cuda() else "cpu")
    runs = 3 if quick else 7
    bandwidth = expert_kernels.read_bandwidth(device, runs)
    shapes = ("qwen3",) if device.type == "cpu" else ("mixtral", "qwen3")  # Mixtral on a CPU: expert_kernels.py
    rows = []
    for key in shapes:
        name, hidden, width = expert_kernels.SHAPES[key]
        rows += expert_kernels.measure_shape(name, hidden, width, device, runs, bandwidth)
    return {"passed": True, "device": str(device), "read_bandwidth": bandwidth, "rows": rows}


# ----------------------------------------------------------------------------------------------- 5. transfer
def step_transfer(quick: bool) -> dict:
    """Host-to-device bandwidth from pinned and from pageable memory."""
    if not cuda():
        raise Skipped("no CUDA device: no host-to-device bus to measure")
    size = 1 << 30
    target = torch.empty(size, dtype=torch.uint8, device="cuda")
    result = {"passed": True, "bytes": size}
    for kind, pinned in (("pinned", True), ("pageable", False)):
        source = torch.ones(size, dtype=torch.uint8, pin_memory=pinned)
        times = []
        for _ in range(5):
            torch.cuda.synchronize()
            start = time.perf_counter()
            target.copy_(source, non_blocking=pinned)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        result[f"{kind}_gbps"] = size / min(times) / 1e9
        del source
    result.update(store_registration(target))
    result["store_page_locked"] = result["store_gbps"] >= 0.8 * result["pinned_gbps"] > 2 * result["pageable_gbps"]
    result["passed"] = result["store_page_locked"] and result["store_exact"]
    return result


def store_registration(target: torch.Tensor) -> dict:
    """A 3-layer pinned ExpertStore of 8 experts of 4-bit Mixtral size: exact size and copy speed (page-locked
    memory copies as fast as PyTorch's pinned memory; ``is_pinned()`` is kept for the record: torch 2.11 said
    False for memory registered with ``cudaHostRegister``)."""
    import psutil

    from moe_tui.offload.store import ExpertStore

    nbytes = 88 * 1024**2 + 12345  # about one 4-bit Mixtral expert, deliberately not a power of two
    before_reserved = torch.cuda.host_memory_stats().get("reserved_bytes.all.current", 0)
    before_rss = psutil.Process().memory_info().rss
    store = ExpertStore(3, 8, nbytes, kind="pinned")
    for layer in range(3):
        for expert in range(8):
            store.row(layer, expert).fill_(1)  # touch every page, so RSS shows what the store holds
    grown = psutil.Process().memory_info().rss - before_rss
    reserved = torch.cuda.host_memory_stats().get("reserved_bytes.all.current", 0) - before_reserved
    row = store.row(1, 3)
    times = []
    for _ in range(5):
        torch.cuda.synchronize()
        start = time.perf_counter()
        target[: row.numel()].copy_(row, non_blocking=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    torch_is_pinned = all(store.row(layer, 0).is_pinned() for layer in range(3))
    store.close()
    return {
        "store_bytes": store.total_bytes,
        "store_rss_growth": grown,
        "store_pinned_allocator_bytes": reserved,
        "store_torch_is_pinned": torch_is_pinned,
        "store_exact": reserved == 0 and grown < store.total_bytes * 1.02,
        "store_gbps": row.numel() / min(times) / 1e9,
    }


# ----------------------------------------------------------------------------------------------- 6. cli
def moe_tui(*arguments: str, env: dict) -> dict:
    """Run ``moe-tui ARGUMENTS`` as a user would; its exit code, seconds, output and parsed JSON (when it printed
    one object)."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "moe_tui", *arguments], cwd=REPO, env=env, capture_output=True, text=True, timeout=240
    )
    report: dict = {"command": "moe-tui " + " ".join(arguments), "rc": done.returncode}
    report["seconds"] = time.perf_counter() - start
    try:
        report["json"] = json.loads(done.stdout)
    except ValueError:
        report["stdout_tail"] = done.stdout[-3000:]
    report["stderr_tail"] = done.stderr[-2000:]
    return report


def step_cli(quick: bool) -> dict:
    """The commands a user runs, on the GPU: ask (plain, and 4-bit from a mmap store twice, the second from the
    quantized-store cache), bench, plan for Mixtral on a 24 GiB card, and one reading of the NVML probe, which
    must see this process's memory on the GPU."""
    if not cuda():
        raise Skipped("no CUDA device: the test suite runs these commands on the CPU")
    import os
    import tempfile

    from moe_tui.system import SystemProbe

    home = Path(tempfile.mkdtemp(prefix="moe-tui-cuda-check-"))
    env = {**os.environ, **{f"MOE_TUI_{kind}_DIR": str(home / kind.lower()) for kind in ("DATA", "CONFIG", "CACHE")}}
    question = ("--temperature", "0", "--max-new-tokens", "24", "--json", "What do experts do?")
    int4_mmap = ("--device", "cuda", "--expert-bits", "4", "--store", "mmap")
    runs = {
        "ask_cuda": moe_tui("ask", "--device", "cuda", *question, env=env),
        "ask_cpu": moe_tui("ask", "--device", "cpu", *question, env=env),
        "ask_int4_mmap_first": moe_tui("ask", *int4_mmap, *question, env=env),
        "ask_int4_mmap_cached": moe_tui("ask", *int4_mmap, *question, env=env),
        "bench": moe_tui(
            "bench", "--device", "cuda", "--compare", "resident", "k=2", "k=2,prefetch=1", "k=2,bits=4",
            "k=2,miss=auto", "--tokens", "16", "--runs", "1", "--json", env=env,
        ),
        "plan_mixtral_24g": moe_tui("plan", "mixtral-8x7b", "--vram", "24GiB", "--json", env=env),
        "cache": moe_tui("cache", "--json", env=env),
    }  # fmt: skip
    texts = {name: runs[name].get("json", {}).get("text") for name in ("ask_cuda", "ask_cpu")}
    held = torch.ones(256 * 2**20, dtype=torch.uint8, device="cuda")  # 256 MiB this process holds, for the probe
    probe = SystemProbe()
    sample = probe.sample()
    probe.close()
    del held
    return {
        "passed": all(run["rc"] == 0 for run in runs.values()) and any(gpu.process_allocated for gpu in sample.gpus),
        "runs": runs,
        "greedy_text_same_on_cuda_and_cpu": texts["ask_cuda"] == texts["ask_cpu"],
        "probe": {"gpu_status": sample.gpu_status, "gpus": [dataclasses.asdict(gpu) for gpu in sample.gpus]},
    }


# ----------------------------------------------------------------------------------------------- 7. fit
def step_fit(quick: bool, result: dict) -> dict:
    """The fit check's count against the GPU memory a long answer really takes, at two real shapes.

    After loading, what CUDA holds outside PyTorch's allocator (its context, library handles) is measured once,
    and the allocator is capped (``set_per_process_memory_fraction``) at what ``chat`` counts before loading
    (weights, slots, workspace, KV cache and activations for the answer's tokens, the margin) less that: the
    answer must finish under the cap, where an allocation beyond it fails as on a GPU that is full (after the
    allocator has handed back its free cached blocks). The peak reserved memory is reported beside it. Fills
    ``result`` as it goes.
    """
    if not cuda():
        raise Skipped("no CUDA device: on a CPU this is `python benchmarks/fit_check.py`")
    import gc

    from fit_check import answering_session, question, shaped_model

    from moe_tui import fit
    from moe_tui.chat.generation import GenerationSettings
    from moe_tui.chat.prompt import render_prompt
    from moe_tui.errors import UserError
    from moe_tui.offload import OffloadConfig, offload_model

    words = 200 if quick else 900
    result.update({"passed": True, "margin": fit.MARGIN["cuda"], "models": []})
    for name in ("gpt-oss-20b", "mixtral-8x7b"):  # the eager attention's score matrices first: the harder case
        model = shaped_model(name, drawn_on="cuda")
        torch.cuda.empty_cache()
        engine = offload_model(model, OffloadConfig(cache_size=2, prefetch=0, device="cuda"), progress=lambda *a: None)
        del model
        session = answering_session(engine, name)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info()
        outside = total - free - torch.cuda.memory_reserved()
        settings = GenerationSettings(temperature=0, max_new_tokens=8)
        prompt = question(words)
        text = render_prompt(session.tokenizer, prompt)  # as the session renders and encodes it
        tokens = len(session.tokenizer(text, add_special_tokens=False)["input_ids"]) + settings.max_new_tokens
        held = engine.memory()
        config = engine.model.config
        costs = fit.TokenCosts.of(config, 2, config.intermediate_size)
        counted = fit.fast_tier_need(
            held["resident_bytes"], held["slot_bytes"], held["workspace_bytes"], costs, tokens, "cuda"
        )
        torch.cuda.set_per_process_memory_fraction((counted.total - outside) / total)
        torch.cuda.reset_peak_memory_stats()
        try:
            answer = session.generate(prompt, settings, lambda _: None)
            torch.cuda.synchronize()
            error = None
        except UserError as out_of_memory:  # the session's message for an answer that ran out of memory
            error = str(out_of_memory)
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0)
        peak = torch.cuda.max_memory_reserved() + outside
        row = {
            "model": name,
            "attention": config._attn_implementation,
            "tokens": answer.prompt_tokens + answer.tokens if error is None else tokens,
            "out_of_memory": error,
            "outside_allocator": outside,
            "peak_allocated": torch.cuda.max_memory_allocated(),
            "peak": peak,
            "counted": counted.total,
            "counted_parts": counted.parts(),
            "fits": error is None,
        }
        result["models"].append(row)
        result["passed"] = result["passed"] and row["fits"]
        print(
            f"  {name}: {'fits' if error is None else 'OUT OF MEMORY'} under the count, {counted.total / 2**30:.2f}"
            f" GiB; peak reserved {peak / 2**30:.2f} GiB (allocated {row['peak_allocated'] / 2**30:.2f})",
            flush=True,
        )
        engine.close()
        del engine, session
        gc.collect()
        torch.cuda.empty_cache()
    return result


# ----------------------------------------------------------------------------------------------- 8. mixtral
def mixtral_layers(layers: int):
    """A Mixtral-8x7B-shaped model of ``layers`` decoder layers with random bf16 weights, on the CPU (drawn on the
    GPU when there is one: drawing them on a CPU took 28 s a layer on 2 cores, and over 27 s on 16)."""
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(num_hidden_layers=layers, vocab_size=32000, max_position_embeddings=4096)
    torch.manual_seed(0)
    with torch.device("cuda" if cuda() else "cpu"):
        model = MixtralForCausalLM._from_config(config, dtype=torch.bfloat16)
    model = model.cpu().eval()
    if cuda():
        torch.cuda.empty_cache()
    return model


def greedy_decoder(model, ids: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Prefill ``ids`` with ``model`` (a transformers causal LM, or an engine's model) and decode
    ``WARMUP_TOKENS`` (the first one-token passes load and tune the decode kernels); returns a function that
    decodes one more token greedily and returns it (call under ``torch.no_grad()``)."""
    out = model(ids, use_cache=True)
    state = {"token": out.logits[:, -1:].argmax(-1), "past": out.cache}

    def decode() -> torch.Tensor:
        out = model(state["token"], cache=state["past"], use_cache=True)
        state["token"], state["past"] = out.logits[:, -1:].argmax(-1), out.cache
        return state["token"]

    for _ in range(WARMUP_TOKENS):
        decode()
    return decode


def decode_speed(om, new_tokens: int) -> dict:
    """Greedy decode tokens/s after a 16-token prefill, and the engine's counters over the decoded tokens (on the
    model's own device: the GPU here, the CPU in the test that keeps this honest)."""
    device = om.device
    vocab = om.model.config.vocab_size
    ids = torch.randint(0, vocab, (1, 16), generator=torch.Generator().manual_seed(3)).to(device)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.no_grad():
        decode = greedy_decoder(om.model, ids)
        before = om.stats()
        synchronize()
        start = time.perf_counter()
        for _ in range(new_tokens):
            decode()
        synchronize()
        elapsed = time.perf_counter() - start
    after = om.stats()
    hits, misses, host = (after[name] - before[name] for name in ("hits", "misses", "host"))
    fetches = hits + misses + host
    return {
        "tokens_per_s": new_tokens / elapsed,
        "hit_rate": hits / fetches if fetches else 0.0,
        "copied_bytes_per_token": (after["bytes_loaded"] - before["bytes_loaded"]) / new_tokens,
        "host_per_token": host / new_tokens,  # missed experts the CPU computed from the pinned store
    }


def step_mixtral(quick: bool, pinned_gbps: float | None, result: dict) -> dict:
    """4 Mixtral layers offloaded to the GPU: quantization time, decode at k=8, k=2, k=2+prefetch, and k=2
    with misses left to the cost model (``miss=auto``). Fills ``result`` as it goes (a cut-off run keeps it)."""
    if not cuda():
        raise Skipped("no CUDA device: on a CPU this is `python benchmarks/results.py --only real-shapes`")
    from moe_tui.offload import OffloadConfig, offload_model

    layers = 2 if quick else 4
    new_tokens = 8 if quick else 32
    result.update({"passed": True, "layers": layers, "configurations": [], "init_s": []})
    for bits in (None, 4):
        start = time.perf_counter()
        model = mixtral_layers(layers)
        result["init_s"].append(time.perf_counter() - start)
        print(f"  random weights for {layers} layers in {result['init_s'][-1]:.0f} s", flush=True)
        start = time.perf_counter()
        om = offload_model(model, OffloadConfig(cache_size=8, prefetch=0, expert_bits=bits, device="cuda"))
        build_s = time.perf_counter() - start
        label = om.format.label()
        print(f"  offloaded ({label}) in {build_s:.0f} s", flush=True)
        # miss=auto: the engine times a copy over PCIe against the CPU computing from pinned memory and picks
        # per pass (4-bit experts are in the CUDA kernel's layout, which the CPU cannot compute: copies only)
        for k, prefetch, miss in ((8, 0, "copy"), (2, 0, "copy"), (2, 1, "copy"), (2, 0, "auto")):
            om.set_cache_size(k)
            om.set_prefetch(prefetch)
            om.set_miss(miss)
            speed = decode_speed(om, new_tokens)
            bound = None
            if pinned_gbps and speed["copied_bytes_per_token"]:
                bound = pinned_gbps * 1e9 / speed["copied_bytes_per_token"]
            setting = {"format": label, "k": k, "prefetch": prefetch, "miss": miss, "build_s": build_s}
            result["configurations"].append({**setting, **speed, "copy_bound_tps": bound})
            print(
                f"  {label} k={k} prefetch={prefetch} miss={miss}: {speed['tokens_per_s']:.1f} tok/s, hit rate "
                f"{speed['hit_rate']:.2f}, {speed['copied_bytes_per_token'] / 2**20:.0f} MiB copied per token",
                flush=True,
            )
        om.close()
        del om, model
        torch.cuda.empty_cache()
    return result


# ----------------------------------------------------------------------------------------------- 9. overhead
def decode_cost(model, device: torch.device, tokens: int = 16) -> dict:
    """Median milliseconds per decoded token of ``model`` (a transformers causal LM, or an engine's model, on
    ``device``) after a prefill and warm-up tokens, and the kernels one decode pass launches on a GPU."""
    with torch.no_grad():
        decode = greedy_decoder(model, torch.tensor([[1, 2, 3, 4]], device=device))
        times = []
        for _ in range(tokens):
            start = time.perf_counter()
            decode().tolist()  # the next pass needs the token on the host in generation as well
            times.append(time.perf_counter() - start)
        kernels = None
        if device.type == "cuda":
            activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            with torch.profiler.profile(activities=activities) as profile:
                decode()
                torch.cuda.synchronize()
            kernels = sum(event.device_type == torch.autograd.DeviceType.CUDA for event in profile.events())
    return {"ms_per_token": 1000 * sorted(times)[len(times) // 2], "kernels_per_token": kernels}


def step_overhead(quick: bool) -> dict:
    """transformers' model and the engine, decoding with weights too small to matter, on the GPU."""
    if not cuda():
        raise Skipped("no CUDA device: on a CPU `moe-tui plan` measures this fixed cost itself (its overhead)")
    from moe_tui.offload import OffloadConfig, offload_model
    from moe_tui.probes import miniature_mixtral

    model = miniature_mixtral(32, 8, 2)  # the model `moe-tui plan` measures its overhead on
    device = torch.device("cuda")
    resident = decode_cost(copy.deepcopy(model).to(device), device)
    om = offload_model(copy.deepcopy(model), OffloadConfig(cache_size=8, prefetch=0, device="cuda"))
    try:
        engine = decode_cost(om.model, device)
    finally:
        om.close()
    layers = model.config.num_hidden_layers
    for label, cost in (("resident", resident), ("engine", engine)):
        print(f"  {label}: {cost['ms_per_token']:.1f} ms, {cost['kernels_per_token']} kernels per token", flush=True)
    return {
        "passed": True,
        "layers": layers,
        "resident": resident,
        "engine": engine,
        "engine_ms_per_layer": engine["ms_per_token"] / layers,
        "resident_ms_per_layer": resident["ms_per_token"] / layers,
    }


# ----------------------------------------------------------------------------------------------- driver
class OutOfTime(BaseException):
    """The run's ``--deadline`` passed during a step (a BaseException, so that no step's own handler takes it)."""


def cut_off(signum: int, frame: object) -> None:
    """SIGALRM's handler while a step runs under a deadline."""
    raise OutOfTime


def run_step(name: str, work: Callable[[], dict], seconds_left: float | None = None, kept: dict | None = None) -> dict:
    """Run one step, turning a skip or an error into its report; with ``seconds_left`` (until the run's deadline)
    it is skipped when none are left and cut off when they run out. ``kept`` is what a step that fills it as
    it goes had measured when it failed or was cut off."""
    print(f"[{name}]", flush=True)
    start = time.perf_counter()
    if seconds_left is not None and seconds_left <= 0:
        report = {"status": "skipped", "reason": "out of time: the run's --deadline passed before this step"}
    else:
        report = step_report(work, seconds_left)
        if report["status"] == "failed" and kept:
            report = {**kept, **report}
    report["seconds"] = time.perf_counter() - start
    print(f"[{name}] {report['status']} in {report['seconds']:.0f} s {report.get('reason', '')}", flush=True)
    return report


def step_report(work: Callable[[], dict], seconds_left: float | None) -> dict:
    """``work()``'s report with its status, or the skip, error or deadline that ended it."""
    if seconds_left is not None:
        signal.signal(signal.SIGALRM, cut_off)
        signal.setitimer(signal.ITIMER_REAL, seconds_left)
    start = time.perf_counter()
    try:
        report = work()
        report["status"] = "passed" if report.get("passed", True) else "failed"
    except Skipped as reason:
        report = {"status": "skipped", "reason": str(reason)}
    except OutOfTime:
        report = {
            "status": "failed",
            "error": f"cut off by the run's --deadline after {time.perf_counter() - start:.0f} s",
        }
    except Exception as error:  # a failure is reported and the next step still runs
        report = {"status": "failed", "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    finally:
        if seconds_left is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
    return report


def main() -> int:
    """Run every step and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test of the script)")
    parser.add_argument("--skip", nargs="*", default=[], help="steps to leave out")
    parser.add_argument("--out", type=Path, default=OUT, help="where the JSON goes (default benchmarks/results)")
    parser.add_argument("--note", default="", help="what this run is for, kept in the JSON and shown in RESULTS.md")
    parser.add_argument(
        "--deadline", type=float, metavar="SECONDS",
        help="end within this many seconds: the step running then is cut off and the rest are skipped, each said so"
        " in the JSON (for a lent machine's time limit)",
    )  # fmt: skip
    args = parser.parse_args()
    started = time.perf_counter()
    prefer_expandable_segments()  # as moe-tui does, before anything starts CUDA in this process
    steps: dict[str, dict] = {}
    kept: dict[str, dict] = {"mixtral": {}, "fit": {}}
    plan: dict[str, Callable[[], dict]] = {
        "tests": lambda: step_tests(args.quick),
        "streams": lambda: step_streams(args.quick),
        "syncs": lambda: step_syncs(args.quick),
        "overhead": lambda: step_overhead(args.quick),
        "transfer": lambda: step_transfer(args.quick),
        "cli": lambda: step_cli(args.quick),
        "fit": lambda: step_fit(args.quick, kept["fit"]),
        "kernels": lambda: step_kernels(args.quick),
        "mixtral": lambda: step_mixtral(args.quick, steps.get("transfer", {}).get("pinned_gbps"), kept["mixtral"]),
    }
    gpu = torch.cuda.get_device_name(0) if cuda() else None
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-") if gpu else "check-cpu-only"
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"cuda-{slug}.json"

    def report_cut_off() -> None:
        running = next((name for name in plan if name not in steps), None)
        if running is not None:
            error = "cut off by the run's --deadline inside native code"
            steps[running] = {**kept.get(running, {}), "status": "failed", "error": error}
        write_report(path, gpu, args.quick, steps, args.note)

    if args.deadline is not None:
        stop_at_deadline(args.deadline + DEADLINE_GRACE_S, report_cut_off)
    for name, work in plan.items():
        seconds_left = None if args.deadline is None else args.deadline - (time.perf_counter() - started)
        steps[name] = (
            {"status": "skipped", "reason": "--skip"}
            if name in args.skip
            else run_step(name, work, seconds_left, kept.get(name))
        )
        # after every step: a run cut short keeps what it measured
        write_report(path, gpu, args.quick, steps, args.note)
    failed = [name for name, step in steps.items() if step["status"] == "failed"]
    print(f"wrote {path}; " + (f"FAILED: {', '.join(failed)}" if failed else "no step failed"))
    return 1 if failed else 0


def stop_at_deadline(seconds: float, write: Callable[[], None]) -> None:
    """End the process ``seconds`` from now whatever runs then, calling ``write`` (the report, the step running
    then marked as cut off) first: the deadline's alarm reaches Python code only, and a step can spend minutes
    in one native call (drawing random weights on a CPU did)."""

    def stop() -> None:
        print(f"deadline passed {DEADLINE_GRACE_S:.0f} s ago inside native code: writing the report and ending")
        write()
        os._exit(1)

    timer = threading.Timer(seconds, stop)
    timer.daemon = True
    timer.start()


def write_report(path: Path, gpu: str | None, quick: bool, steps: dict[str, dict], note: str = "") -> None:
    """Write the steps run so far, with the machine's description (and the run's ``note``), as JSON."""
    data = {
        "gpu": gpu,
        "when": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "quick": quick,
        "note": note,
        "steps": steps,
    }
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
