"""Does the fit check's estimate of an answer's memory hold at real shapes?

Builds a 2-layer model shaped like Mixtral-8x7B (SDPA attention) or gpt-oss-20b (eager attention, which writes
out its score matrices) with random bf16 weights and the real hidden, expert and vocabulary sizes, offloads it
on the CPU (k=2, unquantized), then answers prompts of several lengths through the chat session (which
prefills in chunks of ``moe_tui.fit.PREFILL_CHUNK`` tokens) while a thread samples the process's RSS every
2 ms. For each prompt it reports the RSS the answer added at its peak next to what the fit check counts for it
(the KV cache of prompt + answer plus one chunk's activations and the logits), the highest of ``--runs``.

Before each run the C library is asked to hand freed memory back (glibc's ``malloc_trim``): without it the
memory an earlier answer freed but the process kept would be reused unseen, and the growth would understate
what an answer needs (by 5x at Mixtral's shapes)::

    python benchmarks/fit_check.py --runs 3 --json benchmarks/results/fit-check.json
    python benchmarks/fit_check.py --model gpt-oss-20b --runs 3 --json benchmarks/results/fit-check-gpt-oss.json
    python benchmarks/fit_check.py --glibc-default --runs 3 --json benchmarks/results/fit-check-glibc-default.json
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import psutil
import torch
from transformers import AutoModelForCausalLM, GptOssConfig, MixtralConfig, PretrainedConfig

from moe_tui.offload import memory


def mixtral_8x7b() -> PretrainedConfig:
    """Two layers of Mixtral-8x7B."""
    return MixtralConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=2,
        num_attention_heads=32,
        num_key_value_heads=8,
        num_local_experts=8,
        num_experts_per_tok=2,
        max_position_embeddings=32768,
    )


def gpt_oss_20b() -> PretrainedConfig:
    """Two layers of gpt-oss-20b (one sliding, one full attention; transformers runs its attention eagerly)."""
    return GptOssConfig(
        vocab_size=201088,
        hidden_size=2880,
        intermediate_size=2880,
        num_hidden_layers=2,
        num_attention_heads=64,
        num_key_value_heads=8,
        head_dim=64,
        num_local_experts=32,
        num_experts_per_tok=4,
        sliding_window=128,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=131072,
    )


SHAPES = {"mixtral-8x7b": mixtral_8x7b, "gpt-oss-20b": gpt_oss_20b}


class PeakRss:
    """The highest RSS seen while the block runs (sampled every 2 ms), above the RSS at its start (after handing
    the memory the process freed but kept back to the system, where the C library is glibc)."""

    def __enter__(self) -> PeakRss:
        memory.hand_back_freed()
        self.process = psutil.Process()
        self.start = self.process.memory_info().rss
        self.peak = self.start
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def grown(self) -> int:
        """Bytes the block added at its peak."""
        return self.peak - self.start


def shaped_model(name: str, drawn_on: str = "cpu"):
    """Two layers of the model ``name`` (a key of ``SHAPES``) with random bf16 weights, on the CPU; with
    ``drawn_on="cuda"`` the weights are drawn on the GPU (seconds, where a CPU takes minutes) and moved over."""
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # built in bf16 directly: fp32 first would need twice the RAM
    try:
        with torch.device(drawn_on):
            model = AutoModelForCausalLM.from_config(SHAPES[name]())
        return model.cpu().eval()
    finally:
        torch.set_default_dtype(torch.float32)


def answering_session(engine, name: str):
    """A chat session on ``engine`` with a small trained tokenizer, prefilling every prompt whole."""
    from moe_tui.chat.session import ChatSession
    from moe_tui.demo.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(["experts route tokens " * 50], vocab_size=300, model_max_length=32768)
    session = ChatSession(engine, tokenizer, f"{name}-2-layers")
    session.keep_kv = False  # every run prefills its whole prompt
    return session


def question(words: int) -> list[dict]:
    """A one-message conversation of ``words`` words (900 words: about 3500 tokens with that tokenizer)."""
    return [{"role": "user", "content": " ".join(f"w{i % 97}" for i in range(words))}]


def main() -> None:
    """Measure and print (and optionally write JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(SHAPES), default="mixtral-8x7b")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--glibc-default",
        action="store_true",
        help="leave glibc keeping freed blocks (what the engine changes with memory.return_large_frees), to compare",
    )
    args = parser.parse_args()

    from moe_tui import fit
    from moe_tui.chat.generation import GenerationSettings
    from moe_tui.offload import OffloadConfig, offload_model

    if args.glibc_default:
        memory.return_large_frees = lambda: False
    model = shaped_model(args.model)
    engine = offload_model(model, OffloadConfig(cache_size=2, prefetch=0), progress=lambda *a: None)
    session = answering_session(engine, args.model)
    costs = fit.TokenCosts.of(model.config, 2, model.config.intermediate_size)
    settings = GenerationSettings(temperature=0, max_new_tokens=args.new_tokens)
    session.generate(question(20), settings, lambda _: None)  # first writes into the slots' pages: not the answer's
    rows = []
    for words in (60, 400, 900):
        grown, tokens = [], 0
        for _ in range(args.runs):
            with PeakRss() as peak:
                result = session.generate(question(words), settings, lambda _: None)
            grown.append(peak.grown)
            tokens = result.prompt_tokens + result.tokens
        counted = fit.fast_tier_need(0, 0, 0, costs, tokens, "cpu")
        answer = counted.kv_cache + counted.activations
        row = {"tokens": tokens, "measured": max(grown), "counted": answer}
        if costs.score_bytes_per_pair:  # what the count would be if it left eager attention's scores out
            fused = fit.fast_tier_need(0, 0, 0, replace(costs, score_bytes_per_pair=0), tokens, "cpu")
            row["counted_without_scores"] = fused.kv_cache + fused.activations
        rows.append(row)
        print(
            f"{tokens:5d} tokens: answer added {max(grown) / 2**20:7.1f} MiB at its peak; the fit "
            f"counts {answer / 2**20:7.1f} MiB (KV {counted.kv_cache / 2**20:.1f} + activations "
            f"{counted.activations / 2**20:.1f}); ratio {max(grown) / answer:.2f}"
        )
    if args.json:
        attention = model.config._attn_implementation
        report = {"model": args.model, "attention": attention, "rows": rows, "margin_cpu": fit.MARGIN["cpu"]}
        report["glibc"] = "default" if args.glibc_default else "large frees returned"
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
