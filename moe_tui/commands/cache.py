"""``moe-tui cache``: the quantized expert stores kept on disk, their sizes, and removing them.

A quantized start of ``chat`` (``--expert-bits``) keeps its packed store under the user cache directory (or
``--quant-cache DIR``), one directory per checkpoint and format, so the next start skips quantization. An entry
without its description file is incomplete (a start stopped while saving) and is rebuilt when next needed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from moe_tui.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``cache`` subcommand."""
    parser.add_argument("--dir", metavar="DIR", help="the cache directory (default: the user cache directory)")
    parser.add_argument("--remove", nargs="+", metavar="NAME", help="remove these entries (names as listed)")
    parser.add_argument("--clear", action="store_true", help="remove every entry")
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


def run(args: argparse.Namespace) -> int:
    """List the entries, or remove the ones named."""
    from moe_tui.paths import quant_cache_dir
    from moe_tui.precision import format_bytes

    root = Path(args.dir).expanduser() if args.dir else quant_cache_dir()
    if root.exists() and not root.is_dir():
        raise UserError(f"{root} is not a directory")
    entries = list_entries(root)
    if args.remove or args.clear:
        if args.remove and args.clear:
            raise UserError("choose either --remove NAME ... or --clear")
        names = {entry.name for entry in entries}
        chosen = names if args.clear else set(args.remove)
        unknown = sorted(chosen - names)
        if unknown:
            raise UserError(f"no cache entry named {', '.join(unknown)} in {root} (see `moe-tui cache`)")
        removed = [entry for entry in entries if entry.name in chosen]
        for entry in removed:
            shutil.rmtree(root / entry.name)
        freed = format_bytes(sum(entry.bytes for entry in removed))
        print(f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}, {freed} freed")
        return 0
    if args.json:
        print(json.dumps({"directory": str(root), "entries": [asdict(entry) for entry in entries]}, indent=1))
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
            )
        )
    return entries


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
    if not all(e.complete for e in entries):  # a column of its own only when some entry is incomplete
        headers.append("")
        rows = [[*row, "" if e.complete else "incomplete"] for row, e in zip(rows, entries, strict=True)]
    total = format_bytes(sum(e.bytes for e in entries))
    table = format_table(headers, rows)
    return f"quantized stores in {root} ({total}):\n\n{table}\n\nremove with: moe-tui cache --remove NAME (or --clear)"
