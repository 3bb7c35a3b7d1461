"""What the machine has and uses: NVIDIA GPUs through NVML, host RAM and this process through psutil.

Nothing here imports Textual or torch. NVML (``import pynvml``, from nvidia-ml-py) is initialised lazily on the
first sample; every query degrades to ``None`` (shown as "N/A") instead of raising, and a machine without an
NVIDIA driver gets a plain :class:`SystemSample` with no GPUs and a one-line ``gpu_status`` saying why.

"This process's VRAM" comes from torch's own CUDA counters (and only when torch is already imported and CUDA
initialised: a probe never pulls torch in), because NVML inside a container reports host process ids.
GPUs are matched between NVML and torch by UUID, so ``CUDA_VISIBLE_DEVICES`` re-ordering does not mix them up.

Sampling is cheap but not free (a PCIe throughput query blocks for ~20 ms), so the dashboard samples from a
thread worker about once a second, never on the UI thread. Tests pass their own object with a ``sample()``
method, or a :class:`SystemProbe` whose NVML loader fails.
"""

from __future__ import annotations

import importlib
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any, Protocol

import psutil


@dataclass(frozen=True)
class GpuSample:
    """One NVIDIA GPU as NVML sees it; ``None`` is a value NVML could not give (shown as "N/A")."""

    index: int
    uuid: str
    name: str
    memory_used: int | None = None
    memory_total: int | None = None
    utilization: int | None = None
    pcie_rx: int | None = None
    pcie_tx: int | None = None
    process_allocated: int | None = None
    process_reserved: int | None = None


@dataclass(frozen=True)
class HostSample:
    """Host memory and this process's resident set, in bytes."""

    ram_total: int
    ram_used: int
    ram_available: int
    rss: int


@dataclass(frozen=True)
class SystemSample:
    """One reading of the machine: GPUs (possibly none, with the reason in ``gpu_status``) and host memory."""

    gpus: tuple[GpuSample, ...]
    gpu_status: str
    host: HostSample
    time: float

    @property
    def has_gpu(self) -> bool:
        """Whether NVML reported at least one GPU."""
        return bool(self.gpus)


class Probe(Protocol):
    """Anything that can take a :class:`SystemSample` (the real :class:`SystemProbe` or a test's fake)."""

    def sample(self) -> SystemSample:
        """Read the machine now."""
        ...

    def close(self) -> None:
        """Release what the probe holds (NVML)."""
        ...


def _import_pynvml() -> ModuleType:
    return importlib.import_module("pynvml")


class Nvml:
    """A lazily initialised NVML handle whose every query returns ``None`` on failure instead of raising."""

    def __init__(self, loader: Callable[[], ModuleType] = _import_pynvml):
        self._loader = loader
        self._lock = threading.Lock()
        self._module: ModuleType | None = None
        self._status: str | None = None

    def _ensure(self) -> ModuleType | None:
        with self._lock:
            if self._module is not None or self._status is not None:
                return self._module
            try:
                module = self._loader()
            except ImportError:
                self._status = "no GPU: nvidia-ml-py is not installed"
                return None
            try:
                module.nvmlInit()
            except Exception as error:  # NVMLError subclasses, OSError from a broken driver install
                self._status = f"no NVIDIA GPU: {_nvml_reason(error)}"
                return None
            self._module = module
            return module

    @property
    def status(self) -> str:
        """Empty when NVML works; otherwise why there is no GPU information (initialises NVML if needed)."""
        self._ensure()
        return self._status or ""

    def gpus(self) -> tuple[GpuSample, ...]:
        """Every GPU NVML can see, each field ``None`` where its query failed."""
        nvml = self._ensure()
        if nvml is None:
            return ()
        count = _query(nvml.nvmlDeviceGetCount)
        if not count:
            return ()
        samples = []
        for index in range(count):
            handle = _query(nvml.nvmlDeviceGetHandleByIndex, index)
            if handle is None:
                continue
            memory = _query(nvml.nvmlDeviceGetMemoryInfo, handle)
            rates = _query(nvml.nvmlDeviceGetUtilizationRates, handle)
            rx = _query(nvml.nvmlDeviceGetPcieThroughput, handle, nvml.NVML_PCIE_UTIL_RX_BYTES)
            tx = _query(nvml.nvmlDeviceGetPcieThroughput, handle, nvml.NVML_PCIE_UTIL_TX_BYTES)
            samples.append(
                GpuSample(
                    index=index,
                    uuid=_text(_query(nvml.nvmlDeviceGetUUID, handle)) or f"GPU-{index}",
                    name=_text(_query(nvml.nvmlDeviceGetName, handle)) or "N/A",
                    memory_used=getattr(memory, "used", None),
                    memory_total=getattr(memory, "total", None),
                    utilization=getattr(rates, "gpu", None),
                    pcie_rx=None if rx is None else int(rx) * 1024,
                    pcie_tx=None if tx is None else int(tx) * 1024,
                )
            )
        return tuple(samples)

    def close(self) -> None:
        """Shut NVML down if it was started; a later query starts it again."""
        with self._lock:
            if self._module is not None:
                _query(self._module.nvmlShutdown)
            self._module = None
            self._status = None


