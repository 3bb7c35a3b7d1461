"""The bundled demo model: files, loading, answers in real words, and routing that has learned something."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from moe_tui.demo.data import Example, build_examples
from moe_tui.demo.routing import layer_routing, model_lru_hit_rate, router_logits
from moe_tui.demo.train import IGNORE_INDEX, encode
from moe_tui.paths import DEMO_MODEL_DIR

PROMPTS = ("What does the assert statement do?", "What is the pathlib module?", "What does `len()` do?")
CACHE_SIZE = 2
MAX_BYTES = 30 * 1024 * 1024


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    return AutoModelForCausalLM.from_pretrained(DEMO_MODEL_DIR).eval()


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    return build_examples()


@pytest.fixture(scope="module")
def vocabulary(examples: list[Example]) -> set[str]:
    """Every word that occurs in the training text (answers and questions)."""
    words: set[str] = set()
    for example in examples:
        words.update(_words(example.answer))
        words.update(_words(example.subject))
    return words


def _words(text: str) -> list[str]:
    return [word.lower() for word in re.findall(r"[A-Za-z]+", text)]


def _prompt_ids(tokenizer, prompt: str) -> torch.Tensor:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]


def _greedy(model, tokenizer, prompt: str, max_new_tokens: int = 80) -> tuple[torch.Tensor, torch.Tensor]:
    prompt_ids = _prompt_ids(tokenizer, prompt)
    with torch.no_grad():
        out = model.generate(prompt_ids, max_new_tokens=max_new_tokens, do_sample=False)
    return prompt_ids, out[0, prompt_ids.shape[1] :]


def _known_share(text: str, vocabulary: set[str]) -> float:
    words = _words(text)
    return sum(word in vocabulary for word in words) / len(words) if words else 0.0


def test_files_shape_and_size() -> None:
    files = {path.name: path.stat().st_size for path in DEMO_MODEL_DIR.iterdir() if path.is_file()}
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "README.md"):
        assert name in files
    assert sum(files.values()) <= MAX_BYTES
    config = json.loads((DEMO_MODEL_DIR / "config.json").read_text())
    assert config["model_type"] == "mixtral"
    assert config["architectures"] == ["MixtralForCausalLM"]
    assert config["num_local_experts"] == 8
    assert config["num_experts_per_tok"] == 2
    assert config["num_hidden_layers"] >= 6


def test_model_card_quotes_the_training_report() -> None:
    report = json.loads((DEMO_MODEL_DIR / "training_report.json").read_text())
    card = (DEMO_MODEL_DIR / "README.md").read_text()
    assert f"{report['val_loss']:.3f}" in card
    assert f"{report['val_perplexity']:.1f}" in card
    for layer in report["routing"]["layers"]:
        assert f"{layer['usage_entropy_bits']:.3f}" in card


def test_loads_in_fp32_with_a_working_chat_template(model, tokenizer) -> None:
    assert type(model).__name__ == "MixtralForCausalLM"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "What is a list?"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith(tokenizer.bos_token + "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n")
    assert text.endswith("<|user|>\nWhat is a list?<|end|>\n<|assistant|>\n")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids[:2]) == ["<|begin|>", "<|system|>"]
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|end|>")


def test_greedy_answer_is_mostly_words_from_the_training_text(model, tokenizer, vocabulary) -> None:
    _, answer_ids = _greedy(model, tokenizer, PROMPTS[0])
    answer = tokenizer.decode(answer_ids, skip_special_tokens=True)
    generator = torch.Generator().manual_seed(0)
    noise_ids = torch.randint(len(tokenizer), (len(answer_ids),), generator=generator)
    noise = tokenizer.decode(noise_ids, skip_special_tokens=True)
    share, noise_share = _known_share(answer, vocabulary), _known_share(noise, vocabulary)
    print(f"\nanswer: {answer!r}\nknown-word share: answer {share:.0%}, random tokens {noise_share:.0%}")
    assert len(_words(answer)) >= 12
    assert len(set(_words(answer))) >= 8
    assert share >= 0.9
    assert noise_share < 0.9  # the check can fail: random tokens do not pass it


def test_router_is_neither_collapsed_nor_uniform(model, tokenizer, examples: list[Example]) -> None:
    """Routing over reference chats (questions and the documentation's answers) per layer."""
    subjects = ("the assert statement", "the with statement", "len()", "json.dumps()")
    answers = {s: next(e.answer for e in examples if e.subject == s and e.kind != "more") for s in subjects}
    chats = [
        [{"role": "user", "content": f"Explain {subject}."}, {"role": "assistant", "content": answer}]
        for subject, answer in answers.items()
    ]
    texts = [tokenizer.apply_chat_template(chat, tokenize=False) for chat in chats]
    ids = torch.tensor([[i for t in texts for i in tokenizer(t, add_special_tokens=False)["input_ids"]]])
    max_bits = math.log2(model.config.num_local_experts)
    for index, logits in enumerate(router_logits(model, ids)):
        stats = layer_routing(index, logits, model.config.num_experts_per_tok)
        print(f"layer {index}: usage {stats.usage_entropy_bits:.2f} bits, router {stats.router_entropy_bits:.2f} bits")
        assert stats.usage_entropy_bits > 1.5  # not collapsed onto one or two experts
        assert stats.router_entropy_bits < max_bits - 0.5  # decisions are far from a uniform coin toss


def test_lru_hit_rate_over_an_answer_beats_random_routing(model, tokenizer) -> None:
    """Replays the router's own top-2 choices over generated answers through a 2-slot LRU cache per layer."""
    top_k = model.config.num_experts_per_tok
    uniform = CACHE_SIZE / model.config.num_local_experts
    rates = []
    for prompt in PROMPTS:
        prompt_ids, answer_ids = _greedy(model, tokenizer, prompt)
        full = torch.cat([prompt_ids[0], answer_ids]).unsqueeze(0)
        layer_logits = [logits[prompt_ids.shape[1] :] for logits in router_logits(model, full)]
        rates.append(model_lru_hit_rate(layer_logits, top_k, CACHE_SIZE))
    rate = sum(rates) / len(rates)
    print(
        f"\nLRU hit rate at k={CACHE_SIZE}: {rate:.1%} (per prompt {[f'{r:.1%}' for r in rates]}); "
        f"uniformly random routing: {uniform:.1%}"
    )
    assert rate > uniform


def test_engine_lru_hit_rate_over_an_answer_beats_random_routing(tokenizer, tmp_path) -> None:
    """The same check through the offloading engine: 2 slots per layer, LRU, no prefetch, decode steps only."""
    from moe_tui.offload import OffloadConfig, load_offloaded

    trace = tmp_path / "trace.jsonl"
    om = load_offloaded(
        DEMO_MODEL_DIR,
        OffloadConfig(cache_size=CACHE_SIZE, prefetch=0, policy="lru", trace_path=trace),
        progress=lambda stage, done, total: None,
    )
    try:
        for prompt in PROMPTS:
            with torch.no_grad():
                om.model.generate(_prompt_ids(tokenizer, prompt), max_new_tokens=80, do_sample=False)
        uniform = CACHE_SIZE / om.moe.num_experts
    finally:
        om.close()
    steps = [json.loads(line) for line in trace.read_text().splitlines()]
    decode = [s for s in steps if s["type"] == "step" and s["n_tokens"] == 1]
    hits = sum(sum(s["hits"]) for s in decode)
    accesses = sum(len(s["hits"]) for s in decode)
    rate = hits / accesses
    print(
        f"\nengine LRU hit rate at k={CACHE_SIZE} over {len(decode)} decode layer-steps: {rate:.1%}; "
        f"uniformly random routing: {uniform:.1%}"
    )
    assert rate > uniform


def test_training_labels_cover_only_the_assistant_answers(tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "What is a list?"},
        {"role": "assistant", "content": "A mutable sequence."},
    ]
    encoded = encode(tokenizer, messages)
    assert len(encoded.labels) == len(encoded.input_ids)
    labelled = [token for token, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(labelled) == "Hello.<|end|>A mutable sequence.<|end|>"
