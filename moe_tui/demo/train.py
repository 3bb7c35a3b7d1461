"""Train the bundled demo model from scratch: ``python -m moe_tui.demo.train [--out DIR]``.

A miniature ``MixtralForCausalLM`` (8 experts, top-2 routing) learns to answer questions about Python from
the documentation that ships with the interpreter (see :mod:`moe_tui.demo.data`), with Mixtral's router
load-balancing loss. Everything is seeded, so a rerun on the same Python and torch reproduces the model up
to floating-point noise. The script writes the model, the tokenizer, ``training_report.json`` (every number
the card quotes) and the model card ``README.md`` into the output directory.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from moe_tui.demo.data import (
    DOC_MODULES,
    SYSTEM_PROMPT,
    Example,
    build_examples,
    corpus_text,
    python_version,
    split_examples,
)
from moe_tui.paths import DEMO_MODEL_DIR

FOLLOW_UPS = ("Tell me more.", "Go on.", "What else?", "Can you continue?", "More, please.")
CARD_PROMPTS = (
    "What does the assert statement do?",
    "What is a list comprehension?",
    "Explain the with statement.",
    "What does `len()` do?",
    "What does json.dumps() do?",
    "What is the pathlib module?",
    "How do I read a file line by line?",
)
IGNORE_INDEX = -100
# What the model claims to read (config.json): a little more than the longest training chat (``max_len``), so
# that a chat front end keeps conversations near the length the model learned on. RoPE has no learned weights,
# so this number changes no parameter.
CONTEXT_LENGTH = 512


@dataclass(frozen=True)
class Settings:
    """Everything that shapes the model and its training; the defaults build the shipped model."""

    seed: int = 1234
    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 256
    num_layers: int = 6
    num_heads: int = 4
    num_kv_heads: int = 2
    num_experts: int = 8
    top_k: int = 2
    router_aux_loss_coef: float = 0.02
    max_len: int = 448
    batch_tokens: int = 6144
    epochs: int = 16
    max_steps: int = 0
    learning_rate: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    val_fraction: float = 0.04
    system_prompt_share: float = 0.2
    context_share: float = 0.15
    follow_up_share: float = 0.5
    threads: int = 2
    log_every: int = 20


@dataclass
class Encoded:
    """One tokenized conversation: input ids and labels (``IGNORE_INDEX`` outside assistant turns)."""

    input_ids: list[int]
    labels: list[int]


def conversation(example: Example, rng: random.Random, settings: Settings, pool: list[Example]) -> list[dict]:
    """Chat messages for one example: its question and answer, sometimes after a system prompt and a prior turn.

    A continuation chunk is asked either as "Tell me more about X." on its own or, half the time, as a bare
    follow-up ("Go on.") after the previous chunk's exchange. Other examples sometimes follow an unrelated
    exchange, so that the model sees multi-turn chats.
    """
    messages: list[dict] = []
    if rng.random() < settings.system_prompt_share:
        messages.append({"role": "system", "content": SYSTEM_PROMPT})
    if example.previous is not None and rng.random() < settings.follow_up_share:
        previous = example.previous
        messages += [
            {"role": "user", "content": previous.question(rng)},
            {"role": "assistant", "content": previous.answer},
            {"role": "user", "content": rng.choice(FOLLOW_UPS)},
        ]
    else:
        if rng.random() < settings.context_share:
            other = rng.choice(pool)
            messages += [
                {"role": "user", "content": other.question(rng)},
                {"role": "assistant", "content": other.answer},
            ]
        messages.append({"role": "user", "content": example.question(rng)})
    messages.append({"role": "assistant", "content": example.answer})
    return messages


def encode(tokenizer, messages: list[dict]) -> Encoded:
    """Token ids of a chat rendered with the chat template; labels only on assistant answers and their end token."""
    input_ids = _template_ids(tokenizer, messages)
    labels = [IGNORE_INDEX] * len(input_ids)
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _template_ids(tokenizer, messages[:index], add_generation_prompt=True)
        start, end = len(prompt), len(_template_ids(tokenizer, messages[: index + 1]))
        if input_ids[:start] != prompt:
            raise RuntimeError("chat template is not prefix-stable; labels would be misaligned")
        # The answer and its <|end|> token; the newline after <|end|> is never generated.
        labels[start : end - 1] = input_ids[start : end - 1]
    return Encoded(input_ids, labels)


def _template_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_split(tokenizer, examples: list[Example], seed: int, settings: Settings) -> list[Encoded]:
    """Every example as one conversation (phrasing drawn with ``seed``); longer than ``max_len`` is cut."""
    rng = random.Random(seed)
    encoded = []
    for example in examples:
        item = encode(tokenizer, conversation(example, rng, settings, examples))
        encoded.append(Encoded(item.input_ids[: settings.max_len], item.labels[: settings.max_len]))
    return encoded


def make_batches(items: list[Encoded], batch_tokens: int, rng: random.Random | None) -> list[list[int]]:
    """Index lists of similar-length items, each batch at most ``batch_tokens`` including padding.

    With ``rng`` the order is shuffled (items in windows, then sorted by length, then batches shuffled);
    without it, batches follow length order (for evaluation).
    """
    order = list(range(len(items)))
    if rng is not None:
        rng.shuffle(order)
    window = max(1, len(order) // 8) if rng is not None else len(order)
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        group = sorted(order[start : start + window], key=lambda i: len(items[i].input_ids))
        current: list[int] = []
        for index in group:
            longest = max([len(items[i].input_ids) for i in current] + [len(items[index].input_ids)])
            if current and longest * (len(current) + 1) > batch_tokens:
                batches.append(current)
                current = []
            current.append(index)
        if current:
            batches.append(current)
    if rng is not None:
        rng.shuffle(batches)
    return batches


def epoch_plan(tokenizer, examples: list[Example], settings: Settings, epoch: int):
    """One epoch's conversations (questions drawn anew) and its shuffled batches, both seeded by the epoch."""
    seed = settings.seed * 1000 + epoch
    items = encode_split(tokenizer, examples, seed, settings)
    return items, make_batches(items, settings.batch_tokens, random.Random(seed))


