"""``moe-tui ask "question"``: one answer on stdout, streamed, for scripts and pipes.

The question is the argument, or standard input when it is ``-``. The model and engine options are ``chat``'s;
sampling follows the same order as the app (a flag, else the user's saved setting, else the model's
``generation_config.json``, else moe-tui's default). Loading progress goes to stderr (nothing on a pipe).
With ``--json`` nothing is streamed: one JSON object at the end holds the text, its token counts and timing
(seconds in all, to the first token, and the rate after it), and the engine's counters (hits, misses,
prefetch, bytes copied).
"""

from __future__ import annotations

import argparse
import json
import sys

from moe_tui.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ask``: the question, sampling, output, and chat's model and engine options."""
    from moe_tui.commands.chat import _checked, add_engine_arguments

    parser.add_argument("question", metavar="QUESTION", help="what to ask ('-': read it from stdin)")
    parser.add_argument("--system", metavar="TEXT", help="system prompt (default: the saved one)")
    parser.add_argument(
        "--temperature",
        type=_checked(float, "a number", lambda v: v >= 0, "must be 0 (greedy) or more"),
        help="sampling temperature, 0 for greedy",
    )
    parser.add_argument(
        "--top-p", type=_checked(float, "a number", lambda v: 0 < v <= 1, "must be above 0 and at most 1")
    )
    parser.add_argument(
        "--max-new-tokens", type=_checked(int, "a whole number", lambda v: v >= 1, "must be at least 1")
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object with the text and the counters")
    add_engine_arguments(parser)


def read_question(text: str) -> str:
    """The question from the argument or stdin (``-``); UserError when it is empty."""
    question = sys.stdin.read() if text == "-" else text
    if not question.strip():
        raise UserError("the question is empty" + (" (nothing came on stdin)" if text == "-" else ""))
    return question.strip()


def run(args: argparse.Namespace) -> int:
    """Load the model, answer the question, print the answer (or the JSON)."""
    from moe_tui import config
    from moe_tui.chat.defaults import effective_generation
    from moe_tui.chat.session import ChatSession
    from moe_tui.commands.chat import options_from_args

    question = read_question(args.question)
    saved, warning = config.load_settings()
    if warning:
        print(f"moe-tui: note: {warning}", file=sys.stderr)
    options = options_from_args(args, saved.engine)
    session = ChatSession.load(options.model, options.offload_config())
    for note in getattr(session.engine, "load_info", {}).get("notes", ()):  # a discarded store, a broken file
        print(f"moe-tui: note: {note}", file=sys.stderr)
    try:
        chosen = dict(saved.generation)
        flags = {"temperature": args.temperature, "top_p": args.top_p, "max_new_tokens": args.max_new_tokens}
        flags["system_prompt"] = args.system
        chosen.update({key: value for key, value in flags.items() if value is not None})
        settings, _ = effective_generation(chosen, session.model_defaults())

        def stream(piece: str) -> None:
            if not args.json:
                sys.stdout.write(piece)
                sys.stdout.flush()

        result = session.generate([{"role": "user", "content": question}], settings, stream)
        if args.json:
            report = {
                "model": session.model_name,
                "text": result.text,
                "tokens": result.tokens,
                "prompt_tokens": result.prompt_tokens,
                "seconds": round(result.seconds, 4),
                "tokens_per_s": round(result.tokens_per_s, 3),
                "first_token_s": _rounded(result.first_token_s, 4),
                "decode_tokens_per_s": _rounded(result.decode_tokens_per_s, 3),
                "counters": session.engine.stats(),
            }
            print(json.dumps(report, indent=1))
        elif not result.text.endswith("\n"):
            print()
    finally:
        session.close()
    return 0


def _rounded(value: float | None, digits: int) -> float | None:
    """``value`` rounded, None kept (a figure that an answer of fewer than two tokens does not have)."""
    return None if value is None else round(value, digits)
