"""A loaded model ready to chat: resolves the model, applies its chat template and streams answers.

:meth:`ChatSession.generate` blocks, so the dashboard runs it in a worker thread. Each new piece of text goes
to ``on_text`` as soon as its token exists, each token is recorded as a
:class:`~moe_tui.telemetry.TokenEvent` in the engine's telemetry (tying the text to the engine step that
produced it), and a :class:`threading.Event` ends the answer early. One generation runs at a time per session.

torch and transformers are imported only when a model is loaded or run, so the settings and result types can
be imported by the UI at no cost.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from moe_tui import paths
from moe_tui.chat.generation import GenerationSettings
from moe_tui.chat.kv import ConversationCache, cache_bytes
from moe_tui.chat.prompt import ChatMessage, render_turns, split_conversation, supports_thinking
from moe_tui.errors import UserError
from moe_tui.import_lock import TRANSFORMERS_IMPORTS
from moe_tui.params.config import one_line
from moe_tui.telemetry import Telemetry, TokenEvent

DEMO_MODEL_NAME = paths.DEMO_MODEL_NAME

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class GenerationResult:
    """One answer: its text (exactly the pieces given to ``on_text``, joined), tokens generated, wall seconds,
    whether the stop event ended it early, the prompt's length in tokens, how many of the oldest turns
    were left out of the prompt to fit the model's context, and the seconds until the first new token."""

    text: str
    tokens: int
    seconds: float
    stopped: bool
    prompt_tokens: int = 0
    dropped_turns: int = 0
    reused_tokens: int = 0  # prompt tokens whose keys and values came from the previous answer's cache
    first_token_s: float | None = None  # the prompt's processing and the first new token (None: no token)

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second of wall time, prompt processing included."""
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens per second after the first one, the prompt's processing left out (as ``bench`` measures
        decoding); None with fewer than two tokens."""
        if self.tokens < 2 or self.first_token_s is None or self.seconds <= self.first_token_s:
            return None
        return (self.tokens - 1) / (self.seconds - self.first_token_s)


class Engine(Protocol):
    """What a session needs from the offloading engine (:class:`moe_tui.offload.OffloadedModel` provides it)."""

    model: Any
    telemetry: Telemetry
    config: Any  # the engine's OffloadConfig

    def memory(self) -> dict[str, Any]:
        """Where the experts live and how many bytes each tier holds (see OffloadedModel.memory)."""
        ...

    @property
    def last_step(self) -> int:
        """Step number of the last forward pass."""
        ...


