"""One module per subcommand, each with ``add_arguments(parser)`` and ``run(args) -> int``.

These modules import only the standard library at top level; heavy imports (torch, transformers, textual)
happen inside ``run`` so that ``moe-tui --help`` stays instant.
"""

from __future__ import annotations

import argparse

from moe_tui.errors import UserError


def add_model_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """The model, as the first argument (``moe-tui params mixtral-8x7b``) or as ``--model``, which is how chat,
    ask and bench take it; :func:`chosen_model` reads it."""
    parser.add_argument("model", metavar="MODEL", nargs="?", help=help_text)
    parser.add_argument("--model", dest="model_option", metavar="MODEL", help="the same as MODEL")


def chosen_model(args: argparse.Namespace) -> str:
    """The model given either way (UserError when neither, or two different ones)."""
    given = [model for model in (args.model, args.model_option) if model]
    if not given:
        raise UserError("which model? give one as MODEL or --model (see --help)")
    if len(set(given)) > 1:
        raise UserError(f"two models given, {given[0]} and {given[1]}: give one")
    return given[0]


def add_dtype_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup, help_text: str) -> None:
    """``--dtype``, by its long name (``bfloat16``) or the short one moe-tui shows everywhere (``bf16``); the
    long name reaches ``args.dtype``."""
    from moe_tui.engine_config import COMPUTE_DTYPES, DTYPE_NAMES

    def long_name(text: str) -> str:
        if text not in DTYPE_NAMES:
            aliases = {
                long: [name for name, of in DTYPE_NAMES.items() if of == long != name] for long in COMPUTE_DTYPES
            }
            names = ", ".join(f"{long} ({', '.join(short)})" for long, short in aliases.items())
            raise argparse.ArgumentTypeError(f"unknown dtype {text!r}; choose from {names}")
        return DTYPE_NAMES[text]

    parser.add_argument("--dtype", type=long_name, choices=COMPUTE_DTYPES, help=help_text)
