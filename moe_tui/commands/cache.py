"""``moe-tui cache``: the quantized expert stores kept on disk, their sizes, and removing them.

A quantized start of ``chat`` (``--expert-bits``) keeps its packed store under the user cache directory (or
``--quant-cache DIR``), one directory per checkpoint and format, so the next start skips quantization. An entry
without its description file is incomplete (a start stopped while saving) and is rebuilt when next needed. An
entry whose format this version lays out differently (int3's packing changed once) is outdated: its name is a
digest of the format's description, so no start will look at it again, and ``--remove-outdated`` frees it.
An entry a running moe-tui is building or saving (it holds the entry's lock) is listed as being written and is
never removed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from moe_tui.errors import UserError
from moe_tui.offload.store_lock import is_locked


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``cache`` subcommand."""
    parser.add_argument("--dir", metavar="DIR", help="the cache directory (default: the user cache directory)")
    parser.add_argument("--remove", nargs="+", metavar="NAME", help="remove these entries (names as listed)")
    parser.add_argument("--clear", action="store_true", help="remove every entry")
    parser.add_argument(
        "--remove-outdated",
        action="store_true",
        help="remove the entries no start of this version will read (incomplete, or an older layout)",
    )
    parser.add_argument("--json", action="store_true", help="print the entries as JSON")


@dataclass(frozen=True)
class CacheEntry:
    """One quantized store on disk."""

    name: str
    model: str
    format: str
    bytes: int
    written: str
    complete: bool
    outdated: bool = False  # laid out as this version no longer lays out its format (never read again)
    writing: bool = False  # a running moe-tui holds its lock: building or saving it now

    @property
    def unused(self) -> bool:
        """Whether no start of this version will read it (one being written will be read once saved)."""
        return not self.writing and (not self.complete or self.outdated)

    @property
    def state(self) -> str:
        """``being written``, ``incomplete``, ``outdated``, or "" for an entry the next start can read."""
        if self.writing:
            return "being written"
        return "incomplete" if not self.complete else "outdated" if self.outdated else ""


def run(args: argparse.Namespace) -> int:
    """List the entries, or remove the ones named."""
    from moe_tui.paths import quant_cache_dir
    from moe_tui.precision import format_bytes

    root = Path(args.dir).expanduser() if args.dir else quant_cache_dir()
    if root.exists() and not root.is_dir():
        raise UserError(f"{root} is not a directory")
    entries = list_entries(root)
    if args.remove or args.clear or args.remove_outdated:
        if sum(map(bool, (args.remove, args.clear, args.remove_outdated))) > 1:
            raise UserError("choose one of --remove NAME ..., --clear and --remove-outdated")
        names = {entry.name for entry in entries}
        if args.remove_outdated:
            chosen = {entry.name for entry in entries if entry.unused}
        else:
            chosen = names if args.clear else set(args.remove)
        unknown = sorted(chosen - names)
        if unknown:
            raise UserError(f"no cache entry named {', '.join(unknown)} in {root} (see `moe-tui cache`)")
        busy = sorted(entry.name for entry in entries if entry.name in chosen and entry.writing)
        if busy and not args.clear:
            raise UserError(f"{', '.join(busy)}: a running moe-tui is writing it; remove it once that start is done")
        removed = [entry for entry in entries if entry.name in chosen and not entry.writing]
        for entry in removed:
            shutil.rmtree(root / entry.name)
        freed = format_bytes(sum(entry.bytes for entry in removed))
        kept = f"; kept {', '.join(busy)}: a running moe-tui is writing it" if busy else ""
        print(f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}, {freed} freed{kept}")
        return 0
    if args.json:
        listed = [{**asdict(entry), "unused": entry.unused} for entry in entries]
        print(json.dumps({"directory": str(root), "entries": listed}, indent=1))
    else:
        print(format_entries(root, entries))
    return 0


def list_entries(root: Path) -> list[CacheEntry]:
    """Every entry under ``root``: name, model, format, bytes on disk, last written, complete or not."""
    if not root.is_dir():
        return []
    entries = []
    for directory in sorted(path for path in root.iterdir() if path.is_dir()):
        size = sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())
        meta = _description(directory / "store.json")
        written = max((path.stat().st_mtime for path in directory.iterdir()), default=directory.stat().st_mtime)
        entries.append(
            CacheEntry(
                name=directory.name,
                model=_model_of(meta),
                format=str((meta or {}).get("format", {}).get("format", "?")),
                bytes=size,
                written=datetime.datetime.fromtimestamp(written).strftime("%Y-%m-%d %H:%M"),
                complete=meta is not None,
                outdated=meta is not None and is_outdated(meta),
                writing=is_locked(directory),
            )
        )
    return entries


def is_outdated(meta: dict) -> bool:
    """Whether this version would not read a store described by ``meta``: its version, format or checkpoint
    differ from what the loader would describe (:func:`moe_tui.offload.build.store_description`) for the format
    this version builds from the recorded settings (on this kind of CPU, for the CPU kernels' layouts)."""
    import torch

    from moe_tui.offload.build import store_description
    from moe_tui.offload.formats import make_format

    try:
        written = meta["format"]
        fmt = make_format(
            [(int(rows), int(cols)) for rows, cols in written["shapes"]],
            getattr(torch, str(written["dtype"]).removeprefix("torch.")),
            written["bits"],
            int(written["group_size"]),
            "cuda" if written.get("layout") == "cuda" else "cpu",
            fused=not str(written["format"]).startswith("hqq"),  # HQQ's own layout is the unfused one
            optimize=bool(written.get("optimize", True)),
        )
        expected = store_description(fmt, meta.get("source"))
    except Exception:  # any description this version cannot rebuild is one it would not read
        return True
    return _plain(expected) != _plain({key: meta.get(key) for key in expected})


def _plain(description: dict) -> object:
    """A description as its JSON reads back (tuples as lists, dtypes as text)."""
    return json.loads(json.dumps(description, default=str))


def _model_of(meta: dict | None) -> str:
    """The model an entry was built from, as it was named when loaded (or how it was given)."""
    meta = meta or {}
    source = meta.get("source") or {}
    return str(meta.get("model") or source.get("kind", "?"))


def _description(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def format_entries(root: Path, entries: list[CacheEntry]) -> str:
    """The entries as a table with their total."""
    from moe_tui.precision import format_bytes
    from moe_tui.sim.table import format_table

    if not entries:
        return f"no quantized stores in {root}"
    headers = ["entry", "model", "format", "size", "written"]
    rows = [[e.name, e.model, e.format, format_bytes(e.bytes), e.written] for e in entries]
    if any(e.state for e in entries):  # a column of its own only when some entry cannot be read now
        headers.append("")
        rows = [[*row, e.state] for row, e in zip(rows, entries, strict=True)]
    total = format_bytes(sum(e.bytes for e in entries))
    table = format_table(headers, rows)
    hint = "remove with: moe-tui cache --remove NAME (or --clear)"
    unused = [e for e in entries if e.unused]
    if unused:
        freed = format_bytes(sum(e.bytes for e in unused))
        hint += f"\nno start will read the incomplete or outdated ones: --remove-outdated frees {freed}"
    return f"quantized stores in {root} ({total}):\n\n{table}\n\n{hint}"
