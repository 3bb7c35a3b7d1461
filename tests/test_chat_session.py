"""Chat session: prompt rendering, incremental decoding, streaming, stopping, telemetry and model resolution.

Models are tiny random-weight Mixtrals and tokenizers are trained here in a few milliseconds, in two styles:
byte-level BPE (GPT-2 style: characters split over byte tokens) and Metaspace BPE (SentencePiece style, like
Mixtral's: a word's leading space lives in its token).
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import MixtralConfig, MixtralForCausalLM, PreTrainedTokenizerFast

from moe_tui import fit, paths
from moe_tui.chat.generation import GenerationSettings
from moe_tui.chat.history import HistoryStore
from moe_tui.chat.prompt import PLAIN_TEMPLATE, render_prompt, split_conversation
from moe_tui.chat.session import ChatSession, GenerationResult, resolve_model
from moe_tui.chat.streaming import IncrementalDecoder
from moe_tui.errors import UserError
from moe_tui.offload import OffloadConfig, OffloadedModel, offload_model
from moe_tui.telemetry import LayerStep, TokenEvent, read_trace

CORPUS = [
    "The experts of a mixture model are small MLPs; a router picks two of them for every token.",
    "Offloading keeps most experts in host memory and copies them into a small cache when they are needed.",
    "Café, naïve, 専門家 and the emoji 🙂 are characters that span several bytes.",
] * 3
SPECIALS = ["<unk>", "<s>", "</s>"]
# Mistral-style: rejects a system role and needs user/assistant turns to alternate.
STRICT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('roles must alternate') }}{% endif %}"
    "{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)
SYSTEM_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
DROPPING_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] != 'system' %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
QUESTION = [{"role": "user", "content": "What do the experts do?"}]


def build_tokenizer(style: str, chat_template: str | None = STRICT_TEMPLATE) -> PreTrainedTokenizerFast:
    """A small BPE tokenizer trained on CORPUS, byte-level or Metaspace."""
    if style == "byte":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=320,
            special_tokens=SPECIALS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    else:
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=SPECIALS, show_progress=False)
    tokenizer.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = chat_template
    return fast


def build_model(tokenizer: PreTrainedTokenizerFast, max_positions: int = 256) -> MixtralForCausalLM:
    """A 2-layer, 4-expert top-2 Mixtral with random weights sized to the tokenizer."""
    torch.manual_seed(0)
    config = MixtralConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    return MixtralForCausalLM(config).eval()


def offloaded(model: MixtralForCausalLM, **settings: Any) -> OffloadedModel:
    """The model with its experts offloaded by the real engine: 2 slots per layer, prefetch 1, unquantized."""
    config = OffloadConfig(**{"cache_size": 2, "prefetch": 1, **settings})
    return offload_model(model, config, progress=lambda stage, done, total: None)


def chat_session(tokenizer: PreTrainedTokenizerFast, max_positions: int = 256, **settings: Any) -> ChatSession:
    """A session over a fresh tiny model (always the same weights) run by the offloading engine."""
    return ChatSession(offloaded(build_model(tokenizer, max_positions), **settings), tokenizer, "tiny")


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; on a busy 2-core machine two threads are 10-20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer("metaspace")


@pytest.fixture
def chat(tokenizer: PreTrainedTokenizerFast) -> Iterator[ChatSession]:
    session = chat_session(tokenizer)
    yield session
    session.close()


def reference_greedy(model: MixtralForCausalLM, tokenizer: PreTrainedTokenizerFast, prompt: str, n: int) -> list[int]:
    encoded = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    output = model.generate(**encoded, do_sample=False, max_new_tokens=n, pad_token_id=tokenizer.eos_token_id)
    return output[0, encoded["input_ids"].shape[1] :].tolist()


# --- settings -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top-p"),
        ({"top_p": 1.5}, "top-p"),
        ({"max_new_tokens": 0}, "max new tokens"),
        ({"max_new_tokens": 2.5}, "max new tokens"),
        ({"max_new_tokens": True}, "max new tokens"),
        ({"system_prompt": None}, "system prompt"),
    ],
)
def test_bad_settings_are_rejected_with_a_clear_message(values: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        GenerationSettings(**values)


def test_settings_from_form_text() -> None:
    settings = GenerationSettings.from_text(" 0 ", "0.5", "12", "Be brief.")
    assert settings == GenerationSettings(temperature=0.0, top_p=0.5, max_new_tokens=12, system_prompt="Be brief.")
    assert settings.greedy
    with pytest.raises(UserError, match=r"max new tokens must be a whole number, not '1\.5'"):
        GenerationSettings.from_text("0.7", "0.9", "1.5")
    with pytest.raises(UserError, match="temperature must be a number"):
        GenerationSettings.from_text("warm", "0.9", "10")


# --- prompts --------------------------------------------------------------------------------------------------


def test_conversation_checks_and_merges_turns() -> None:
    system, turns = split_conversation(
        [
            {"role": "system", "content": "From history."},
            {"role": "user", "content": "one"},
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": "answer"},
            {"role": "user", "content": "three"},
        ],
        system_prompt="From settings.",
    )
    assert system == "From settings.\n\nFrom history."
    assert turns == [
        {"role": "user", "content": "one\n\ntwo"},
        {"role": "assistant", "content": "answer"},
        {"role": "user", "content": "three"},
    ]
    with pytest.raises(UserError, match="end with a user message"):
        split_conversation([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    with pytest.raises(UserError, match="end with a user message"):
        split_conversation([])
    with pytest.raises(UserError, match="end with a user message"):
        split_conversation([{"role": "system", "content": "only a system prompt"}])
    with pytest.raises(UserError, match="role 'tool'"):
        split_conversation([{"role": "tool", "content": "x"}])
    with pytest.raises(UserError, match="no text"):
        split_conversation([{"role": "user"}])


def test_history_messages_can_be_passed_directly_and_empty_ones_are_skipped(tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "history.sqlite3") as store:
        chat = store.create_conversation()
        store.add_message(chat.id, "user", "first")
        store.add_message(chat.id, "assistant", "")
        store.add_message(chat.id, "user", "second")
        store.add_message(chat.id, "assistant", "")
        system, turns = split_conversation(store.messages(chat.id))
    assert (system, turns) == ("", [{"role": "user", "content": "first\n\nsecond"}])


def test_system_prompt_is_folded_into_the_first_user_turn_when_the_template_rejects_it(tokenizer: Any) -> None:
    conversation = [*QUESTION, {"role": "assistant", "content": "Routing."}, {"role": "user", "content": "More?"}]
    prompt = render_prompt(tokenizer, conversation, "Be brief.")
    assert prompt == "<s>[INST] Be brief.\n\nWhat do the experts do? [/INST]Routing.</s>[INST] More? [/INST]"
    assert render_prompt(tokenizer, QUESTION) == "<s>[INST] What do the experts do? [/INST]"


def test_system_prompt_uses_the_system_role_when_the_template_has_one() -> None:
    tokenizer = build_tokenizer("metaspace", SYSTEM_TEMPLATE)
    assert render_prompt(tokenizer, QUESTION, "Be brief.") == (
        "<|system|>Be brief.\n<|user|>What do the experts do?\n<|assistant|>"
    )


def test_system_prompt_dropped_by_the_template_is_folded_in() -> None:
    tokenizer = build_tokenizer("metaspace", DROPPING_TEMPLATE)
    assert (
        render_prompt(tokenizer, QUESTION, "Be brief.") == "<|user|>Be brief.\n\nWhat do the experts do?\n<|assistant|>"
    )


def test_tokenizer_without_template_gets_a_plain_one() -> None:
    tokenizer = build_tokenizer("metaspace", None)
    assert render_prompt(tokenizer, QUESTION, "Be brief.") == render_prompt(
        build_tokenizer("metaspace", PLAIN_TEMPLATE), QUESTION, "Be brief."
    )
    assert render_prompt(tokenizer, QUESTION, "Be brief.").startswith("System: Be brief.\n\nUser: What do")


def test_broken_template_gives_user_error() -> None:
    tokenizer = build_tokenizer("metaspace", "{{ raise_exception('bad template') }}")
    with pytest.raises(UserError, match="chat template failed: bad template"):
        render_prompt(tokenizer, QUESTION)


# --- incremental decoding -------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["byte", "metaspace"])
def test_decoded_pieces_join_to_the_full_decode_for_any_ids(style: str) -> None:
    tokenizer = build_tokenizer(style)
    rng = random.Random(7)
    for _ in range(150):
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randrange(1, 40))]
        decoder = IncrementalDecoder(tokenizer)
        pieces = [decoder.push(token) for token in ids]
        pieces.append(decoder.finish())
        assert "".join(pieces) == decoder.text == tokenizer.decode(ids, skip_special_tokens=True)


def test_multibyte_characters_are_never_split_across_pieces() -> None:
    tokenizer = build_tokenizer("byte")
    ids = tokenizer("Café 専門家 🙂 done", add_special_tokens=False)["input_ids"]
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(token) for token in ids]
    assert "\ufffd" not in "".join(pieces)
    assert "".join(pieces) + decoder.finish() == "Café 専門家 🙂 done"
    assert any(piece == "" for piece in pieces), "a character spanning tokens was held back"


# --- generation -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["byte", "metaspace"])
def test_greedy_stream_matches_model_generate(style: str) -> None:
    tokenizer = build_tokenizer(style)
    prompt = render_prompt(tokenizer, QUESTION, "Be brief.")
    expected_ids = reference_greedy(build_model(tokenizer), tokenizer, prompt, 24)
    chat = chat_session(tokenizer)
    pieces: list[str] = []
    settings = GenerationSettings(temperature=0, max_new_tokens=24, system_prompt="Be brief.")
    result = chat.generate(QUESTION, settings, pieces.append)

    assert result.text == "".join(pieces) == tokenizer.decode(expected_ids, skip_special_tokens=True)
    assert result.tokens == len(expected_ids)
    assert all(pieces)
    assert not result.stopped
    assert result.seconds > 0 and result.tokens_per_s > 0
    assert result.first_token_s is not None and 0 < result.first_token_s < result.seconds
    decode = (result.tokens - 1) / (result.seconds - result.first_token_s)
    assert result.decode_tokens_per_s == pytest.approx(decode) and decode > result.tokens_per_s


def test_answer_streamed_into_the_history_store(chat: ChatSession, tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "history.sqlite3") as store:
        conversation = store.create_conversation(model=chat.model_name)
        store.add_message(conversation.id, "user", QUESTION[0]["content"])
        answer = store.add_message(conversation.id, "assistant")
        settings = GenerationSettings(temperature=0, max_new_tokens=16)
        result = chat.generate(
            store.messages(conversation.id), settings, lambda piece: store.append_to_message(answer.id, piece)
        )
        assert store.messages(conversation.id)[-1].content == result.text != ""


def test_token_events_land_in_the_engine_telemetry(tokenizer: Any, tmp_path: Path) -> None:
    chat = chat_session(tokenizer, trace_path=tmp_path / "trace.jsonl")
    result = chat.generate(QUESTION, GenerationSettings(temperature=0, max_new_tokens=10), lambda piece: None)
    snapshot = chat.engine.snapshot()
    chat.close()

    assert snapshot.tokens == result.tokens == 10
    _, events = read_trace(tmp_path / "trace.jsonl")
    tokens = [event for event in events if isinstance(event, TokenEvent)]
    passes = list(dict.fromkeys(event.step for event in events if isinstance(event, LayerStep)))
    # Each token names the forward pass that produced it: the prefill yields the first, each later pass one more.
    assert [token.step for token in tokens] == passes
    assert len(passes) == 10
    assert "".join(token.text for token in tokens) == result.text
    assert snapshot.last_token == tokens[-1].text


def test_each_answers_first_token_is_marked_even_when_its_prompt_was_cached(tokenizer: Any, tmp_path: Path) -> None:
    """Regenerating reuses the kept KV cache for all of the prompt but one token, so no pass of the second answer
    runs more than one token: the mark on its first token is the only sign in the trace that an answer began."""
    chat = chat_session(tokenizer, trace_path=tmp_path / "trace.jsonl")
    settings = GenerationSettings(temperature=0, max_new_tokens=5)
    chat.generate(QUESTION, settings, lambda piece: None)
    again = chat.generate(QUESTION, settings, lambda piece: None)
    chat.close()
    assert again.reused_tokens == again.prompt_tokens - 1
    _, events = read_trace(tmp_path / "trace.jsonl")
    tokens = [event for event in events if isinstance(event, TokenEvent)]
    assert [token.first for token in tokens] == [True, False, False, False, False] * 2
    second_start = tokens[5].step
    assert all(event.n_tokens == 1 for event in events if isinstance(event, LayerStep) and event.step >= second_start)


def test_stop_event_ends_generation_mid_answer(chat: ChatSession) -> None:
    stop = threading.Event()
    pieces: list[str] = []

    def on_text(piece: str) -> None:
        pieces.append(piece)
        if len(pieces) == 3:
            stop.set()

    result = chat.generate(QUESTION, GenerationSettings(temperature=0, max_new_tokens=60), on_text, stop)
    assert result.stopped
    assert 3 <= result.tokens < 60
    assert result.text == "".join(pieces)


def test_stop_from_another_thread(chat: ChatSession) -> None:
    stop, first_piece = threading.Event(), threading.Event()
    outcome: list[GenerationResult] = []

    def worker() -> None:
        settings = GenerationSettings(temperature=0, max_new_tokens=200)
        outcome.append(chat.generate(QUESTION, settings, lambda piece: first_piece.set(), stop))

    thread = threading.Thread(target=worker)
    thread.start()
    assert first_piece.wait(60)
    stop.set()
    thread.join(60)
    [result] = outcome
    assert result.stopped and result.tokens < 200


def test_stop_event_already_set_generates_nothing(chat: ChatSession) -> None:
    stop = threading.Event()
    stop.set()
    pieces: list[str] = []
    result = chat.generate(QUESTION, GenerationSettings(max_new_tokens=5), pieces.append, stop)
    assert (result.text, result.tokens, result.stopped, pieces) == ("", 0, True, [])
    assert chat.engine.telemetry.snapshot().tokens == 0


def test_second_generation_while_one_runs_is_refused(chat: ChatSession) -> None:
    errors: list[str] = []

    def on_text(piece: str) -> None:
        assert chat.busy
        try:
            chat.generate(QUESTION, GenerationSettings(max_new_tokens=2), lambda _: None)
        except UserError as error:
            errors.append(str(error))

    chat.generate(QUESTION, GenerationSettings(temperature=0, max_new_tokens=3), on_text)
    assert errors and all("already being generated" in error for error in errors)
    assert not chat.busy


def test_errors_inside_generation_leave_the_session_usable(chat: ChatSession) -> None:
    settings = GenerationSettings(temperature=0, max_new_tokens=8)
    expected = chat.generate(QUESTION, settings, lambda _: None).text

    def failing_on_text(piece: str) -> None:
        raise RuntimeError("the UI went away")

    with pytest.raises(RuntimeError, match="the UI went away"):
        chat.generate(QUESTION, settings, failing_on_text)
    assert not chat.busy

    def failing_forward(module: Any, args: Any) -> None:
        raise RuntimeError("forward failed")

    handle = chat.engine.model.register_forward_pre_hook(failing_forward)
    try:
        with pytest.raises(RuntimeError, match="forward failed"):
            chat.generate(QUESTION, settings, lambda _: None)
    finally:
        handle.remove()
    assert chat.generate(QUESTION, settings, lambda _: None).text == expected


def test_sampling_settings_are_applied(chat: ChatSession) -> None:
    greedy = chat.generate(QUESTION, GenerationSettings(temperature=0, max_new_tokens=20), lambda _: None)
    # top-p this small keeps only the most likely token, so sampling must reproduce greedy decoding.
    narrow = chat.generate(QUESTION, GenerationSettings(temperature=1.0, top_p=1e-9, max_new_tokens=20), lambda _: None)
    assert narrow.text == greedy.text
    torch.manual_seed(1)
    hot = chat.generate(QUESTION, GenerationSettings(temperature=2.0, top_p=1.0, max_new_tokens=20), lambda _: None)
    torch.manual_seed(1)
    hot_again = chat.generate(
        QUESTION, GenerationSettings(temperature=2.0, top_p=1.0, max_new_tokens=20), lambda _: None
    )
    assert hot.text == hot_again.text != greedy.text


def test_context_limit_caps_the_answer_and_drops_the_oldest_turns(tokenizer: Any) -> None:
    chat = chat_session(tokenizer, max_positions=40)
    prompt_tokens = len(tokenizer(render_prompt(tokenizer, QUESTION), add_special_tokens=False)["input_ids"])
    result = chat.generate(QUESTION, GenerationSettings(temperature=0, max_new_tokens=500), lambda _: None)
    assert (result.tokens, result.prompt_tokens, result.dropped_turns) == (40 - prompt_tokens, prompt_tokens, 0)

    old_turns = [
        {"role": "user", "content": "experts experts experts"},
        {"role": "assistant", "content": "router router router"},
    ] * 3
    settings = GenerationSettings(temperature=0, max_new_tokens=10)
    result = chat.generate([*old_turns, *QUESTION], settings, lambda _: None)
    assert result.dropped_turns > 0 and result.dropped_turns % 2 == 0
    assert result.prompt_tokens + 10 <= 40
    kept = [*old_turns, *QUESTION][result.dropped_turns :]
    assert result.prompt_tokens == len(tokenizer(render_prompt(tokenizer, kept), add_special_tokens=False)["input_ids"])
    assert result.tokens == 10

    long_question = [{"role": "user", "content": "experts " * 60}]
    with pytest.raises(UserError, match=r"reads at most 40 here \(\d+ tokens over, counting one for the answer\)"):
        chat.generate(long_question, GenerationSettings(), lambda _: None)
    assert not chat.busy


def test_the_chosen_context_caps_the_conversation_below_the_models_limit(tokenizer: Any) -> None:
    chat = chat_session(tokenizer, max_positions=256, context=40)
    prompt_tokens = len(tokenizer(render_prompt(tokenizer, QUESTION), add_special_tokens=False)["input_ids"])
    result = chat.generate(QUESTION, GenerationSettings(temperature=0, max_new_tokens=500), lambda _: None)
    assert (result.tokens, result.prompt_tokens) == (40 - prompt_tokens, prompt_tokens)
    with pytest.raises(UserError, match="reads at most 40 here"):
        chat.generate([{"role": "user", "content": "experts " * 60}], GenerationSettings(), lambda _: None)


def test_a_prompt_prefilled_in_chunks_answers_as_one_prefilled_whole(
    tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    question = [{"role": "user", "content": "experts route tokens to slots " * 8}]
    settings = GenerationSettings(temperature=0, max_new_tokens=12)
    whole = chat_session(tokenizer).generate(question, settings, lambda _: None)
    monkeypatch.setattr(fit, "PREFILL_CHUNK", 7)
    session = chat_session(tokenizer)
    passes = []
    session.engine.model.model.register_forward_pre_hook(lambda module, args: passes.append(1))
    chunked = session.generate(question, settings, lambda _: None)
    assert whole.prompt_tokens > 3 * 7
    assert chunked.text == whole.text and chunked.tokens == whole.tokens
    assert len(passes) == math.ceil(whole.prompt_tokens / 7) + whole.tokens - 1  # chunks, then one per token


@pytest.mark.parametrize("block", [fit.KV_BLOCK, 3])  # 3: the kept cache is cropped and grown across blocks
def test_the_next_turn_reuses_the_conversations_kv_cache_and_answers_the_same(
    tokenizer: Any, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fit, "KV_BLOCK", block)
    settings = GenerationSettings(temperature=0, max_new_tokens=10)
    kept = chat_session(tokenizer)
    first = kept.generate(QUESTION, settings, lambda _: None)
    assert first.reused_tokens == 0
    turns = [*QUESTION, {"role": "assistant", "content": first.text}, {"role": "user", "content": "and then?"}]
    second = kept.generate(turns, settings, lambda _: None)
    fresh = chat_session(tokenizer)
    fresh.keep_kv = False
    expected = fresh.generate(turns, settings, lambda _: None)
    assert second.text == expected.text and second.tokens == expected.tokens
    assert first.prompt_tokens <= second.reused_tokens < second.prompt_tokens  # the first turn was not prefilled again
    # Another conversation shares at most the template's opening tokens: the cache is cropped, the answer exact.
    other = [{"role": "user", "content": "tell me about routers"}]
    third = kept.generate(other, settings, lambda _: None)
    assert third.reused_tokens < third.prompt_tokens - 5
    assert third.text == fresh.generate(other, settings, lambda _: None).text


def test_the_session_reports_the_kv_cache_it_holds_while_answering_and_after(
    tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fit, "KV_BLOCK", 4)
    chat = chat_session(tokenizer)
    assert chat.kv_bytes == 0
    config = chat.engine.model.config
    head_size = config.hidden_size // config.num_attention_heads
    # keys and values, per token, of all layers (float32)
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_size * 4
    seen = []
    settings = GenerationSettings(temperature=0, max_new_tokens=8)
    result = chat.generate(QUESTION, settings, lambda _: seen.append((chat.kv_bytes, chat.kv_tokens)))
    held = result.prompt_tokens + result.tokens - 1  # the last token's keys and values were never computed
    assert chat.kv_tokens == held
    assert chat.kv_bytes == per_token * fit.kv_block_tokens(held)
    bytes_seen, tokens_seen = zip(*seen, strict=True)  # the answer's own cache, while it grew
    assert result.prompt_tokens <= min(tokens_seen) and max(tokens_seen) <= held
    assert min(bytes_seen) > 0 and max(bytes_seen) <= chat.kv_bytes
    chat.forget_conversation()
    assert chat.kv_bytes == chat.kv_tokens == 0
    chat.keep_kv = False
    chat.generate(QUESTION, GenerationSettings(temperature=0, max_new_tokens=3), lambda _: None)
    assert chat.kv_bytes == 0  # nothing kept once the answer is done


def test_a_failed_answer_never_leaves_its_cache_for_the_next(
    chat: ChatSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = GenerationSettings(temperature=0, max_new_tokens=6)
    chat.generate(QUESTION, settings, lambda _: None)
    model = chat.engine.model
    original = model.generate
    monkeypatch.setattr(model, "generate", lambda **kwargs: (_ for _ in ()).throw(RuntimeError("broken")))
    with pytest.raises(RuntimeError):
        chat.generate(QUESTION, settings, lambda _: None)
    monkeypatch.setattr(model, "generate", original)
    assert chat.generate(QUESTION, settings, lambda _: None).reused_tokens == 0


# --- loading --------------------------------------------------------------------------------------------------


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache directory that the session's look-ups use."""
    import huggingface_hub.constants

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_resolve_model_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_cache: Path) -> None:
    with pytest.raises(UserError, match="nor a model in the local Hugging Face cache"):
        resolve_model(str(tmp_path / "missing"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="is not a directory"):
        resolve_model(tmp_path / "weights.bin")
    with pytest.raises(UserError, match=r"no config\.json"):
        resolve_model(tmp_path)
    monkeypatch.setattr(paths, "DEMO_MODEL_DIR", tmp_path / "no-demo")
    with pytest.raises(UserError, match="demo model is missing"):
        resolve_model(None)
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "config.json").write_text("{}", encoding="utf-8")
    monkeypatch.setattr(paths, "DEMO_MODEL_DIR", demo)
    assert resolve_model(None) == (demo, "demo-mixtral")
    assert resolve_model(f"  {demo}/ ") == (demo, "demo")


