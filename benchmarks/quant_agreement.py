"""How close quantized experts keep the bundled demo model to its unquantized self.

For each prompt of ``samples/prompts/bench.txt`` (as a chat turn), the resident fp32 model writes a greedy
continuation of ``--tokens`` tokens; then the offloaded model in each configuration reads the same sequence,
and the script reports how often its next-token choice (argmax) agrees with the fp32 model's, the cosine
similarity of the logits, and the size of one expert. This is a trained model, so unlike the random weights of
the unit tests its logits have structure for the quantizer to keep.

Configurations: in fp32 (the demo model's own dtype) every bit width runs HQQ's unfused format; in bf16 the
4- and 8-bit experts run the fused formats real models use (``int4``: HQQ's 4-bit weights in PyTorch's int4
kernel layout; ``int8``: per-channel int8), next to bf16 itself, and 4 and 2 bits once more quantized with
min-max rounding instead of HQQ's optimiser (``optimize off``).

Usage: ``python benchmarks/quant_agreement.py [--tokens 32] [--group-size 64]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from moe_tui.bench import load_prompts  # noqa: E402
from moe_tui.offload import OffloadConfig, load_offloaded  # noqa: E402
from moe_tui.paths import DEMO_MODEL_DIR  # noqa: E402
from moe_tui.precision import format_bytes  # noqa: E402

# (compute dtype, expert bits, HQQ optimiser)
CONFIGS = (
    ("fp32", None, True),
    ("fp32", 8, True),
    ("fp32", 4, True),
    ("fp32", 3, True),
    ("fp32", 2, True),
    ("bf16", None, True),
    ("bf16", 8, True),
    ("bf16", 4, True),
    ("bf16", 4, False),
    ("bf16", 2, True),
    ("bf16", 2, False),
)


def continuations(model, tokenizer, prompts: list[str], tokens: int) -> list[tuple[torch.Tensor, int]]:
    """The fp32 model's greedy continuation of every prompt: (prompt and continuation ids, prompt length)."""
    sequences = []
    for text in prompts:
        inputs = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt"
        )
        out = model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        sequences.append((out, inputs["input_ids"].shape[1]))
    return sequences


def next_token_logits(model, sequences: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
    """Logits at every generated position of every sequence, concatenated."""
    rows = []
    with torch.no_grad():
        for ids, start in sequences:
            rows.append(model(ids).logits[0, start - 1 : -1])
    return torch.cat(rows)


def main() -> None:
    """Measure agreement at every expert bit width and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--group-size", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
    reference = AutoModelForCausalLM.from_pretrained(DEMO_MODEL_DIR, dtype=torch.float32).eval()
    prompts = load_prompts(REPO / "samples" / "prompts" / "bench.txt")
    sequences = continuations(reference, tokenizer, prompts, args.tokens)
    expected = next_token_logits(reference, sequences)
    print(f"demo model, {len(prompts)} prompts x {args.tokens} greedy tokens, HQQ group size {args.group_size}")
    print("dtype  experts                       next-token agreement  logit cosine  one expert")
    for dtype, bits, optimize in CONFIGS:
        config = OffloadConfig(
            cache_size=2,
            prefetch=1,
            expert_bits=bits,
            group_size=args.group_size,
            device="cpu",
            dtype=dtype,
            quant_optimize=optimize,
        )
        om = load_offloaded(DEMO_MODEL_DIR, config, progress=lambda *_: None)
        got = next_token_logits(om.model, sequences).float()
        agreement = (expected.argmax(-1) == got.argmax(-1)).float().mean().item()
        cosine = torch.nn.functional.cosine_similarity(expected.flatten(), got.flatten(), dim=0).item()
        label = om.format.label() + ("" if optimize or bits is None else ", optimize off")
        print(f"{dtype:>5}  {label:<28}  {agreement:20.1%}  {cosine:12.4f}  {format_bytes(om.format.nbytes):>10}")
        om.close()


if __name__ == "__main__":
    main()