def _query(function: Callable[..., Any], *args: Any) -> Any:
    """Call an NVML function; any failure (unsupported query, lost GPU) becomes ``None``."""
    try:
        return function(*args)
    except Exception:
        return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _nvml_reason(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    lowered = text.lower()
    if "library not found" in lowered:
        return "the NVIDIA driver library (libnvidia-ml) is not installed"
    if "driver not loaded" in lowered:
        return "the NVIDIA driver is not loaded"
    return f"NVML failed to start ({text})"


def torch_process_memory() -> dict[str, tuple[int, int]]:
    """This process's CUDA memory per GPU UUID (or ``cuda:N`` when torch gives no UUID): (allocated, reserved).

    Empty unless torch is already imported and has initialised CUDA: sampling must never import torch or
    create a CUDA context by itself.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    try:
        if not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return {}
        usage = {}
        for device in range(torch.cuda.device_count()):
            uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
            key = _torch_uuid(uuid) or f"cuda:{device}"
            usage[key] = (int(torch.cuda.memory_allocated(device)), int(torch.cuda.memory_reserved(device)))
        return usage
    except Exception:
        return {}


def _torch_uuid(uuid: Any) -> str | None:
    """torch prints device UUIDs without NVML's ``GPU-`` prefix; add it so the two match."""
    if uuid is None:
        return None
    text = str(uuid)
    return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"


def host_memory(process: psutil.Process | None = None) -> HostSample:
    """Host RAM and the resident set of ``process`` (this one by default)."""
    memory = psutil.virtual_memory()
    try:
        rss = (process or psutil.Process()).memory_info().rss
    except psutil.Error:
        rss = 0
    return HostSample(
        ram_total=int(memory.total),
        ram_used=int(memory.total - memory.available),
        ram_available=int(memory.available),
        rss=int(rss),
    )


class SystemProbe:
    """The real probe: NVML for GPUs, psutil for the host, torch's counters for this process's VRAM."""

    def __init__(
        self,
        nvml: Nvml | None = None,
        clock: Callable[[], float] = time.time,
        process_memory: Callable[[], dict[str, tuple[int, int]]] = torch_process_memory,
    ):
        self._nvml = nvml or Nvml()
        self._clock = clock
        self._process_memory = process_memory
        self._process = psutil.Process()

    def sample(self) -> SystemSample:
        """Read GPUs and host memory now; never raises for a missing or failing GPU."""
        gpus = self._nvml.gpus()
        usage = self._process_memory()
        if usage:
            gpus = tuple(_with_process_usage(gpu, usage) for gpu in gpus)
        return SystemSample(
            gpus=gpus, gpu_status=self._nvml.status, host=host_memory(self._process), time=self._clock()
        )

    def close(self) -> None:
        """Shut NVML down."""
        self._nvml.close()


def _with_process_usage(gpu: GpuSample, usage: dict[str, tuple[int, int]]) -> GpuSample:
    found = usage.get(gpu.uuid) or usage.get(f"cuda:{gpu.index}")
    if found is None:
        return gpu
    allocated, reserved = found
    return replace(gpu, process_allocated=allocated, process_reserved=reserved)
