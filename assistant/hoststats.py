"""Host facts for /status: process memory and GPUs through NVML."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psutil

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    util_percent: int
    mem_used_mb: int
    mem_total_mb: int


class HostStats:
    """NVML is initialised once; without a driver, `gpus()` is empty and `gpu_note` says why."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._nvml: Any = None
        self.gpu_note = "no GPU"
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception as exc:  # no library, no driver, no device
            self.gpu_note = "no GPU (NVML unavailable)"
            log.debug("NVML not available: %s", exc)

    def gpu_count(self) -> int:
        if self._nvml is None:
            return 0
        try:
            return int(self._nvml.nvmlDeviceGetCount())
        except Exception:
            return 0

    def rss_mb(self) -> float:
        return float(self._process.memory_info().rss) / (1024 * 1024)

    def gpus(self) -> list[GpuInfo]:
        nvml = self._nvml
        if nvml is None:
            return []
        found = []
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = nvml.nvmlDeviceGetName(handle)
                util = nvml.nvmlDeviceGetUtilizationRates(handle)
                mem = nvml.nvmlDeviceGetMemoryInfo(handle)
                found.append(
                    GpuInfo(
                        index=index,
                        name=name.decode() if isinstance(name, bytes) else str(name),
                        util_percent=int(util.gpu),
                        mem_used_mb=int(mem.used) // (1024 * 1024),
                        mem_total_mb=int(mem.total) // (1024 * 1024),
                    )
                )
        except Exception as exc:
            self.gpu_note = f"GPU query failed: {exc}"
            log.debug("NVML query failed: %s", exc)
        return found

    def status_lines(self, gpus: list[GpuInfo]) -> list[str]:
        """The GPU lines /status shows for what `gpus()` returned: one a GPU, or why none.

        scripts/gpu-check prints the same lines, so both show NVML's view alike.
        """
        if not gpus:
            return [f"GPUs: {self.gpu_note}"]
        return [
            f"GPU {g.index}: {g.name} · {g.util_percent}% util"
            f" · {g.mem_used_mb:,}/{g.mem_total_mb:,} MB"
            for g in gpus
        ]

    def aclose(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception as exc:
                log.debug("NVML shutdown: %s", exc)