def collate(items: list[Encoded], pad_id: int):
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` tensors."""
    import torch

    length = max(len(item.input_ids) for item in items)
    input_ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), length), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item.input_ids)
        input_ids[row, :n] = torch.tensor(item.input_ids)
        labels[row, :n] = torch.tensor(item.labels)
        mask[row, :n] = 1
    return input_ids, mask, labels


def build_model(settings: Settings, tokenizer):
    """A freshly initialised miniature Mixtral for this tokenizer (seeded)."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_kv_heads,
        num_local_experts=settings.num_experts,
        num_experts_per_tok=settings.top_k,
        max_position_embeddings=CONTEXT_LENGTH,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        router_aux_loss_coef=settings.router_aux_loss_coef,
        output_router_logits=False,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(settings.seed)
    return MixtralForCausalLM(config)


def training_losses(model, input_ids, mask, labels):
    """(cross-entropy over labelled tokens, router load-balancing loss averaged over the MoE layers).

    The balancing loss is transformers' Mixtral ``load_balancing_loss_func`` applied to each layer's router
    logits on its own and averaged (2.0 when perfectly balanced with top-2). Passing all layers at once, as
    ``MixtralForCausalLM`` does, balances only the experts' usage summed over layers, which in a pilot run
    left some experts of single layers unused. The caller weights it by ``router_aux_loss_coef``.
    """
    import torch
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    out = model(input_ids=input_ids, attention_mask=mask, output_router_logits=True, use_cache=False)
    logits = out.logits[:, :-1]
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )
    config = model.config
    per_layer = [
        load_balancing_loss_func((layer_logits,), config.num_local_experts, config.num_experts_per_tok, mask)
        for layer_logits in out.router_logits
    ]
    return ce, torch.stack(per_layer).mean()


def learning_rate(step: int, total: int, settings: Settings) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` of the peak."""
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = min(1.0, (step - settings.warmup_steps) / max(1, total - settings.warmup_steps))
    floor = settings.min_lr_ratio
    return settings.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def evaluate(model, items: list[Encoded], pad_id: int, batch_tokens: int) -> tuple[float, list[float]]:
    """Mean cross-entropy (nats) per answer token over ``items``, and each layer's expert usage entropy (bits)."""
    import torch

    config = model.config
    model.eval()
    total_loss = 0.0
    total_tokens = 0
    counts = torch.zeros(config.num_hidden_layers, config.num_local_experts, dtype=torch.float64)
    with torch.no_grad():
        for batch in make_batches(items, batch_tokens, None):
            input_ids, mask, labels = collate([items[i] for i in batch], pad_id)
            out = model(input_ids=input_ids, attention_mask=mask, use_cache=False, output_router_logits=True)
            logits = out.logits
            shifted = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                shifted.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            total_loss += float(loss)
            total_tokens += int((shifted != IGNORE_INDEX).sum())
            keep = mask.reshape(-1).bool()
            for layer, router in enumerate(out.router_logits):
                chosen = torch.topk(router[keep], config.num_experts_per_tok, dim=-1).indices.reshape(-1)
                counts[layer] += torch.bincount(chosen, minlength=config.num_local_experts)
    model.train()
    shares = counts / counts.sum(dim=1, keepdim=True)
    entropies = (-(shares * torch.log2(shares.clamp_min(1e-30))).sum(dim=1)).tolist()
    return total_loss / max(1, total_tokens), entropies


