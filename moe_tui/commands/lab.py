"""``moe-tui lab TRACE``: replay a routing trace through every cache size and policy next to Belady's optimum."""

from __future__ import annotations

import argparse
import json
from collections import Counter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``lab`` subcommand."""
    parser.add_argument(
        "trace", metavar="TRACE", help="a routing trace (JSON Lines) recorded with --record ('-': stdin)"
    )
    parser.add_argument("--json", action="store_true", help="print every replay as JSON instead of tables")
    parser.add_argument(
        "--k",
        type=int,
        default=None,
        metavar="K",
        help="cache size of the per-layer table (default: the size the trace was recorded with)",
    )
    parser.add_argument(
        "--all-layers", action="store_true", help="print the per-layer table for every cache size, not only one"
    )
    parser.add_argument(
        "--model",
        default=None,
        metavar="MODEL",
        help="check that the trace comes from this model's shape (config.json, model dir or cached hub id)",
    )


def run(args: argparse.Namespace) -> int:
    """Read the trace, replay it, print tables or JSON; bad input raises UserError (exit 2)."""
    from moe_tui.commands.traces import read_trace_for_command
    from moe_tui.errors import UserError
    from moe_tui.sim import lab_sizes, run_lab
    from moe_tui.sim.report import check_trace_shape, format_report
    from moe_tui.telemetry import LayerStep

    header, events = read_trace_for_command(args.trace)
    if not any(isinstance(e, LayerStep) for e in events):
        raise UserError(f"{args.trace} holds a header but no routing steps: nothing to replay")
    if args.model is not None:
        from moe_tui.params import load_config
        from moe_tui.plan import model_facts

        facts = model_facts(load_config(args.model), name=args.model)
        check_trace_shape(header, facts.moe_layers, facts.num_experts, facts.top_k, args.model)
    k = args.k if args.k is not None else Counter(header.cache_size).most_common(1)[0][0]
    if not 1 <= k <= header.num_experts:
        raise UserError(f"--k {k} is outside 1..{header.num_experts} (the trace's experts per layer)")
    report = run_lab(header, events, lab_sizes(header, also=(k,)))
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(format_report(report, args.trace, layer_sizes=report.cache_sizes if args.all_layers else (k,)))
    return 0