class ChatSession:
    """A model, its tokenizer and the engine running it; :meth:`generate` streams one answer at a time."""

    def __init__(self, engine: Engine, tokenizer: Any, model_name: str):
        self.engine = engine
        self.tokenizer = tokenizer
        self.model_name = model_name
        self._busy = threading.Lock()
        self.directory: Path | None = None  # where the model was loaded from (None: built in memory)
        self.keep_kv = True  # reuse the previous answer's KV cache for the prefix a new prompt shares with it
        self._kv = ConversationCache()
        self._answering: Any = None  # the KV cache of the answer being generated, while there is one

    @classmethod
    def load(cls, model: str | Path | None, offload_config: Any, progress: Progress | None = None) -> ChatSession:
        """Load a model for chat: ``None`` is the bundled demo model, else a directory or a hub id already in the
        local Hugging Face cache (nothing is downloaded). Bad specs fail with :class:`UserError` before heavy work.
        """
        directory, name = resolve_model(model)
        if progress is not None:
            progress("loading tokenizer", 0, 1)
        check_model(directory)
        tokenizer = load_tokenizer(directory, name)
        if progress is not None:
            progress("loading tokenizer", 1, 1)
        engine = _load_engine(directory, offload_config, progress)
        session = cls(engine, tokenizer, name)
        session.directory = directory
        session._note_unusable_defaults()
        return session

    def _note_unusable_defaults(self) -> None:
        """Add a load note for each value of the model's generation_config.json that is left out."""
        from moe_tui.chat.defaults import model_sampling

        generation_config = getattr(self.engine.model, "generation_config", None)
        _, problems = model_sampling(generation_config)
        notes = getattr(self.engine, "load_info", {}).setdefault("notes", [])
        for name, problem in problems.items():
            value = getattr(generation_config, name, None)
            notes.append(f"the model's generation_config.json sets {name} to {value!r}, which {problem}: left out")

    @property
    def busy(self) -> bool:
        """Whether a generation is running right now."""
        return self._busy.locked()

    @property
    def kv_bytes(self) -> int:
        """Bytes of KV cache the session holds now: the answer being generated's, else the one kept for the next
        turn (0 when neither). Safe to read from another thread."""
        answering = self._answering
        return cache_bytes(answering) if answering is not None else self._kv.nbytes

    @property
    def kv_tokens(self) -> int:
        """Tokens whose keys and values the session holds now (the answer being generated's, else the kept
        cache's). Safe to read from another thread."""
        answering = self._answering
        return answering.get_seq_length() if answering is not None else self._kv.tokens

    def generate(
        self,
        messages: Sequence[ChatMessage],
        settings: GenerationSettings,
        on_text: Callable[[str], None],
        stop_event: threading.Event | None = None,
    ) -> GenerationResult:
        """Answer the conversation ``messages`` (``role``/``content`` dicts or history messages; the last non-empty
        one is the user's turn).

        Blocks until the answer ends (end-of-sequence, ``max_new_tokens``, the context limit, or ``stop_event``
        set; a stop event already set returns at once with nothing generated). ``on_text`` receives every new
        non-empty piece of text in this thread. A second call while one is running raises :class:`UserError`;
        any error leaves the session ready for the next call.
        """
        if not isinstance(settings, GenerationSettings):
            raise TypeError("settings must be a GenerationSettings")
        if not self._busy.acquire(blocking=False):
            raise UserError("an answer is already being generated; stop it or wait for it to finish")
        try:
            return self._generate(messages, settings, on_text, stop_event or threading.Event())
        finally:
            self._busy.release()

    def close(self) -> None:
        """Release the engine's memory (its slots and store)."""
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()

    def _generate(
        self,
        messages: Sequence[ChatMessage],
        settings: GenerationSettings,
        on_text: Callable[[str], None],
        stop_event: threading.Event,
    ) -> GenerationResult:
        import torch

        from moe_tui.chat.kv_blocks import new_cache
        from moe_tui.chat.streaming import StopOnEvent, TokenStreamer

        model = self.engine.model
        prompt_ids, dropped = self._fit_prompt(messages, settings)
        input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=model.device)
        limit = self._context_limit()
        max_new_tokens = min(settings.max_new_tokens, limit - len(prompt_ids)) if limit else settings.max_new_tokens
        started = time.perf_counter()
        if stop_event.is_set():
            return GenerationResult("", 0, 0.0, stopped=True, prompt_tokens=len(prompt_ids), dropped_turns=dropped)

        telemetry = self.engine.telemetry
        tokens_so_far = itertools.count()
        first_token_at: list[float] = []

        def on_token(piece: str) -> None:
            first = next(tokens_so_far) == 0
            if first:
                first_token_at.append(time.perf_counter() - started)
            telemetry.record_token(TokenEvent(step=self.engine.last_step, text=piece, first=first))
            if piece:
                on_text(piece)

        streamer = TokenStreamer(self.tokenizer, on_token)
        stop = StopOnEvent(stop_event)
        cache, reused = self._kv.take(prompt_ids) if self.keep_kv else (None, 0)
        if cache is None:
            cache = new_cache(model)
        self._answering = cache
        try:
            output = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=self._generation_config(settings, max_new_tokens),
                streamer=streamer,
                stopping_criteria=stop.as_list(),
                cache=cache,
            )
        except (torch.OutOfMemoryError, MemoryError, RuntimeError) as error:
            self._answering = None  # before the finally below: the last reference must go before freeing memory
            del cache  # half written by the failed pass: never reused
            device = _out_of_memory_device(error)
            if device is None:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if streamer.tail:
                on_text(streamer.tail)  # the answer so far, to its last character
            raise UserError(self._out_of_memory_message(device, streamer.tokens)) from None
        finally:
            self._answering = None
        if self.keep_kv:
            self._kv.keep(output.cache, output.sequences[0].tolist())
        if streamer.tail:
            on_text(streamer.tail)
        return GenerationResult(
            text=streamer.decoder.text,
            tokens=streamer.tokens,
            seconds=time.perf_counter() - started,
            stopped=stop.triggered,
            prompt_tokens=len(prompt_ids),
            dropped_turns=dropped,
            reused_tokens=reused,
            first_token_s=first_token_at[0] if first_token_at else None,
        )

    def model_defaults(self) -> dict[str, Any]:
        """The sampling values the model's ``generation_config.json`` recommends (see :mod:`moe_tui.chat.defaults`)."""
        from moe_tui.chat.defaults import model_sampling

        return model_sampling(getattr(self.engine.model, "generation_config", None))[0]

    @property
    def can_think(self) -> bool:
        """Whether this model's template can turn its thinking on and off."""
        return supports_thinking(self.tokenizer)

    def forget_conversation(self) -> None:
        """Drop the kept KV cache now (its memory), rather than when the next prompt shares nothing with it."""
        self._kv.clear()

    def _out_of_memory_message(self, device: str, tokens: int) -> str:
        """One line: what ran out, after how many tokens (kept), and the settings that would free memory."""
        from moe_tui.offload.memory import out_of_memory_advice

        kept = f"the {tokens} tokens before it are kept" if tokens else "no token was generated"
        advice = out_of_memory_advice(self.engine.memory(), self.engine.config.expert_bits, device)
        return f"{advice} ({kept})"

    def _context_limit(self) -> int | None:
        """The most tokens an answer's prompt and text together may take: the context the engine's KV cache was
        sized for (``--context``), within the model's own limit."""
        from moe_tui.fit import context_tokens

        return context_tokens(self.engine.config.context, self.engine.model.config.max_position_embeddings)

    def _fit_prompt(self, messages: Sequence[ChatMessage], settings: GenerationSettings) -> tuple[list[int], int]:
        """Prompt token ids, leaving out the oldest turns when the whole conversation would not leave room for
        the answer (``max_new_tokens``, at most half the context); returns the ids and how many turns were left out.
        """
        system, turns = split_conversation(messages, settings.system_prompt)
        limit = self._context_limit()
        budget = limit - min(settings.max_new_tokens, limit // 2) if limit else None
        starts = [index for index, turn in enumerate(turns) if turn["role"] == "user"]
        for start in starts:
            text = render_turns(self.tokenizer, system, turns[start:], settings.thinking)
            ids = list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
            if budget is None or len(ids) <= budget:
                break
        if limit and len(ids) >= limit:
            raise UserError(
                f"the question makes a prompt of {len(ids)} tokens but {self.model_name} reads at most {limit} "
                f"here ({len(ids) - limit + 1} tokens over, counting one for the answer); shorten it"
            )
        return ids, start

    def _generation_config(self, settings: GenerationSettings, max_new_tokens: int) -> Any:
        from transformers import GenerationConfig

        defaults = self.engine.model.generation_config
        eos = defaults.eos_token_id if defaults.eos_token_id is not None else self.tokenizer.eos_token_id
        pad = next((t for t in (defaults.pad_token_id, self.tokenizer.pad_token_id, eos) if t is not None), None)
        if isinstance(pad, list):
            pad = pad[0]
        # Greedy: temperature/top_p at their neutral values, so that sampling values from the model's
        # generation_config.json are neither used nor warned about; other defaults there (such as a repetition
        # penalty) apply, as they do for model.generate().
        sampling: dict[str, Any] = (
            {"do_sample": False, "temperature": 1.0, "top_p": 1.0}
            if settings.greedy
            else {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p, "top_k": 0}
        )
        from moe_tui.fit import PREFILL_CHUNK

        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            prefill_chunk_size=PREFILL_CHUNK,  # the activations the fit check counted, however long the prompt
            return_dict_in_generate=True,  # the cache comes back, for the next turn
            eos_token_id=eos,
            pad_token_id=pad,
            bos_token_id=defaults.bos_token_id,
            num_beams=1,
            **sampling,
        )


