"""``moe-tui params MODEL``: what a model is made of, from its config alone (nothing is downloaded)."""

from __future__ import annotations

import argparse

from moe_tui import precision as prec  # standard library only: cheap at import
from moe_tui.commands import add_model_argument, chosen_model
from moe_tui.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``moe-tui params``."""
    add_model_argument(
        parser,
        "a config.json, a model directory, a bundled sample (e.g. mixtral-8x7b), demo-mixtral "
        "or a hub id already in the local Hugging Face cache",
    )
    parser.add_argument("--json", action="store_true", help="print a machine-readable JSON document instead")
    parser.add_argument("--depth", type=int, default=None, metavar="N", help="show N levels below the model")
    parser.add_argument(
        "--precision",
        choices=prec.PRECISIONS,
        default="bf16",
        help="precision of the bytes column (default: bf16)",
    )
    parser.add_argument(
        "--group-size",
        type=int,
        default=prec.DEFAULT_GROUP_SIZE,
        metavar="G",
        help=f"HQQ quantization group size for the memory figures (default: {prec.DEFAULT_GROUP_SIZE})",
    )


def run(args: argparse.Namespace) -> int:
    """Load the config, build the tree on the meta device and print it (Rich tree or JSON)."""
    args.model = chosen_model(args)
    if args.depth is not None and args.depth < 0:
        raise UserError(f"--depth must be 0 or more, not {args.depth}")
    if args.group_size < 1:
        raise UserError(f"--group-size must be a positive number of weights, not {args.group_size}")
    from moe_tui.params import build_tree, load_config

    _quiet_transformers()
    config = load_config(args.model)
    tree = build_tree(config)
    if args.json:
        import json

        from moe_tui.params.report import to_json

        document = to_json(
            tree, source=config.name_or_path, precision=args.precision, group_size=args.group_size, depth=args.depth
        )
        print(json.dumps(document, indent=2))
        return 0
    from rich.console import Console

    from moe_tui.params.render import render, required_width

    console = Console()
    if not console.is_terminal:  # piped or captured: never cut the number columns off
        console = Console(width=max(console.width, required_width(tree, args.depth)))
    console.print(render(tree, args.precision, args.group_size, args.depth))
    return 0


def _quiet_transformers() -> None:
    """Keep transformers' advisory warnings (config defaults, deprecations) out of the report."""
    from transformers.utils import logging

    logging.set_verbosity_error()
