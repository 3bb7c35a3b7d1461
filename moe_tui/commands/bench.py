"""``moe-tui bench``: decode/prefill speed, cache and memory figures of one or several configurations."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from moe_tui.commands import add_dtype_argument

if TYPE_CHECKING:
    from moe_tui.bench import BenchModel, Spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``bench`` subcommand."""
    source = parser.add_argument_group("model")
    source.add_argument(
        "--model",
        default=None,
        metavar="PATH_OR_HUB_ID",
        help="a model directory, or a hub id already in the local Hugging Face cache "
        "(default: demo-mixtral, the bundled demo model)",
    )
    source.add_argument(
        "--synthetic", action="store_true", help="a model with random weights, shaped by the flags below"
    )
    source.add_argument(
        "--family",
        default="mixtral",
        metavar="NAME",
        help="synthetic: the model family, any the engine offloads (mixtral, deepseek_v3, gpt_oss, ...; default "
        "mixtral)",
    )
    source.add_argument("--layers", type=int, default=4, help="synthetic: decoder layers (default 4)")
    source.add_argument("--hidden", type=int, default=1024, help="synthetic: hidden size (default 1024)")
    source.add_argument("--intermediate", type=int, default=2816, help="synthetic: expert width (default 2816)")
    source.add_argument("--experts", type=int, default=8, help="synthetic: experts per layer (default 8)")
    source.add_argument("--top-k", type=int, default=2, help="synthetic: experts per token (default 2)")
    source.add_argument("--heads", type=int, default=8, help="synthetic: attention heads (default 8)")
    source.add_argument("--kv-heads", type=int, default=2, help="synthetic: key/value heads (default 2)")
    source.add_argument("--vocab", type=int, default=4096, help="synthetic: vocabulary size (default 4096)")
    source.add_argument("--seed", type=int, default=0, help="synthetic: weight seed (default 0)")
    add_dtype_argument(source, "weights; bf16, fp16 and fp32 are taken too (default: the model's)")
    source.add_argument(
        "--routing", default=None, metavar="TRACE", help="force routing from a recorded trace ('-': stdin)"
    )
    runs = parser.add_argument_group("runs")
    runs.add_argument(
        "--config", default="k=2,prefetch=1", metavar="SPEC", help="the configuration (default k=2,prefetch=1)"
    )
    runs.add_argument(
        "--compare",
        nargs="*",
        default=None,
        metavar="SPEC",
        help="several configurations, ratios against the first (no SPEC: resident k=E k=2 k=2,prefetch=1 k=4 "
        "hf-offload). SPEC: resident | hf-offload | k=N[,prefetch=P,policy=lru,bits=B,attn-bits=B,group=G,"
        "store=ram|mmap,miss=copy|host|auto,fused=on|off,optimize=on|off|auto,telemetry=on|off,record=on|off]; "
        "k=3,2,2,...: one k per MoE layer",
    )
    runs.add_argument("--interleave", action="store_true", help="load all configurations at once and alternate them")
    runs.add_argument("--prompts", default=None, metavar="FILE", help="prompt file (default samples/prompts/bench.txt)")
    runs.add_argument("--tokens", type=int, default=32, help="new tokens per prompt (default 32)")
    runs.add_argument("--runs", type=int, default=2, help="measured passes over the prompts (default 2)")
    runs.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="fast tier (default auto)")
    runs.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    runs.add_argument("--record", default=None, metavar="TRACE", help="write the first engine configuration's trace")
    runs.add_argument(
        "--group-size",
        type=int,
        default=64,
        metavar="G",
        help="HQQ group size of quantized configurations that name none (group=G) (default 64)",
    )
    runs.add_argument(
        "--quant-cache",
        default=None,
        metavar="DIR",
        help="keep quantized expert stores here (default: the user cache directory, shared with chat; for "
        "--synthetic, only for this run)",
    )
    runs.add_argument("--no-quant-cache", action="store_true", help="quantize once per run and keep nothing on disk")
    runs.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    """Check the input, run the configurations, print a table or JSON; bad input raises UserError (exit 2)."""
    import tempfile
    from pathlib import Path

    from moe_tui import bench
    from moe_tui.engine_config import resolve_device
    from moe_tui.errors import UserError

    if args.tokens < 2:
        raise UserError("--tokens must be at least 2 (decode speed is measured after the first new token)")
    if args.runs < 1:
        raise UserError("--runs must be at least 1")
    if args.quant_cache and args.no_quant_cache:
        raise UserError("choose either --quant-cache DIR or --no-quant-cache")
    if args.threads is not None:
        if args.threads < 1:
            raise UserError("--threads must be at least 1")
        import torch

        torch.set_num_threads(args.threads)
    from moe_tui.offload import memory

    memory.bound_kernel_caches()  # before the resident runs' first matmul, so they compute as chat's engine does
    prompts = bench.load_prompts(args.prompts or bench.DEFAULT_PROMPTS)
    device = resolve_device(args.device).type
    with tempfile.TemporaryDirectory(prefix="moe-tui-synthetic-") as scratch:
        if args.synthetic:
            if args.model:
                raise UserError("give either --model or --synthetic, not both")
            shape = _shape(args)
            specs = _specs(args, shape.experts)  # checked first: the model is gigabytes at real shapes
            source = bench.write_synthetic(shape, Path(scratch), args.dtype or "float32")
        else:
            from moe_tui.chat.session import resolve_model

            directory, name = resolve_model(args.model)  # as chat reads --model: a directory or a cached hub id
            source = bench.open_model(directory, args.dtype, name)
            specs = _specs(args, source.num_experts)
        _check_layer_lists(specs, source)
        routing, notes = _routing(args.routing, source)
        if source.tokenizer_problem:
            notes.append(
                f"the model's tokenizer did not load ({source.tokenizer_problem}): the prompts were fed as their "
                "UTF-8 bytes, folded into the vocabulary"
            )
        settings = bench.Settings(
            prompts=[source.encode(p) for p in prompts],
            new_tokens=args.tokens,
            runs=args.runs,
            device=device,
            quant_cache=_quant_cache(args),
        )
        say = (lambda message: None) if args.json else (lambda message: print(f"... {message}", file=sys.stderr))
        if args.interleave:
            if routing is not None:
                raise UserError("--routing cannot be combined with --interleave (one router hook per model)")
            results = bench.run_interleaved(source, specs, settings, progress=say)
            notes.append("configurations were loaded together and run in turn (--interleave): peak RSS is shared")
        else:
            results = bench.run_configs(source, specs, settings, routing=routing, progress=say)
        outcome = bench.report(source, settings, results, notes)
    print(bench.dumps(outcome) if args.json else bench.format_report(outcome))
    return 0