def resolve_model(model: str | Path | None) -> tuple[Path, str]:
    """The local directory holding a model and the name to show for it.

    ``None`` is the bundled demo model; otherwise a model directory or a hub id already in the local Hugging
    Face cache, resolved by the engine's loader (so both agree on what a spec means; nothing is downloaded).
    """
    if model is None:
        if not (paths.DEMO_MODEL_DIR / "config.json").is_file():
            raise UserError(
                f"the bundled demo model is missing from {paths.DEMO_MODEL_DIR}; rebuild it with "
                "`python -m moe_tui.demo.train` or pass --model"
            )
        return paths.DEMO_MODEL_DIR, DEMO_MODEL_NAME
    from moe_tui.offload.loader import resolve_model_dir

    spec = str(model).strip()
    directory = resolve_model_dir(spec)
    is_path = Path(spec).expanduser().is_dir()
    return directory, directory.resolve().name if is_path else spec


# Files one of which every tokenizer transformers can build from a directory reads (besides *.tiktoken files).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "vocab.txt")


def check_model(directory: Path) -> Any:
    """The transformers config of the model in ``directory``, once it is known that moe-tui can chat with it: a
    causal language model of an MoE family the engine offloads, with its safetensors weights (every shard its
    index names) and a tokenizer file there; :class:`UserError` saying what is wrong otherwise, as when only a
    model's config was downloaded. Reads no weight."""
    from moe_tui.offload.arch import family_of
    from moe_tui.offload.checkpoint import checkpoint_files
    from moe_tui.offload.loader import read_model_config

    with TRANSFORMERS_IMPORTS:  # another thread may be importing transformers' code (the model picker's reads)
        config = read_model_config(directory)
        family_of(config)
    checkpoint_files(directory)
    if not any((directory / name).is_file() for name in TOKENIZER_FILES) and not any(directory.glob("*.tiktoken")):
        raise UserError(f"{directory} has no tokenizer ({', '.join(TOKENIZER_FILES)} or a *.tiktoken file)")
    return config