def train(settings: Settings, out_dir: Path, log=print) -> dict:
    """Build data and tokenizer, train, evaluate, save everything into ``out_dir``; returns the report."""
    import torch
    import transformers

    from moe_tui.demo.tokenizer import train_tokenizer

    torch.set_num_threads(settings.threads)
    random.seed(settings.seed)
    wall_start, cpu_start = time.perf_counter(), time.process_time()

    examples = build_examples()
    train_examples, val_examples = split_examples(examples, settings.val_fraction)
    tokenizer = train_tokenizer(corpus_text(train_examples), settings.vocab_size, CONTEXT_LENGTH)
    val_items = encode_split(tokenizer, val_examples, settings.seed + 1, settings)
    log(
        f"data: {len(train_examples)} train / {len(val_examples)} val examples, "
        f"{sum(len(e.answer) for e in examples)} answer characters, vocabulary {len(tokenizer)}"
    )

    model = build_model(settings, tokenizer)
    model.train()
    counts = parameter_counts(model, settings)
    log(f"model: {counts['total'] / 1e6:.2f} M parameters, {counts['active'] / 1e6:.2f} M active per token")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "embed" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.learning_rate,
        betas=(0.9, 0.95),
        eps=1e-8,
    )

    plans = [epoch_plan(tokenizer, train_examples, settings, epoch) for epoch in range(settings.epochs)]
    total_steps = sum(len(batches) for _, batches in plans)
    if settings.max_steps:
        total_steps = min(total_steps, settings.max_steps)
    log(f"training: {total_steps} steps over {settings.epochs} epochs, batches of <= {settings.batch_tokens} tokens")

    history: list[dict] = []
    step = 0
    tokens_seen = 0
    window = {"ce": 0.0, "aux": 0.0, "n": 0}
    for epoch, (train_items, batches) in enumerate(plans):
        if step >= total_steps:
            break
        for batch in batches:
            if step >= total_steps:
                break
            input_ids, mask, labels = collate([train_items[i] for i in batch], tokenizer.pad_token_id)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, total_steps, settings)
            ce, aux = training_losses(model, input_ids, mask, labels)
            (ce + settings.router_aux_loss_coef * aux).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            window["ce"] += float(ce.detach())
            window["aux"] += float(aux.detach())
            window["n"] += 1
            tokens_seen += int(mask.sum())
            step += 1
            if step % settings.log_every == 0 or step == total_steps:
                wall = time.perf_counter() - wall_start
                cpu = time.process_time() - cpu_start
                log(
                    f"step {step}/{total_steps} epoch {epoch} lr {learning_rate(step - 1, total_steps, settings):.2e} "
                    f"loss {window['ce'] / window['n']:.4f} aux {window['aux'] / window['n']:.4f} "
                    f"tokens {tokens_seen} wall {wall:.0f}s cpu {cpu:.0f}s"
                )
                window = {"ce": 0.0, "aux": 0.0, "n": 0}
        val_loss, entropies = evaluate(model, val_items, tokenizer.pad_token_id, settings.batch_tokens)
        history.append({"epoch": epoch, "step": step, "val_loss": val_loss, "usage_entropy_bits": entropies})
        log(
            f"epoch {epoch} done at step {step}: val loss {val_loss:.4f} (perplexity {math.exp(val_loss):.2f}), "
            f"usage entropy per layer {' '.join(f'{e:.2f}' for e in entropies)} bits"
        )

    train_wall = time.perf_counter() - wall_start
    train_cpu = time.process_time() - cpu_start
    model.eval()
    report = {
        "settings": asdict(settings),
        "python": python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "data": {
            "train_examples": len(train_examples),
            "val_examples": len(val_examples),
            "answer_characters": sum(len(e.answer) for e in examples),
            "sources": _source_counts(examples),
        },
        "doc_modules": ["builtins", *DOC_MODULES],
        "parameters": counts,
        "steps": total_steps,
        "epochs": len(history),
        "tokens_seen": tokens_seen,
        "train_wall_s": train_wall,
        "train_cpu_s": train_cpu,
        "val_loss": history[-1]["val_loss"],
        "val_perplexity": math.exp(history[-1]["val_loss"]),
        "history": history,
    }
    report["routing"] = routing_report(model, val_items, settings)
    report["samples"] = sample_answers(model, tokenizer, CARD_PROMPTS)
    save(model, tokenizer, out_dir, report)
    return report


