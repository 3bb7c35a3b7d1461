"""The slow tier: every routed expert of every MoE layer as one contiguous byte buffer.

Three kinds of storage, all laid out as ``[layer][expert][byte]``:

* ``ram``: one ordinary host tensor per layer;
* ``pinned``: page-locked host memory per layer, so copies to a CUDA device can run asynchronously. Each layer
  is an ordinary page-aligned host allocation registered with CUDA (``cudaHostRegister``), so it takes its
  exact size: PyTorch's pinned allocator would round each allocation up to a power of two (a 23.6 GiB 4-bit
  Mixtral store would lock 32 GiB). Registration is undone when the store is closed or collected;
* ``mmap``: one file on disk mapped into memory (``torch.from_file``), so a store larger than RAM still works:
  the kernel pages experts in when a copy reads them. Without a quantized-store cache directory the file is
  a temporary one, unlinked as soon as it is mapped, so nothing is left behind even after a crash.

A store can be saved to (and reopened from) a cache directory next to a small JSON description, so that a
second start skips quantization.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import torch
from torch import Tensor

STORE_FILE = "experts.bin"
META_FILE = "store.json"
PARTIAL_FILES = (META_FILE + ".partial", STORE_FILE + ".partial")  # a save's files until it is whole
STORE_KINDS = ("ram", "pinned", "mmap")
LayerProgress = Callable[[int, int], None]  # (layers done, layers in all)
READ_CHUNK = 64 * 1024**2  # a saved store is read back in pieces of this size, several at once
READ_THREADS = 8  # at most (and no more than the CPUs): two threads read twice as fast as one on a 2-core machine


class ExpertStore:
    """Packed expert buffers for ``num_layers`` x ``num_experts`` experts of ``nbytes`` bytes each."""

    def __init__(self, num_layers: int, num_experts: int, nbytes: int, kind: str = "ram", path: Path | None = None):
        if kind not in STORE_KINDS:
            raise ValueError(f"unknown store kind {kind!r}")
        self.num_layers = num_layers
        self.num_experts = num_experts
        self.nbytes = nbytes
        self.kind = kind
        self.path = path
        self._layers: list[Tensor] = []
        if kind == "mmap":
            self._layers = list(_map_file(path, num_layers * num_experts * nbytes, create=True).view(num_layers, -1))
        else:
            self._allocate()

    def _allocate(self) -> None:
        """One host buffer per layer, page-locked for a ``pinned`` store (see the module docstring)."""
        size = self.num_experts * self.nbytes
        if self.kind != "pinned":
            self._layers = [torch.empty(size, dtype=torch.uint8) for _ in range(self.num_layers)]
            return
        registered: list[int] = []
        self._unpin = weakref.finalize(self, _unregister, registered)
        for _ in range(self.num_layers):
            raw = torch.empty(size + mmap.PAGESIZE, dtype=torch.uint8)
            start = -raw.data_ptr() % mmap.PAGESIZE
            layer = raw[start : start + size]
            _register(layer.data_ptr(), size)
            registered.append(layer.data_ptr())
            self._layers.append(layer)

    @property
    def total_bytes(self) -> int:
        """Bytes of all expert buffers together."""
        return self.num_layers * self.num_experts * self.nbytes

    def row(self, layer: int, expert: int) -> Tensor:
        """The buffer of one expert (a view, ``nbytes`` uint8)."""
        start = expert * self.nbytes
        return self._layers[layer][start : start + self.nbytes]

    def save(
        self, directory: Path, description: dict[str, object], model: str = "", progress: LayerProgress | None = None
    ) -> None:
        """Write the store to ``directory`` so that a kill at any moment leaves no store that looks valid and is
        not: the old description goes first, the data is written to a partial file, synced and renamed, and the
        new description (also synced and renamed) comes last. ``model`` names the model for listings (``moe-tui
        cache``); it is not part of what a reuse must match. ``progress(done, total)`` follows the layers written
        (an mmap store's are on disk already: it reports them all at once)."""
        report = progress or (lambda done, total: None)
        directory.mkdir(parents=True, exist_ok=True)
        _remove(directory / META_FILE)
        target = directory / STORE_FILE
        if target.is_dir():
            _remove(target)
        if self.kind == "mmap" and self.path is not None:
            with open(self.path, "rb+") as handle:  # the mapping's dirty pages reach the disk before the rename
                os.fsync(handle.fileno())
            os.replace(self.path, target)
            self.path = target
            report(self.num_layers, self.num_layers)
        else:
            partial = directory / (STORE_FILE + ".partial")
            with open(partial, "wb") as handle:
                report(0, self.num_layers)
                for done, layer in enumerate(self._layers, start=1):
                    handle.write(memoryview(layer.numpy()))
                    report(done, self.num_layers)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, target)
        meta = {"layers": self.num_layers, "experts": self.num_experts, "nbytes": self.nbytes, **description}
        meta["model"] = model
        partial_meta = directory / (META_FILE + ".partial")
        with open(partial_meta, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(meta, sort_keys=True, default=str))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial_meta, directory / META_FILE)

    @classmethod
    def open_saved(
        cls,
        directory: Path,
        num_layers: int,
        num_experts: int,
        nbytes: int,
        kind: str,
        description: dict[str, object],
        progress: LayerProgress | None = None,
    ) -> tuple[ExpertStore | None, str]:
        """Reopen a store saved with the same shape and description.

        Returns the store and "", or None and why the directory's entry cannot be used ("" when there is none):
        an entry that is incomplete, unreadable, corrupt or from another format version is never trusted.
        ``progress(done, total)`` follows the layers read into memory, from the moment the entry passed its
        checks (an mmap store maps its file and reads nothing: it reports every layer at once).
        """
        report = progress or (lambda done, total: None)
        if not directory.exists():
            return None, ""
        problem = cls.saved_problem(directory, num_layers, num_experts, nbytes, description)
        if problem:
            return None, problem
        data_path = directory / STORE_FILE
        store = cls.__new__(cls)
        store.num_layers, store.num_experts, store.nbytes, store.kind, store.path = (
            num_layers,
            num_experts,
            nbytes,
            kind,
            data_path,
        )
        store._layers = []
        if kind == "mmap":
            mapped = _map_file(data_path, num_layers * num_experts * nbytes, create=False)
            store._layers = list(mapped.view(num_layers, -1))
            report(num_layers, num_layers)
            return store, ""
        store._allocate()
        report(0, num_layers)
        try:
            _read_layers(data_path, store._layers, report)
        except EOFError:
            return None, "truncated"
        except OSError as error:
            return None, f"unreadable ({error.strerror or error})"
        return store, ""

    @staticmethod
    def saved_problem(
        directory: Path, num_layers: int, num_experts: int, nbytes: int, description: dict[str, object]
    ) -> str:
        """Why the store saved in ``directory`` cannot be reused ("" when it can, as far as its files tell)."""
        meta_path = directory / META_FILE
        data_path = directory / STORE_FILE
        try:
            if not meta_path.is_file() or not data_path.is_file():
                return "incomplete (a start stopped while saving it)"
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            size = data_path.stat().st_size
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            return f"unreadable ({getattr(error, 'strerror', None) or type(error).__name__})"
        expected = {"layers": num_layers, "experts": num_experts, "nbytes": nbytes, **description}
        expected = json.loads(json.dumps(expected, sort_keys=True, default=str))
        if isinstance(meta, dict):
            meta.pop("model", None)
        if meta != expected:
            return "written by another version or for another format"
        if size != num_layers * num_experts * nbytes:
            return "truncated"
        return ""

    @staticmethod
    def discard(directory: Path) -> None:
        """Remove what a failed or interrupted save left in ``directory`` (the entry is rebuilt next time)."""
        _remove_from(directory, (META_FILE, *PARTIAL_FILES))

    @staticmethod
    def discard_unfinished(directory: Path) -> None:
        """Remove what a build or save that stopped left in ``directory``: its partial files, and the data file
        of an entry without a description (one being rebuilt). A saved entry, description and all, stays."""
        described = (directory / META_FILE).exists()
        _remove_from(directory, PARTIAL_FILES if described else (*PARTIAL_FILES, STORE_FILE))

    def close(self) -> None:
        """Drop the buffers (a pinned store's registration first; an mmap store's mapping goes with its last
        view)."""
        unpin = getattr(self, "_unpin", None)
        if unpin is not None:
            unpin()
        self._layers = []


