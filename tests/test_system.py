"""The system probe: NVML queries degrade to None, no driver gives a plain no-GPU state, host memory is read."""

from __future__ import annotations

import sys
from types import ModuleType, SimpleNamespace

import pytest

from moe_tui import system
from moe_tui.system import GpuSample, Nvml, SystemProbe


class FakeNvmlError(Exception):
    """Stands in for pynvml.NVMLError."""


def fake_pynvml(*, init_error: Exception | None = None, broken: tuple[str, ...] = ()) -> ModuleType:
    """A pynvml look-alike with two GPUs; the functions named in ``broken`` raise like unsupported queries."""
    module = ModuleType("pynvml")
    module.NVML_PCIE_UTIL_TX_BYTES = 0
    module.NVML_PCIE_UTIL_RX_BYTES = 1
    module.calls = {"init": 0, "shutdown": 0}

    def init() -> None:
        module.calls["init"] += 1
        if init_error is not None:
            raise init_error

    def shutdown() -> None:
        module.calls["shutdown"] += 1

    functions = {
        "nvmlInit": init,
        "nvmlShutdown": shutdown,
        "nvmlDeviceGetCount": lambda: 2,
        "nvmlDeviceGetHandleByIndex": lambda index: f"handle{index}",
        "nvmlDeviceGetName": lambda handle: b"Fake GPU" if handle == "handle0" else "Other GPU",
        "nvmlDeviceGetUUID": lambda handle: f"GPU-uuid-{handle[-1]}",
        "nvmlDeviceGetMemoryInfo": lambda handle: SimpleNamespace(used=3 << 30, total=16 << 30),
        "nvmlDeviceGetUtilizationRates": lambda handle: SimpleNamespace(gpu=42, memory=10),
        "nvmlDeviceGetPcieThroughput": lambda handle, counter: 1000 + counter,
    }
    for name, function in functions.items():
        if name in broken:

            def failing(*args, _name=name):
                raise FakeNvmlError(f"{_name}: Not Supported")

            function = failing
        setattr(module, name, function)
    return module


def test_gpus_are_read_and_bytes_names_decoded() -> None:
    module = fake_pynvml()
    nvml = Nvml(loader=lambda: module)
    gpus = nvml.gpus()
    assert [gpu.name for gpu in gpus] == ["Fake GPU", "Other GPU"]
    assert gpus[0].uuid == "GPU-uuid-0"
    assert gpus[0].memory_used == 3 << 30 and gpus[0].memory_total == 16 << 30
    assert gpus[0].utilization == 42
    assert gpus[0].pcie_tx == 1000 * 1024 and gpus[0].pcie_rx == 1001 * 1024
    assert nvml.status == ""
    nvml.gpus()
    assert module.calls["init"] == 1, "NVML is initialised once, lazily"


def test_nvml_is_not_started_before_the_first_query() -> None:
    module = fake_pynvml()
    nvml = Nvml(loader=lambda: module)
    assert module.calls["init"] == 0
    nvml.close()
    assert module.calls["shutdown"] == 0


def test_each_failing_query_degrades_to_none() -> None:
    broken = ("nvmlDeviceGetMemoryInfo", "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetPcieThroughput")
    gpus = Nvml(loader=lambda: fake_pynvml(broken=broken)).gpus()
    assert len(gpus) == 2
    assert gpus[1] == GpuSample(index=1, uuid="GPU-uuid-1", name="Other GPU")


def test_missing_driver_gives_a_plain_no_gpu_state() -> None:
    error = FakeNvmlError("NVML Shared Library Not Found")
    probe = SystemProbe(nvml=Nvml(loader=lambda: fake_pynvml(init_error=error)), clock=lambda: 5.0)
    sample = probe.sample()
    assert sample.gpus == () and not sample.has_gpu
    assert sample.gpu_status.startswith("no NVIDIA GPU")
    assert "libnvidia-ml" in sample.gpu_status
    assert sample.time == 5.0
    assert sample.host.ram_total > 0 and sample.host.rss > 0
    probe.close()


def test_missing_nvml_package_gives_a_no_gpu_state() -> None:
    def missing():
        raise ImportError("No module named 'pynvml'")

    nvml = Nvml(loader=missing)
    assert nvml.gpus() == ()
    assert "nvidia-ml-py" in nvml.status


def test_process_vram_is_matched_by_uuid_not_index() -> None:
    usage = {"GPU-uuid-1": (100, 200)}
    probe = SystemProbe(nvml=Nvml(loader=fake_pynvml), process_memory=lambda: usage)
    gpus = probe.sample().gpus
    assert gpus[0].process_allocated is None
    assert (gpus[1].process_allocated, gpus[1].process_reserved) == (100, 200)


def test_torch_counters_are_never_read_when_torch_is_not_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert system.torch_process_memory() == {}
    assert "torch" not in sys.modules, "sampling must not import torch"


def test_torch_counters_use_prefixed_uuids(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = SimpleNamespace(
        is_available=lambda: True,
        is_initialized=lambda: True,
        device_count=lambda: 1,
        get_device_properties=lambda device: SimpleNamespace(uuid="abcd"),
        memory_allocated=lambda device: 7,
        memory_reserved=lambda device: 9,
    )
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))
    assert system.torch_process_memory() == {"GPU-abcd": (7, 9)}


def test_host_memory_is_consistent() -> None:
    host = system.host_memory()
    assert 0 < host.ram_used <= host.ram_total
    assert 0 < host.ram_available <= host.ram_total
    assert 0 < host.rss < host.ram_total
