"""Measuring configurations: greedy generations timed token by token, counters and memory."""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from moe_tui.bench.loading import Loaded, load
from moe_tui.bench.models import BenchModel
from moe_tui.bench.routing import ForcedRouting
from moe_tui.bench.specs import Spec
from moe_tui.telemetry import Counters


# ----------------------------------------------------------------------------------------------- measuring
@dataclass(frozen=True)
class Sample:
    """One generation: prompt length, new tokens, time to first token and the decode time after it."""

    prompt_tokens: int
    new_tokens: int
    ttft_s: float
    decode_s: float

    @property
    def decode_tps(self) -> float:
        """Tokens per second after the first new token."""
        return (self.new_tokens - 1) / self.decode_s if self.decode_s > 0 else 0.0

    @property
    def prefill_tps(self) -> float:
        """Prompt tokens per second up to the first new token."""
        return self.prompt_tokens / self.ttft_s if self.ttft_s > 0 else 0.0


class _Clock:
    """A transformers streamer that notes when each new token arrives (the first call is the prompt).

    With ``on_token`` it also hands each new token id over, and whether it is the answer's first (to write the
    token into a recorded trace).
    """

    def __init__(self, on_token: Callable[[int, bool], None] | None = None) -> None:
        self.times: list[float] = []
        self.on_token = on_token

    def put(self, value: Any) -> None:
        """Called with the prompt, then with each new token."""
        self.times.append(time.perf_counter())
        if self.on_token is not None and len(self.times) > 1:
            self.on_token(int(value.reshape(-1)[0]), len(self.times) == 2)

    def end(self) -> None:
        """Called when generation ends."""


def generate_once(loaded: Loaded, ids: list[int], new_tokens: int) -> Sample:
    """Greedily generate exactly ``new_tokens`` tokens after ``ids`` and time it (with the chat's KV cache)."""
    import torch

    from moe_tui.chat.kv_blocks import new_cache

    input_ids = torch.tensor([ids], device=loaded.device)
    clock = _Clock(loaded.on_token)
    with torch.inference_mode():
        start = time.perf_counter()
        loaded.model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            streamer=clock,
            pad_token_id=0,
            cache=new_cache(loaded.model),
        )
        if loaded.device == "cuda":
            torch.cuda.synchronize()
    tokens = clock.times[1:]
    return Sample(len(ids), len(tokens), tokens[0] - start, tokens[-1] - tokens[0])


class PeakRSS:
    """Samples this process's resident memory in a thread (every 10 ms) and keeps the peak."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._process.memory_info().rss)


@dataclass
class Result:
    """The measurements of one configuration."""

    label: str
    kind: str
    samples: list[Sample]
    stats: Counters | None  # what the engine counted over the measured runs (None for baselines)
    fast_tier_bytes: int
    slow_tier_bytes: int
    peak_rss_bytes: int
    fast_peak_bytes: int | None = None
    expert_format: str = ""

    @property
    def decode_tps(self) -> float:
        """Median decode tokens/s."""
        return statistics.median(s.decode_tps for s in self.samples)

    @property
    def prefill_tps(self) -> float:
        """Median prefill tokens/s."""
        return statistics.median(s.prefill_tps for s in self.samples)

    @property
    def ttft_s(self) -> float:
        """Median time to first token."""
        return statistics.median(s.ttft_s for s in self.samples)

    @property
    def new_tokens(self) -> int:
        """New tokens generated in the measured runs."""
        return sum(s.new_tokens for s in self.samples)

    def per_token(self, key: str) -> float | None:
        """An engine counter's growth per generated token (None for baselines)."""
        if self.stats is None:
            return None
        return getattr(self.stats, key) / self.new_tokens

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {
            "label": self.label,
            "kind": self.kind,
            "expert_format": self.expert_format,
            "decode_tokens_per_s": self.decode_tps,
            "prefill_tokens_per_s": self.prefill_tps,
            "ttft_s": self.ttft_s,
            "samples": [{**asdict(s), "decode_tps": s.decode_tps} for s in self.samples],
            "engine": None if self.stats is None else {**asdict(self.stats), **self.stats.rates()},
            "bytes_per_token": self.per_token("bytes_loaded"),
            "stall_s_per_token": self.per_token("load_s"),
            "host_per_token": self.per_token("host"),
            "fast_tier_bytes": self.fast_tier_bytes,
            "fast_peak_bytes": self.fast_peak_bytes,
            "slow_tier_bytes": self.slow_tier_bytes,
            "peak_rss_bytes": self.peak_rss_bytes,
        }