def load_tokenizer(directory: Path, name: str) -> Any:
    """The model's tokenizer from its directory (never downloaded); :class:`UserError` when it cannot be read."""
    from transformers import AutoTokenizer

    try:
        with TRANSFORMERS_IMPORTS:  # its tokenizer class is imported on first use
            return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        reason = _broken_tokenizer_file(directory) or one_line(error)
        raise UserError(f"cannot load the tokenizer of {name}: {reason}") from None


def _broken_tokenizer_file(directory: Path) -> str | None:
    """What is wrong with the first of the tokenizer's JSON files that cannot be read or is not JSON (``tokenizer.json
    is not valid JSON (...)``), None when they all are: the library's own message names no file."""
    for name in (*TOKENIZER_FILES, "special_tokens_map.json", "added_tokens.json"):
        path = directory / name
        if not name.endswith(".json") or not path.is_file():
            continue
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            return f"cannot read {name}: {error.strerror or one_line(error)}"
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            return f"{name} is not valid JSON ({one_line(error)})"
    return None


def _load_engine(directory: Path, offload_config: Any, progress: Progress | None) -> Engine:
    from moe_tui.offload import load_offloaded

    return load_offloaded(str(directory), offload_config, progress=progress)


def _out_of_memory_device(error: BaseException) -> str | None:
    """``cuda`` or ``cpu`` when ``error`` is an allocation failure there, None for any other error."""
    import torch

    if isinstance(error, torch.OutOfMemoryError):
        return "cuda"
    if isinstance(error, MemoryError):
        return "cpu"
    text = str(error).lower()
    if "can't allocate memory" in text or "defaultcpuallocator" in text:
        return "cpu"
    if "out of memory" in text:
        return "cuda" if "cuda" in text else "cpu"
    return None
