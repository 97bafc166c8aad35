"""The peak table MFU is measured against: device names as CUDA reports them."""

from __future__ import annotations

import pytest

from assistant.jobs.recipes.peaks import find_peak, peak_flops


@pytest.mark.parametrize(
    ("device_name", "row"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA GH200 480GB", "GH200"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L40", "L40"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA A10", "A10"),
        ("NVIDIA GeForce RTX 4090", "RTX 4090"),
    ],
)
def test_a_known_gpu_finds_its_own_row(device_name: str, row: str) -> None:
    peak = find_peak(device_name)
    assert peak is not None and peak.name == row


@pytest.mark.parametrize(
    "device_name",
    # near names of other GPUs: a prefix match would give them a wrong peak
    ["NVIDIA A10G", "NVIDIA GeForce RTX 4090 D", "NVIDIA GeForce RTX 3090 Ti", "Tesla T4", ""],
)
def test_an_unknown_gpu_gets_no_peak(device_name: str) -> None:
    assert find_peak(device_name) is None
    assert peak_flops(device_name, float32=False) is None


def test_float32_is_measured_against_tf32() -> None:
    assert peak_flops("NVIDIA H200", float32=False) == 989e12
    assert peak_flops("NVIDIA H200", float32=True) == 494e12