def parameter_counts(model, settings: Settings) -> dict:
    """Total parameters, routed-expert parameters and parameters active per token (top-k experts only)."""
    total = sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    active = total - experts + experts * settings.top_k // settings.num_experts
    return {"total": total, "experts": experts, "active": active}


def routing_report(model, items: list[Encoded], settings: Settings) -> dict:
    """Per-layer usage and router entropy, and the LRU hit rate at every cache size, over the validation chats."""
    import torch

    from moe_tui.demo.routing import layer_routing, lru_counters, router_logits, top_k_choices

    per_layer: list[list] = [[] for _ in range(settings.num_layers)]
    hits = {k: [0, 0] for k in range(1, settings.num_experts + 1)}
    for item in items:
        ids = torch.tensor([item.input_ids])
        for layer, logits in enumerate(router_logits(model, ids)):
            per_layer[layer].append(logits)
            choices = top_k_choices(logits, settings.top_k)
            for k in hits:
                counters = lru_counters(choices, k)
                hits[k][0] += counters.hits
                hits[k][1] += counters.accesses
    layers = [layer_routing(i, torch.cat(chunks), settings.top_k) for i, chunks in enumerate(per_layer)]
    return {
        "layers": [asdict(layer) for layer in layers],
        "max_entropy_bits": math.log2(settings.num_experts),
        "lru_hit_rate": {str(k): h / a for k, (h, a) in hits.items()},
        "uniform_hit_rate": {str(k): min(1.0, k / settings.num_experts) for k in hits},
    }


def sample_answers(model, tokenizer, prompts: tuple[str, ...], max_new_tokens: int = 120) -> list[dict]:
    """Greedy answers to ``prompts`` (what the model card shows)."""
    import torch

    samples = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
        answer = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        samples.append({"prompt": prompt, "answer": answer.strip()})
    return samples


def save(model, tokenizer, out_dir: Path, report: dict) -> None:
    """Write weights (bfloat16 on disk; config says float32 so loaders compute in fp32), tokenizer, card."""
    import torch
    from transformers import GenerationConfig

    from moe_tui.demo.card import model_card

    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out_dir)
    model.to(torch.float32)
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["dtype"] = "float32"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(out_dir)
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
        temperature=0.7,
        top_p=0.9,
        repetition_penalty=1.1,
        max_new_tokens=256,
    ).save_pretrained(out_dir)
    report["weights_bytes"] = (out_dir / "model.safetensors").stat().st_size
    (out_dir / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "README.md").write_text(model_card(report))


def _source_counts(examples: list[Example]) -> dict:
    topics = sum(e.source.startswith("topics:") for e in examples)
    return {"reference_topics": topics, "docstrings": len(examples) - topics}


def main(argv: list[str] | None = None) -> int:
    """Command line: train with the shipped settings (or overrides) and write the model directory."""
    parser = argparse.ArgumentParser(prog="python -m moe_tui.demo.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEMO_MODEL_DIR, help=f"output directory (default {DEMO_MODEL_DIR})")
    for name, value in asdict(Settings()).items():
        if isinstance(value, (int, float)):
            parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    overrides = {name: getattr(args, name) for name in asdict(Settings()) if hasattr(args, name)}
    settings = replace(Settings(), **overrides)
    report = train(settings, args.out, log=lambda line: print(line, flush=True))
    print(json.dumps({k: report[k] for k in ("val_loss", "val_perplexity", "train_wall_s", "train_cpu_s")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