def test_the_demo_model_is_found_by_the_name_the_app_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_cache: Path
) -> None:
    """``--model demo-mixtral`` (chat, ask, bench, the Load model field) is the bundled demo; a directory of that
    name where the command runs is still a directory."""
    assert resolve_model("demo-mixtral") == (paths.DEMO_MODEL_DIR, "demo-mixtral")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo-mixtral").mkdir()
    (tmp_path / "demo-mixtral" / "config.json").write_text("{}", encoding="utf-8")
    assert resolve_model("demo-mixtral") == (Path("demo-mixtral"), "demo-mixtral")


def test_resolve_model_finds_a_hub_id_in_the_local_cache(hub_cache: Path) -> None:
    snapshot = hub_cache / "models--some-org--tiny-moe" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}", encoding="utf-8")
    (hub_cache / "models--some-org--tiny-moe" / "refs").mkdir()
    (hub_cache / "models--some-org--tiny-moe" / "refs" / "main").write_text("0123abcd", encoding="utf-8")
    assert resolve_model("some-org/tiny-moe") == (snapshot, "some-org/tiny-moe")
    with pytest.raises(UserError, match="nor a model in the local Hugging Face cache"):
        resolve_model("some-org/other-moe")


def test_load_reads_the_tokenizer_and_offloads_the_checkpoint(tmp_path: Path, tokenizer: Any) -> None:
    directory = tmp_path / "tiny-mixtral"
    model = build_model(tokenizer)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    expected = tokenizer.decode(reference_greedy(model, tokenizer, render_prompt(tokenizer, QUESTION), 6))

    stages: list[tuple[str, int, int]] = []
    chat = ChatSession.load(str(directory), OffloadConfig(cache_size=1), progress=lambda *stage: stages.append(stage))
    try:
        assert chat.model_name == "tiny-mixtral"
        assert isinstance(chat.engine, OffloadedModel) and chat.engine.cache_sizes == [1, 1]
        assert stages[:2] == [("loading tokenizer", 0, 1), ("loading tokenizer", 1, 1)]
        assert len(stages) > 2, "the engine's own loading stages are passed through"
        result = chat.generate(QUESTION, GenerationSettings(temperature=0, max_new_tokens=6), lambda _: None)
        assert result.text == expected
    finally:
        chat.close()

    (directory / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match="cannot load the tokenizer of tiny-mixtral"):
        ChatSession.load(directory, OffloadConfig())