def _register(pointer: int, size: int) -> None:
    """Page-lock ``size`` bytes of host memory at ``pointer`` for asynchronous copies to CUDA devices."""
    code = int(torch.cuda.cudart().cudaHostRegister(pointer, size, 0))
    if code != 0:
        raise MemoryError(f"CUDA could not page-lock {size} bytes of host memory for the expert store (error {code})")


def _unregister(pointers: list[int]) -> None:
    """Undo :func:`_register` for every pointer (before their memory is freed)."""
    while pointers:
        torch.cuda.cudart().cudaHostUnregister(pointers.pop())


def _read_layers(path: Path, layers: list[Tensor], report: LayerProgress) -> None:
    """Fill ``layers`` (equal byte buffers, in file order) from the file at ``path``, in chunks read by several
    threads (a read releases the GIL, and filling fresh pages is work for more than one core); ``report(done,
    total)`` after each layer is complete. EOFError when the file ends early, OSError when it cannot be read."""
    layer_bytes = layers[0].numel() if layers else 0
    starts = range(0, layer_bytes, READ_CHUNK)
    chunks = [(index, start) for index in range(len(layers)) for start in starts]
    left = [len(starts)] * len(layers)  # chunks still to read, per layer

    def read(chunk: tuple[int, int]) -> int:
        index, start = chunk
        view = memoryview(layers[index].numpy())[start : start + READ_CHUNK]
        with open(path, "rb", buffering=0) as handle:
            handle.seek(index * layer_bytes + start)
            while view:
                count = handle.readinto(view)
                if not count:
                    raise EOFError(path)
                view = view[count:]
        return index

    done = 0
    pool = ThreadPoolExecutor(max(1, min(READ_THREADS, os.cpu_count() or 1)))
    try:
        for future in as_completed([pool.submit(read, chunk) for chunk in chunks]):
            index = future.result()
            left[index] -= 1
            if not left[index]:
                done += 1
                report(done, len(layers))
    finally:
        pool.shutdown(cancel_futures=True)  # after a failed read, the chunks not started yet are not read


def _remove_from(directory: Path, names: tuple[str, ...]) -> None:
    """Delete these files of a store entry, and the entry's directory once nothing is left in it."""
    for name in names:
        _remove(directory / name)
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()


def _remove(path: Path) -> None:
    """Delete ``path`` whatever it is (a file, or a directory left where a file belongs); nothing if absent."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _map_file(path: Path | None, size: int, create: bool) -> Tensor:
    """Map ``size`` bytes of ``path`` (a new temporary file when None) as a shared uint8 tensor."""
    temporary = path is None
    if temporary:
        handle, name = tempfile.mkstemp(prefix="moe-tui-experts-", suffix=".bin")
        os.close(handle)
        path = Path(name)
    if create:
        with open(path, "wb") as handle:
            handle.truncate(size)
    mapped = torch.from_file(str(path), shared=create, size=size, dtype=torch.uint8)
    if temporary:
        path.unlink()
    return mapped
