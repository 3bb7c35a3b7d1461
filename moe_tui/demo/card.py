"""The demo model's card (``README.md``), written from the training report so that every number is measured."""

from __future__ import annotations

import math


def model_card(report: dict) -> str:
    """Markdown model card for the report that :func:`moe_tui.demo.train.train` produced."""
    settings = report["settings"]
    params = report["parameters"]
    routing = report["routing"]
    data = report["data"]
    lines = [
        "# demo-mixtral: a miniature Mixtral that answers questions about Python",
        "",
        "The model that `moe-tui` opens when no model is given. It has the architecture of Mixtral 8x7B "
        "(`MixtralForCausalLM`: every layer's feed-forward block is 8 experts with top-2 routing) at a size that "
        "trains on two CPU cores, so that the dashboard's expert, cache and prefetch panels show a real router "
        "that has learned something. It was trained from scratch by `python -m moe_tui.demo.train`, which also "
        "wrote this card: every number below comes from that run.",
        "",
        "## Shape",
        "",
        "| | |",
        "|---|---|",
        f"| layers | {settings['num_layers']} |",
        f"| hidden size | {settings['hidden_size']} |",
        f"| attention heads (key/value heads) | {settings['num_heads']} ({settings['num_kv_heads']}) |",
        f"| experts per layer, routed per token | {settings['num_experts']}, top-{settings['top_k']} |",
        f"| expert intermediate size | {settings['intermediate_size']} |",
        f"| vocabulary | {settings['vocab_size']} (byte-level BPE) |",
        f"| parameters | {_millions(params['total'])} total, {_millions(params['experts'])} in routed experts, "
        f"{_millions(params['active'])} active per token |",
        f"| weights on disk | {report['weights_bytes'] / 1e6:.1f} MB, bfloat16; `config.json` asks for "
        "float32, so `from_pretrained` computes in fp32 |",
        "",
        "## Data",
        "",
        f"Only text that ships with Python {report['python']}: the language reference pages in "
        "`pydoc_data.topics` (what `help('assert')` prints) and the docstrings of the built-ins and of "
        f"{len([m for m in report['doc_modules'] if m != 'builtins'])} common standard-library modules. "
        "Each section, definition or docstring became an answer (long ones cut into pieces of at most 700 "
        "characters, later pieces answering a follow-up such as 'Tell me more'), and questions were drawn from "
        "templates ('What does `json.dumps()` do?', 'Explain the with statement.'), anew each epoch. Some chats "
        "carry a system prompt or an earlier exchange. The loss counts only the assistant's tokens.",
        "",
        f"- examples: {data['train_examples']} for training, {data['val_examples']} held out for validation "
        f"(by a hash of each example); {data['sources']['reference_topics']} from reference topics, "
        f"{data['sources']['docstrings']} from docstrings; {data['answer_characters']:,} characters of answers",
        "",
        "## Training",
        "",
        f"- {report['steps']} steps, {report['epochs']} epochs, {report['tokens_seen']:,} tokens (padding "
        f"excluded), batches of at most {settings['batch_tokens']} tokens, sequences of at most "
        f"{settings['max_len']}",
        f"- AdamW, peak learning rate {settings['learning_rate']:g}, {settings['warmup_steps']} warm-up steps, "
        f"cosine decay to {settings['min_lr_ratio']:g} of the peak, weight decay {settings['weight_decay']:g}, "
        f"gradient clipping {settings['grad_clip']:g}",
        "- router load-balancing loss: transformers' Mixtral `load_balancing_loss_func` over the router logits "
        "(`output_router_logits=True`), applied to each layer on its own, averaged over the layers and weighted "
        f"by `router_aux_loss_coef={settings['router_aux_loss_coef']:g}` (given all layers at once, as "
        "`MixtralForCausalLM` does, it balances only the sum over layers, and a pilot run left experts of single "
        "layers unused)",
        f"- seed {settings['seed']}; Python {report['python']}, torch {report['torch']}, "
        f"transformers {report['transformers']}",
        f"- time (data, tokenizer, training and per-epoch validation): {_minutes(report['train_wall_s'])} wall "
        f"clock with {settings['threads']} threads, {_minutes(report['train_cpu_s'])} of CPU time; the wall clock "
        "grows when other work shares the cores",
        "",
        "## Results",
        "",
        f"Validation loss **{report['val_loss']:.3f}** nats per answer token (perplexity "
        f"**{report['val_perplexity']:.1f}**).",
        "",
        "| epoch | step | validation loss | perplexity | expert usage entropy, lowest / highest layer (bits) |",
        "|---:|---:|---:|---:|---:|",
        *[
            f"| {row['epoch']} | {row['step']} | {row['val_loss']:.3f} | {math.exp(row['val_loss']):.1f} | "
            f"{min(row['usage_entropy_bits']):.2f} / {max(row['usage_entropy_bits']):.2f} |"
            for row in report["history"]
        ],
        "",
        "### Routing",
        "",
        f"Over the validation chats, per layer: how evenly the top-{settings['top_k']} choices spread over the "
        f"experts (usage entropy; {routing['max_entropy_bits']:.0f} bits would be perfectly even, 0 a single "
        "expert), and how sure the router is about each token (mean entropy of its softmax; "
        f"{routing['max_entropy_bits']:.0f} bits would be a coin toss over all experts).",
        "",
        "| layer | usage entropy (bits) | least / most used expert share | router entropy per token (bits) |",
        "|---:|---:|---:|---:|",
        *[
            f"| {layer['layer']} | {layer['usage_entropy_bits']:.3f} | {min(layer['usage']):.1%} / "
            f"{max(layer['usage']):.1%} | {layer['router_entropy_bits']:.3f} |"
            for layer in routing["layers"]
        ],
        "",
        "Hit rate of a per-layer LRU expert cache with k slots, replaying the router's choices token by token "
        "over the validation chats, against what uniformly random routing would give (k / experts):",
        "",
        "| k | " + " | ".join(routing["lru_hit_rate"]) + " |",
        "|---|" + "---:|" * len(routing["lru_hit_rate"]),
        "| LRU hit rate | " + " | ".join(f"{v:.1%}" for v in routing["lru_hit_rate"].values()) + " |",
        "| random routing | " + " | ".join(f"{v:.1%}" for v in routing["uniform_hit_rate"].values()) + " |",
        "",
        "## Sample answers (greedy decoding)",
        "",
        *[line for sample in report["samples"] for line in _sample(sample)],
        "## What it can and cannot do",
        "",
        "- It answers in English, in the style of Python's reference documentation, and often recites or "
        "blends passages it was trained on. Questions close to a documented topic or function work best.",
        "- It does not reason, compute, or write working programs; it knows nothing beyond what these "
        "documents say, mixes up similar topics, and states wrong things with confidence. "
        "Do not rely on its answers.",
        f"- Context: trained on chats of at most {settings['max_len']} tokens; longer conversations degrade quickly.",
        "- It exists to exercise moe-tui's offloading engine and dashboard with a real learned router.",
        "",
        "## Chat format",
        "",
        "`<|begin|>` starts a chat; each turn is `<|system|>`, `<|user|>` or `<|assistant|>`, a newline, the "
        "text and `<|end|>` (the end-of-sequence token). `tokenizer.apply_chat_template(messages, "
        "add_generation_prompt=True)` builds the prompt. `generation_config.json` samples with temperature "
        "0.7, top-p 0.9 and a repetition penalty of 1.1.",
        "",
        "## Reproduce",
        "",
        "```",
        "python -m moe_tui.demo.train --out /tmp/demo-mixtral",
        "```",
        "",
        "rebuilds this directory (the numbers land in `training_report.json`); "
        "`pytest -m slow tests/test_demo_retrain.py` retrains and checks that the validation loss is within 5% "
        "of this one. The data is read from the running Python, so another Python version gives slightly "
        "different data.",
        "",
    ]
    return "\n".join(lines)


def _sample(sample: dict) -> list[str]:
    answer = "\n".join("> " + line if line else ">" for line in sample["answer"].split("\n"))
    return [f"**{sample['prompt']}**", "", answer, ""]


def _millions(count: int) -> str:
    return f"{count / 1e6:.2f} M"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"
