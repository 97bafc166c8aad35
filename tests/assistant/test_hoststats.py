"""The GPU lines /status and scripts/gpu-check both show: NVML's view, one way."""

from __future__ import annotations

from assistant.hoststats import GpuInfo, HostStats


def test_each_gpu_is_one_line_with_its_use() -> None:
    host = HostStats()
    gpus = [
        GpuInfo(
            index=0, name="NVIDIA H200", util_percent=97, mem_used_mb=81234, mem_total_mb=143771
        ),
        GpuInfo(index=1, name="NVIDIA H200", util_percent=0, mem_used_mb=1, mem_total_mb=143771),
    ]
    assert host.status_lines(gpus) == [
        "GPU 0: NVIDIA H200 · 97% util · 81,234/143,771 MB",
        "GPU 1: NVIDIA H200 · 0% util · 1/143,771 MB",
    ]
    host.aclose()


def test_no_gpu_is_one_line_saying_why() -> None:
    host = HostStats()
    gpus = host.gpus()
    if gpus:  # a GPU host: its own GPUs, one line each
        assert [line.split(":")[0] for line in host.status_lines(gpus)] == [
            f"GPU {g.index}" for g in gpus
        ]
    else:
        assert host.status_lines(gpus) == [f"GPUs: {host.gpu_note}"]
        assert host.gpu_note.startswith("no GPU") or "failed" in host.gpu_note
    host.aclose()
