"""The expert store's host memory: a pinned store registers page-aligned buffers of exactly its size with CUDA.

Without a GPU the CUDA runtime is replaced by a recorder of the two calls the store makes; the CUDA tests run
the real registration (and ``benchmarks/cuda_check.py`` measures its size and copy speed).
"""

from __future__ import annotations

import gc
import mmap

import pytest
import torch
from engine_checks import copy_is_asynchronous

from moe_tui.offload import store as store_module
from moe_tui.offload.store import ExpertStore


class RecordingRuntime:
    """Stands in for ``torch.cuda.cudart()``: records registrations, refuses after ``fail_after`` of them."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.registered: dict[int, int] = {}
        self.unregistered: list[int] = []
        self.fail_after = fail_after

    def cudaHostRegister(self, pointer: int, size: int, flags: int) -> int:
        if self.fail_after is not None and len(self.registered) >= self.fail_after:
            return 2  # cudaErrorMemoryAllocation
        self.registered[pointer] = size
        return 0

    def cudaHostUnregister(self, pointer: int) -> int:
        self.unregistered.append(pointer)
        return 0


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> RecordingRuntime:
    recorder = RecordingRuntime()
    monkeypatch.setattr(torch.cuda, "cudart", lambda: recorder)
    return recorder


def test_a_pinned_store_registers_each_layer_page_aligned_at_its_exact_size(runtime: RecordingRuntime) -> None:
    nbytes = 3 * 4096 + 123  # not a multiple of a page, nor a power of two
    store = ExpertStore(3, 5, nbytes, kind="pinned")
    starts = [store.row(layer, 0).data_ptr() for layer in range(3)]
    assert runtime.registered == dict.fromkeys(starts, 5 * nbytes)
    assert all(start % mmap.PAGESIZE == 0 for start in starts)
    store.row(2, 4).fill_(7)  # the last byte of the last layer is inside its registered range
    assert store.row(2, 4)[-1].item() == 7 and store.row(2, 4).data_ptr() + nbytes == starts[2] + 5 * nbytes
    store.close()
    assert sorted(runtime.unregistered) == sorted(starts)
    store.close()  # a second close unregisters nothing twice
    assert len(runtime.unregistered) == 3


def test_a_pinned_store_dropped_without_close_is_unregistered(runtime: RecordingRuntime) -> None:
    store = ExpertStore(2, 2, 1000, kind="pinned")
    starts = set(runtime.registered)
    del store
    gc.collect()
    assert set(runtime.unregistered) == starts


def test_a_refused_registration_is_a_memory_error_and_undoes_the_layers_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder = RecordingRuntime(fail_after=1)
    monkeypatch.setattr(torch.cuda, "cudart", lambda: recorder)
    with pytest.raises(MemoryError, match="could not page-lock"):
        ExpertStore(2, 2, 1000, kind="pinned")
    gc.collect()
    assert recorder.unregistered == list(recorder.registered)


def test_a_ram_store_registers_nothing(runtime: RecordingRuntime) -> None:
    store = ExpertStore(2, 2, 1000, kind="ram")
    assert not runtime.registered
    store.close()
    assert not runtime.unregistered


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_pinned_store_is_page_locked_without_pytorchs_pinned_allocator() -> None:
    before = torch.cuda.host_memory_stats().get("reserved_bytes.all.current", 0)
    store = ExpertStore(2, 3, (1 << 20) + 1, kind="pinned")
    assert copy_is_asynchronous(store.row(1, 2))
    # pageable memory, the control that shows the check can fail: large, because the driver stages a small
    # pageable copy and returns early (on an H200, 1 MiB returned in 23 ms of a 100 ms wait, 4 MiB and up after it)
    assert not copy_is_asynchronous(torch.ones(64 << 20, dtype=torch.uint8))
    assert torch.cuda.host_memory_stats().get("reserved_bytes.all.current", 0) == before
    store.close()


def _filled(layers: int, experts: int, nbytes: int, seed: int = 0) -> ExpertStore:
    store = ExpertStore(layers, experts, nbytes)
    generator = torch.Generator().manual_seed(seed)
    for layer in range(layers):
        for expert in range(experts):
            store.row(layer, expert).copy_(torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=generator))
    return store


@pytest.mark.parametrize("kind", ["ram", "pinned"])
def test_a_saved_store_read_back_in_chunks_by_several_threads_is_byte_for_byte_the_same(
    tmp_path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    runtime = RecordingRuntime()  # a pinned store's layers are page-aligned views into larger allocations
    monkeypatch.setattr(torch.cuda, "cudart", lambda: runtime)
    monkeypatch.setattr(store_module, "READ_CHUNK", 1000)  # layers of 3 x 777 bytes: chunks that cross experts
    monkeypatch.setattr(store_module, "READ_THREADS", 4)
    monkeypatch.setattr(store_module.os, "cpu_count", lambda: 4)
    saved = _filled(5, 3, 777)
    description = {"version": 1}
    saved.save(tmp_path / "entry", description)
    reports: list[tuple[int, int]] = []
    store, problem = ExpertStore.open_saved(
        tmp_path / "entry", 5, 3, 777, kind, description, lambda done, total: reports.append((done, total))
    )
    assert problem == "" and store is not None
    assert len(runtime.registered) == (5 if kind == "pinned" else 0)
    for layer in range(5):
        for expert in range(3):
            assert torch.equal(store.row(layer, expert), saved.row(layer, expert))
    assert reports == [(done, 5) for done in range(6)]  # a bar that starts at 0 and counts whole layers


def test_a_store_file_that_ends_early_is_truncated_and_one_that_cannot_be_read_is_unreadable(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "READ_CHUNK", 1000)
    description = {"version": 1}
    _filled(4, 2, 900).save(tmp_path / "entry", description)
    data = tmp_path / "entry" / store_module.STORE_FILE
    # it passed the size check, then lost its end (another process rewrote it): never trusted
    monkeypatch.setattr(ExpertStore, "saved_problem", staticmethod(lambda *args: ""))
    data.write_bytes(data.read_bytes()[:-1])
    assert ExpertStore.open_saved(tmp_path / "entry", 4, 2, 900, "ram", description) == (None, "truncated")
    data.unlink()
    data.mkdir()  # a directory where the data file was: the read fails
    store, problem = ExpertStore.open_saved(tmp_path / "entry", 4, 2, 900, "ram", description)
    assert store is None and problem.startswith("unreadable (")
