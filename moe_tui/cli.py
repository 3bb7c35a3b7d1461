"""The ``moe-tui`` command: parse arguments, dispatch to a subcommand, turn user errors into one line and exit 2."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from moe_tui import __version__
from moe_tui.engine_config import prefer_expandable_segments
from moe_tui.errors import UserError

# name -> (module under moe_tui.commands, one-line help). The first entry is the default subcommand.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "chat": ("chat", "open the dashboard and chat with a model (default)"),
    "ask": ("ask", "answer one question on stdout (streamed; --json: the text and the engine's counters)"),
    "params": ("params", "show what a model is made of: total and active parameters, bytes per precision"),
    "lab": ("lab", "replay a routing trace through every cache size and policy next to the optimum (Belady's MIN)"),
    "plan": ("plan", "list the offloading configurations that fit your memory, with a tokens/s estimate"),
    "bench": ("bench", "measure decode/prefill speed, hit rate and memory of one or several configurations"),
    "cache": ("cache", "list the quantized expert stores kept on disk, with their sizes, and remove them"),
}

DEFAULT_SUBCOMMAND = "chat"


class CommandParser(argparse.ArgumentParser):
    """The top-level parser; it keeps each subcommand's parser, so that an option a subcommand does not know is
    reported with that subcommand's usage rather than the top level's."""

    subcommands: dict[str, argparse.ArgumentParser]

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        """Parse like argparse, but name an unknown option under the subcommand it was given to."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.subcommands.get(getattr(parsed, "command", None) or "", self).error(
                f"unrecognized arguments: {' '.join(extras)}"
            )
        return parsed


def build_parser() -> CommandParser:
    """Build the top-level parser; each subcommand's arguments come from its own module."""
    parser = CommandParser(
        prog="moe-tui",
        description="Chat with an offloaded Mixture-of-Experts LLM and watch its experts, cache and memory live.",
        epilog=f"With no subcommand, '{DEFAULT_SUBCOMMAND}' runs on the bundled demo model.",
    )
    parser.add_argument("--version", action="version", version=f"moe-tui {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.subcommands = {}
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        _command_module(module_name).add_arguments(sub)
        parser.subcommands[name] = sub
    return parser


def _command_module(module_name: str):
    return importlib.import_module(f"moe_tui.commands.{module_name}")


def _with_default_subcommand(argv: list[str]) -> list[str]:
    """Insert the default subcommand when none is given (``moe-tui --theme light`` means ``moe-tui chat ...``)."""
    if argv and (argv[0] in SUBCOMMANDS or argv[0] in ("-h", "--help", "--version")):
        return argv
    return [DEFAULT_SUBCOMMAND, *argv]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the process exit code (0 ok, 1 failure, 2 bad input)."""
    prefer_expandable_segments()  # before anything starts CUDA in this process
    args_list = _with_default_subcommand(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(args_list)
    module = _command_module(SUBCOMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except UserError as error:
        print(f"moe-tui: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("moe-tui: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`moe-tui ask ... | head`): stop quietly, as command-line tools do, with the status
        # of a process ended by SIGPIPE; what is left to flush goes to /dev/null rather than fail at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
