"""``moe-tui plan MODEL``: the offloading configurations that fit a machine, with memory and a tokens/s estimate."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import replace

from moe_tui.commands import add_model_argument, chosen_model

FORMULA = (
    "C = non-expert bytes a token reads / compute bandwidth + quantized non-expert bytes / dequantization "
    "bandwidth + expert bytes it reads / expert bandwidth (per precision) + per-token overhead O; "
    "M = misses/token x expert bytes / transfer bandwidth; "
    "P = prefetch copies/token x expert bytes / transfer bandwidth; seconds/token = C + M + P on CPU, "
    "max(C, P) + M on CUDA; bound = transfer when M + P > C, else compute; with --miss host (CPU) nothing is "
    "copied: M = P = 0"
)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``plan`` subcommand."""
    add_model_argument(parser, "config.json, model directory, bundled config name, demo-mixtral or hub id")
    parser.add_argument(
        "--vram", default=None, metavar="SIZE", help="GPU memory for the fast tier, e.g. 16GiB (omit: CPU only)"
    )
    parser.add_argument("--ram", default=None, metavar="SIZE", help="host memory, e.g. 64GiB (default: this machine's)")
    parser.add_argument(
        "--trace", default=None, metavar="TRACE", help="routing trace whose hit rates to use ('-': stdin)"
    )
    parser.add_argument(
        "--bandwidth", type=float, default=None, metavar="GB/s", help="slow-to-fast tier copy speed (default: measured)"
    )
    parser.add_argument(
        "--compute-bandwidth",
        type=float,
        default=None,
        metavar="GB/s",
        help="speed at which decoding reads fast-tier non-expert weights, and experts where their own rate cannot "
        "be measured (default: measured)",
    )
    parser.add_argument(
        "--overhead-ms",
        type=float,
        default=None,
        metavar="MS",
        help="per-token time that does not depend on weight size (default: measured on a miniature model)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads for the probes (default: torch's)")
    parser.add_argument(
        "--context",
        type=int,
        default=None,
        metavar="TOKENS",
        help="KV cache length (default 4096, or the model's own limit when smaller)",
    )
    parser.add_argument(
        "--all", action="store_true", help="list every fitting configuration, not only the best per precision"
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def parse_size(text: str, option: str) -> int:
    """``16GiB``, ``64G``, ``1.5TB``, ``512MiB`` (G/GiB binary, GB decimal) in bytes; UserError otherwise."""
    from moe_tui.errors import UserError

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise UserError(f"{option} {text!r} is not a size: write it like 16GiB, 512MiB or 64G")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise UserError(f"{option} must be more than zero")
    return value


def run(args: argparse.Namespace) -> int:
    """Build the plan and print it; bad input raises UserError (exit 2)."""
    args.model = chosen_model(args)
    from moe_tui import plan
    from moe_tui.errors import UserError
    from moe_tui.params import load_config

    if args.context is not None and args.context < 1:
        raise UserError("--context must be at least 1 token")
    for option, value in (("--bandwidth", args.bandwidth), ("--compute-bandwidth", args.compute_bandwidth)):
        if value is not None and value <= 0:
            raise UserError(f"{option} must be more than zero GB/s")
    if args.overhead_ms is not None and args.overhead_ms < 0:
        raise UserError("--overhead-ms cannot be negative")
    if args.threads is not None:
        if args.threads < 1:
            raise UserError("--threads must be at least 1")
        import torch

        torch.set_num_threads(args.threads)
    facts = plan.model_facts(load_config(args.model), name=args.model)
    formats = _engine_formats(facts, "cpu" if args.vram is None else "cuda")
    # an expert's bytes in the engine's own format (int3 packs 3 bits where HQQ's layout takes 3.2)
    facts = replace(facts, expert_bytes={**facts.expert_bytes, **{p: f.nbytes for p, f in formats.items()}})
    machine, sources = _machine(args, facts, formats)
    copy_model, layer_misses, routing = _copy_model(args, facts)
    every = plan.candidates(facts, machine, copy_model, prefetch_depths=range(facts.num_experts + 1))
    if layer_misses is not None:
        every += _per_layer(facts, machine, layer_misses)
    fitting = [c for c in every if plan.fits(c, machine)]
    if not fitting:
        raise UserError(plan.nothing_fits_message(facts, machine))
    shown = fitting if args.all else plan.best_per_precision(fitting)
    if args.json:
        print(json.dumps(_as_json(facts, machine, sources, routing, shown, len(fitting)), indent=1))
    else:
        print(_as_text(facts, machine, sources, routing, shown, len(fitting), args.all))
    return 0


def _machine(args: argparse.Namespace, facts, formats: dict) -> tuple:
    """The budget, the bandwidths and the per-token overhead (given, measured here, or unknown) with sources."""
    import psutil

    from moe_tui import probes
    from moe_tui.fit import context_tokens
    from moe_tui.plan import ATTN_BITS, Machine
    from moe_tui.precision import precision_for_bits

    host = parse_size(args.ram, "--ram") if args.ram else psutil.virtual_memory().total
    fast = parse_size(args.vram, "--vram") if args.vram else None
    device = "cpu" if fast is None else "cuda"
    transfer = args.bandwidth * 1e9 if args.bandwidth else None
    compute = args.compute_bandwidth * 1e9 if args.compute_bandwidth else None
    overhead = args.overhead_ms / 1000 if args.overhead_ms is not None else None
    sources = {"transfer": "given", "compute": "given", "overhead": "given", "dequant": "not measured"}
    sources["experts"] = "not measured: experts are read at the compute bandwidth"
    dequant: dict[str, float] = {}
    experts: dict[str, float] = {}
    if device == "cuda" and not _cuda_available():
        unknown = "no CUDA device here to measure it"
        if transfer is None or compute is None:
            sources = dict.fromkeys(sources, unknown)
            transfer = compute = overhead = None
        elif overhead is None:
            sources["overhead"] = unknown + ": left out, pass --overhead-ms"
    else:
        where = "host RAM to host RAM" if device == "cpu" else "pinned host memory to CUDA"
        if transfer is None:
            transfer = probes.transfer_bandwidth(device)
            sources["transfer"] = f"measured here ({where})"
        if compute is None:
            compute = probes.compute_bandwidth(device, facts.dtype)
            sources["compute"] = f"measured here (one-token {facts.dtype} linear layer on {device})"
        if overhead is None:
            layers = facts.decoder_layers or facts.moe_layers
            overhead = probes.per_token_overhead(layers, facts.num_experts, facts.top_k, device)
            sources["overhead"] = f"measured here (engine on a hidden-64 Mixtral of {layers} layers, {device})"
        dequant = {
            precision_for_bits(bits, facts.dtype): probes.dequant_bandwidth(
                facts.expert_shapes, bits, facts.dtype, device
            )
            for bits in ATTN_BITS
            if bits is not None
        }
        sources["dequant"] = f"measured here (HQQ's layout, as HQQLinear unpacks non-expert weights, on {device})"
        experts = {precision: probes.expert_bandwidth(fmt, device) for precision, fmt in formats.items()}
        sources["experts"] = f"measured here (one token through one expert in the engine's format on {device})"
    machine = Machine(
        host_bytes=host,
        fast_bytes=fast,
        transfer_bandwidth=transfer,
        compute_bandwidth=compute,
        context=context_tokens(args.context, facts.context_limit),
        overhead_s=overhead or 0.0,
        dequant_bandwidth=dequant,
        expert_bandwidth=experts,
        formats={precision: fmt.label() for precision, fmt in formats.items()},
        workspace_bytes={precision: fmt.workspace_bytes for precision, fmt in formats.items()},
    )
    return machine, sources


def _engine_formats(facts, device: str) -> dict:
    """For each expert precision the planner plans, the format the engine would compute it in on ``device``
    (``int4``, ``int2 (unfused)``, ``hqq3 (unfused)`` on CUDA): its label, bytes and workspace are the plan's."""
    from moe_tui.engine_config import dtype_named
    from moe_tui.offload.formats import make_format
    from moe_tui.plan import EXPERT_BITS
    from moe_tui.precision import precision_for_bits

    return {
        precision_for_bits(bits, facts.dtype): make_format(
            list(facts.expert_shapes), dtype_named(facts.dtype), bits, 64, device
        )
        for bits in EXPERT_BITS
    }


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _per_layer(facts, machine, layer_misses) -> list:
    """Per-layer cache sizes for every precision pair, where they beat the same slots spread evenly."""
    from moe_tui import plan
    from moe_tui.precision import precision_for_bits

    found = []
    for e_bits in plan.EXPERT_BITS:
        for a_bits in plan.ATTN_BITS:
            e_prec, a_prec = precision_for_bits(e_bits, facts.dtype), precision_for_bits(a_bits, facts.dtype)
            candidate = plan.per_layer_candidate(facts, machine, e_prec, a_prec, layer_misses)
            if candidate is not None:
                found.append(candidate)
    return found


def _copy_model(args: argparse.Namespace, facts) -> tuple:
    """Copies per token (and per layer, with a trace) from the trace, checked against the model's shape, or
    from uniform routing."""
    from moe_tui import plan
    from moe_tui.commands.traces import read_trace_for_command
    from moe_tui.sim.report import check_trace_shape

    if args.trace is None:
        text = f"uniform routing assumed (no --trace): hit rate = k / {facts.num_experts}, no prefetch"
        return plan.uniform_copy_model(facts), None, text
    header, events = read_trace_for_command(args.trace)
    check_trace_shape(header, facts.moe_layers, facts.num_experts, facts.top_k, args.model)
    model = plan.trace_copy_model(header, events)
    text = f"LRU replay of trace {args.trace} (decoded tokens only"
    text += f"; prefetch {header.prefetch} replays its guesses)" if header.prefetch else ")"
    return model, plan.trace_layer_misses(header, events), text


def _as_text(facts, machine, sources, routing, shown, fitting: int, every: bool) -> str:
    from moe_tui.precision import format_bytes
    from moe_tui.sim.table import format_table, percent

    fast = "host RAM (CPU only)" if machine.fast_bytes is None else f"{format_bytes(machine.fast_bytes)} (CUDA)"
    lines = [
        f"plan for {facts.name}: {facts.moe_layers} MoE layers x {facts.num_experts} experts, top-{facts.top_k}, "
        f"{facts.dtype}; one expert {format_bytes(facts.expert_bytes[facts.dtype])} ({facts.dtype}), "
        f"{format_bytes(facts.expert_bytes['hqq4'])} (hqq4)",
        f"budget: fast tier {fast}, host {format_bytes(machine.host_bytes)}, KV cache for {machine.context} tokens",
        f"routing: {routing}",
        f"transfer bandwidth: {_gbps(machine.transfer_bandwidth)} ({sources['transfer']})",
        f"compute bandwidth: {_gbps(machine.compute_bandwidth)} ({sources['compute']})",
        f"per-token overhead O: {1000 * machine.overhead_s:.2f} ms ({sources['overhead']})",
        f"dequantization bandwidth: {_rates_text(machine.dequant_bandwidth)} ({sources['dequant']})",
        f"expert bandwidth: {_rates_text(machine.expert_bandwidth, machine.formats)} ({sources['experts']})",
        f"estimate: {FORMULA}",
        "",
    ]
    headers = [
        "experts", "other", "k", "prefetch", "miss", "fast tier", "host", "hit rate", "copies/token", "tok/s", "bound",
    ]  # fmt: skip
    rows = []
    for c in shown:
        copies = f"{c.misses_per_token:.2f}" + (f" +{c.prefetch_per_token:.2f} pf" if c.prefetch else "")
        speed = "-" if c.tokens_per_s is None else f"{c.tokens_per_s:.2f}"
        rows.append(
            [
                machine.formats.get(c.expert_precision, c.expert_precision),
                c.attn_precision,
                _k_text(c),
                str(c.prefetch),
                c.miss,
                format_bytes(c.fast_bytes),
                format_bytes(c.host_bytes),
                percent(c.hit_rate),
                copies,
                speed,
                c.bound or "-",
            ]
        )
    lines.append(format_table(headers, rows, left=2))
    lines.append("\nto run a configuration (rows in order):")
    lines += [f"  {number}. {chat_command(c, facts.name, machine)}" for number, c in enumerate(shown, start=1)]
    if shown:
        lines.append(f"to measure them side by side:\n  {bench_command(shown, facts.name, machine)}")
    if _is_bundled_config(facts.name):
        lines.append(
            f"  ({facts.name} is a config bundled with moe-tui, not a checkpoint: give chat and bench the model's "
            "directory or hub id instead)"
        )
    best = "the best k per precision pair, prefetch depth and miss (--all: all)"
    scope = "every fitting configuration" if every else best
    lines.append(f"\n{fitting} configurations fit; shown: {scope}.")
    from moe_tui.fit import MARGIN, PREFILL_CHUNK

    lines.append(
        f"The fast tier counts a {PREFILL_CHUNK}-token prefill chunk's activations and a "
        f"{format_bytes(MARGIN[machine.device])} margin (CUDA context, allocator, libraries), as chat checks it; "
        "attention over a long context is not in C."
    )
    return "\n".join(lines)


def _is_bundled_config(name: str) -> bool:
    """Whether ``name`` is one of the configs in samples/configs/ rather than a path or a hub id."""
    from pathlib import Path

    from moe_tui.paths import CONFIGS_DIR

    return not Path(name).exists() and (CONFIGS_DIR / f"{name}.json").is_file()


def chat_command(candidate, model: str, machine) -> str:
    """The ``moe-tui chat`` line that runs ``candidate`` (per-layer cache sizes as a comma list)."""
    import shlex

    parts = ["moe-tui", "chat", "--model", model, "--cache-size", _cache_size(candidate)]
    parts += ["--prefetch", str(candidate.prefetch)]
    for which, bits in _quantized_bits(candidate).items():
        parts += [f"--{which}-bits", str(bits)]
    if candidate.miss != "copy":
        parts += ["--miss", candidate.miss]
    parts += ["--context", str(machine.context), "--device", machine.device]
    return shlex.join(parts)


def bench_spec(candidate) -> str:
    """``candidate`` as a ``moe-tui bench`` configuration (``k=3,2,2,prefetch=1,bits=4``, ``...,miss=host``)."""
    names = {"expert": "bits", "attn": "attn-bits"}
    spec = f"k={_cache_size(candidate)},prefetch={candidate.prefetch}"
    spec += "".join(f",{names[which]}={bits}" for which, bits in _quantized_bits(candidate).items())
    return spec if candidate.miss == "copy" else f"{spec},miss={candidate.miss}"


def _cache_size(candidate) -> str:
    """k, or one k per MoE layer as a comma list (as chat's --cache-size and bench's k= read it)."""
    return ",".join(map(str, candidate.layer_sizes)) if candidate.layer_sizes else str(candidate.cache_size)


def _quantized_bits(candidate) -> dict[str, int]:
    """The HQQ bit widths of the quantized parts (``expert``, ``attn``); a part kept unquantized is left out."""
    from moe_tui.precision import HQQ_BITS

    parts = {"expert": candidate.expert_precision, "attn": candidate.attn_precision}
    return {which: HQQ_BITS[precision] for which, precision in parts.items() if precision in HQQ_BITS}


def bench_command(candidates, model: str, machine) -> str:
    """The ``moe-tui bench`` line that measures ``candidates`` one after another (ratios against the first)."""
    import shlex

    specs = [bench_spec(candidate) for candidate in candidates]
    return shlex.join(["moe-tui", "bench", "--model", model, "--device", machine.device, "--compare", *specs])


def _rates_text(rates: dict[str, float], names: dict[str, str] | None = None) -> str:
    """``hqq4 0.8 GB/s, hqq8 1.6 GB/s``, each precision under its name in ``names`` when it has one."""
    named = (((names or {}).get(p, p), v) for p, v in sorted(rates.items()))
    return ", ".join(f"{name} {_gbps(v)}" for name, v in named) or "left out"


def _k_text(candidate) -> str:
    if not candidate.layer_sizes:
        return str(candidate.cache_size)
    return f"{min(candidate.layer_sizes)}-{max(candidate.layer_sizes)}*"


def _gbps(value: float | None) -> str:
    return "unknown" if value is None else f"{value / 1e9:.1f} GB/s"


def _as_json(facts, machine, sources, routing, shown, fitting: int) -> dict:
    from dataclasses import asdict

    return {
        "model": asdict(facts),
        "machine": {**asdict(machine), "device": machine.device},
        "bandwidth_sources": sources,
        "routing": routing,
        "formula": FORMULA,
        "fitting": fitting,
        "configurations": [
            {**c.to_dict(), "command": chat_command(c, facts.name, machine), "bench": bench_spec(c)} for c in shown
        ],
        "bench_command": bench_command(shown, facts.name, machine) if shown else None,
    }