def _counter_delta(before: dict[str, Any], after: dict[str, Any]) -> Counters:
    """What an engine counted between two ``stats()`` readings."""
    return Counters.from_mapping(after) - Counters.from_mapping(before)


@dataclass(frozen=True)
class Settings:
    """What every configuration runs: prompts (as token ids), new tokens per prompt, measured runs, device."""

    prompts: list[list[int]]
    new_tokens: int = 32
    runs: int = 2
    device: str = "cpu"
    warmup_tokens: int = 4
    quant_cache: str | None = None  # keep quantized stores here across runs (None: only for this run)


def measure(loaded: Loaded, settings: Settings) -> Result:
    """Warm up once, then generate from every prompt ``runs`` times; counters are differences over those runs."""
    import torch

    generate_once(loaded, settings.prompts[0], settings.warmup_tokens)
    before = loaded.engine.stats() if loaded.engine is not None else None
    cuda = settings.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    samples = []
    with PeakRSS() as rss:
        for _ in range(settings.runs):
            for ids in settings.prompts:
                samples.append(generate_once(loaded, ids, settings.new_tokens))
    stats = _counter_delta(before, loaded.engine.stats()) if before is not None else None
    fast_peak = loaded.fast_tier_bytes + torch.cuda.max_memory_allocated() - base if cuda else None
    return Result(
        label=loaded.spec.label,
        kind=loaded.spec.kind,
        samples=samples,
        stats=stats,
        fast_tier_bytes=loaded.fast_tier_bytes,
        slow_tier_bytes=loaded.slow_tier_bytes,
        peak_rss_bytes=rss.peak,
        fast_peak_bytes=fast_peak,
        expert_format=loaded.expert_format,
    )


def _quant_cache(settings: Settings) -> Path | None:
    return Path(settings.quant_cache).expanduser() if settings.quant_cache else None


def run_configs(
    source: BenchModel,
    specs: Sequence[Spec],
    settings: Settings,
    routing: ForcedRouting | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> list[Result]:
    """Load, measure and release each configuration in turn (one at a time, so memory figures stay apart)."""
    results = []
    with tempfile.TemporaryDirectory(prefix="moe-tui-bench-") as workdir:
        for spec in specs:
            progress(f"loading {spec.label}")
            loaded = load(spec, source, settings.device, Path(workdir), _quant_cache(settings))
            try:
                if routing is not None:
                    routing.install(loaded.model)
                progress(f"running {spec.label}")
                results.append(measure(loaded, settings))
            finally:
                if routing is not None:
                    routing.remove()
                loaded.close()
    return results


def run_interleaved(
    source: BenchModel,
    specs: Sequence[Spec],
    settings: Settings,
    progress: Callable[[str], None] = lambda message: None,
) -> list[Result]:
    """Load every configuration at once and alternate them prompt by prompt, in an order reversed after each
    prompt, so that a machine whose speed drifts (other work, thermal limits) and the CPU caches one
    configuration leaves to the next affect them all alike: the setting for ratios close to 1."""
    with tempfile.TemporaryDirectory(prefix="moe-tui-bench-") as workdir:
        loaded = []
        try:
            for spec in specs:
                progress(f"loading {spec.label}")
                loaded.append(load(spec, source, settings.device, Path(workdir), _quant_cache(settings)))
            for item in loaded:
                generate_once(item, settings.prompts[0], settings.warmup_tokens)
            before = [item.engine.stats() if item.engine is not None else None for item in loaded]
            samples: list[list[Sample]] = [[] for _ in loaded]
            progress("running " + ", ".join(spec.label for spec in specs) + " in turn")
            order = list(range(len(loaded)))
            with PeakRSS() as rss:
                for _ in range(settings.runs):
                    for ids in settings.prompts:
                        for index in order:
                            samples[index].append(generate_once(loaded[index], ids, settings.new_tokens))
                        order.reverse()  # A B C, C B A, ...: no configuration always follows the same one
            return [
                Result(
                    label=item.spec.label,
                    kind=item.spec.kind,
                    samples=samples[index],
                    stats=_counter_delta(before[index], item.engine.stats()) if before[index] is not None else None,
                    fast_tier_bytes=item.fast_tier_bytes,
                    slow_tier_bytes=item.slow_tier_bytes,
                    peak_rss_bytes=rss.peak,
                    expert_format=item.expert_format,
                )
                for index, item in enumerate(loaded)
            ]
        finally:
            for item in loaded:
                item.close()