def _specs(args: argparse.Namespace, num_experts: int) -> list[Spec]:
    """The configurations to run (``--config`` or ``--compare``), the first engine one recording with ``--record``."""
    from dataclasses import replace
    from pathlib import Path

    from moe_tui import bench
    from moe_tui.errors import UserError
    from moe_tui.telemetry.trace import check_new_trace_path

    texts = (args.compare or list(bench.DEFAULT_COMPARE)) if args.compare is not None else [args.config]
    specs = [bench.parse_spec(text, num_experts, args.group_size) for text in texts]
    if args.record:
        engines = [i for i, spec in enumerate(specs) if spec.kind == "engine"]
        if not engines:
            raise UserError("--record needs an engine configuration (k=...) to record")
        check_new_trace_path(args.record)
        specs[engines[0]] = replace(specs[engines[0]], record=True, trace_path=Path(args.record))
    return specs


def _check_layer_lists(specs: list[Spec], source: BenchModel) -> None:
    """Check every per-layer k list against the model's MoE layers before any configuration runs, with the
    engine's own check (which would otherwise refuse it only at that configuration's turn, maybe after hours)."""
    from moe_tui.errors import UserError
    from moe_tui.offload.loader import count_moe_layers

    lists = [spec for spec in specs if spec.engine is not None and isinstance(spec.engine.cache_size, list)]
    if not lists:
        return
    layers = count_moe_layers(source.directory)
    for spec in lists:
        try:
            spec.engine.cache_sizes(layers, source.num_experts)
        except UserError as error:
            raise UserError(f"configuration {spec.label!r}: {error}") from None


def _quant_cache(args: argparse.Namespace) -> str | None:
    """Where quantized stores are kept: ``--quant-cache``, else the user cache directory that ``chat`` uses, so a
    checkpoint quantized by either is not quantized again; None (this run only) with ``--no-quant-cache`` or for
    a synthetic model, which is written anew for every run and would only fill the cache."""
    if args.no_quant_cache or (args.synthetic and args.quant_cache is None):
        return None
    if args.quant_cache is not None:
        return args.quant_cache
    from moe_tui.paths import quant_cache_dir

    return str(quant_cache_dir())


def _shape(args: argparse.Namespace):
    from moe_tui.bench import SyntheticShape
    from moe_tui.errors import UserError

    numbers = {
        "--layers": args.layers,
        "--hidden": args.hidden,
        "--intermediate": args.intermediate,
        "--experts": args.experts,
        "--top-k": args.top_k,
        "--heads": args.heads,
        "--kv-heads": args.kv_heads,
        "--vocab": args.vocab,
    }
    for flag, value in numbers.items():
        if value < 1:
            raise UserError(f"{flag} must be at least 1")
    if args.top_k > args.experts:
        raise UserError(f"--top-k {args.top_k} is more than --experts {args.experts}")
    from moe_tui.offload.families import FAMILIES

    if args.family not in FAMILIES:
        raise UserError(f"unknown --family {args.family!r}; choose from {', '.join(FAMILIES)}")
    if args.hidden % args.heads or args.heads % args.kv_heads:
        raise UserError("--hidden must be a multiple of --heads, and --heads a multiple of --kv-heads")
    return SyntheticShape(
        layers=args.layers,
        hidden=args.hidden,
        intermediate=args.intermediate,
        experts=args.experts,
        top_k=args.top_k,
        heads=args.heads,
        kv_heads=args.kv_heads,
        vocab=args.vocab,
        seed=args.seed,
        family=args.family,
    )


def _routing(path: str | None, source) -> tuple:
    """The forced routing from a trace (checked against the model's shape) and the note it adds."""
    from moe_tui.bench import ForcedRouting
    from moe_tui.commands.traces import read_trace_for_command
    from moe_tui.sim.report import check_trace_shape

    if path is None:
        return None, []
    header, events = read_trace_for_command(path)
    check_trace_shape(header, source.num_layers, source.num_experts, source.top_k, source.description)
    note = f"routing forced from {path}: prefetch guesses still come from the model's own routers"
    return ForcedRouting(header, events), [note]