@pytest.mark.skipif(not (paths.DEMO_MODEL_DIR / "config.json").is_file(), reason="the demo model is not built")
def test_demo_model_chats_like_plain_transformers() -> None:
    from transformers import AutoModelForCausalLM

    chat = ChatSession.load(None, OffloadConfig(cache_size=2, prefetch=1), progress=lambda *stage: None)
    try:
        assert chat.model_name == "demo-mixtral"
        settings = GenerationSettings(temperature=0, max_new_tokens=24, system_prompt="Answer briefly.")
        pieces: list[str] = []
        result = chat.generate([{"role": "user", "content": "What does len() return?"}], settings, pieces.append)
        snapshot = chat.engine.snapshot()
    finally:
        chat.close()

    plain = AutoModelForCausalLM.from_pretrained(paths.DEMO_MODEL_DIR, local_files_only=True).eval()
    prompt = render_prompt(chat.tokenizer, [{"role": "user", "content": "What does len() return?"}], "Answer briefly.")
    encoded = chat.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    output = plain.generate(**encoded, do_sample=False, max_new_tokens=24)
    expected = chat.tokenizer.decode(output[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    assert result.text == "".join(pieces) == expected
    assert snapshot.tokens == result.tokens
    assert snapshot.totals.accesses > 0, "the engine routed every token through its expert caches"


def fail_after(chat: ChatSession, passes: int, error: BaseException) -> None:
    """Make the engine raise ``error`` in its ``passes``-th MoE layer pass from now on (then work again)."""
    engine = chat.engine.engine
    real = engine.run_layer
    calls = {"n": 0}

    def run_layer(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == passes:
            raise error
        return real(*args, **kwargs)

    engine.run_layer = run_layer


@pytest.mark.parametrize(
    ("error", "tier"),
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "GPU"),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"), "host"),
        (MemoryError(), "host"),
    ],
)
def test_running_out_of_memory_mid_answer_keeps_the_answer_and_says_what_would_fit(
    chat: ChatSession, tmp_path: Path, error: BaseException, tier: str
) -> None:
    layers = len(chat.engine.caches)
    fail_after(chat, passes=layers * 8, error=error)  # the prefill and six decoded tokens, then the 8th pass fails
    with HistoryStore(tmp_path / "history.sqlite3") as store:
        conversation = store.create_conversation(model=chat.model_name)
        store.add_message(conversation.id, "user", QUESTION[0]["content"])
        answer = store.add_message(conversation.id, "assistant")
        pieces: list[str] = []

        def on_text(piece: str) -> None:
            pieces.append(piece)
            store.append_to_message(answer.id, piece)

        settings = GenerationSettings(temperature=0, max_new_tokens=32)
        with pytest.raises(UserError) as caught:
            chat.generate(store.messages(conversation.id), settings, on_text)
        message = str(caught.value)
        assert message.startswith(f"ran out of {tier} memory; what would fit: cache size k=1 (frees ")
        assert "--expert-bits 4" in message and "the 7 tokens before it are kept" in message
        assert "\n" not in message
        assert pieces and store.messages(conversation.id)[-1].content == "".join(pieces)
    again = chat.generate(QUESTION, GenerationSettings(temperature=0, max_new_tokens=4), lambda piece: None)
    assert again.tokens == 4  # the session is usable at once


def test_other_errors_are_not_taken_for_out_of_memory(chat: ChatSession) -> None:
    fail_after(chat, passes=3, error=RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        chat.generate(QUESTION, GenerationSettings(temperature=0, max_new_tokens=8), lambda piece: None)
