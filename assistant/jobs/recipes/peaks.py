"""Known GPUs' dense peak FLOP/s, looked up by device name, for MFU.

Dense (no 2:4 sparsity) tensor-core peaks from the vendor's data sheets: bf16/fp16 with
fp32 accumulation (what torch's autocast matmuls use; a GeForce card's fp16-accumulate
figure is twice that and never reached here), and tf32 for float32 with TF32 matmuls on.
A GPU missing from the table gets no MFU rather than a guessed one; adding a row is all a
new GPU needs. Names are matched as whole words, more specific rows first, so an A10G is
not taken for an A10 nor an L40S for an L40.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Peak:
    """One GPU model's dense peaks, FLOP/s."""

    name: str
    pattern: re.Pattern[str]
    half: float  # bf16 / fp16, fp32 accumulate
    tf32: float


def _peak(name: str, pattern: str, half_tflops: float, tf32_tflops: float) -> Peak:
    return Peak(name, re.compile(pattern), half_tflops * 1e12, tf32_tflops * 1e12)


PEAKS = (
    _peak("H100 PCIe", r"\bH100\b.*\bPCIe\b", 756, 378),
    _peak("H100 NVL", r"\bH100 NVL\b", 835, 418),
    _peak("H100 SXM", r"\bH100\b", 989, 494),
    _peak("GH200", r"\bGH200\b", 989, 494),
    _peak("H200 NVL", r"\bH200 NVL\b", 835, 418),
    _peak("H200", r"\bH200\b", 989, 494),
    _peak("H800", r"\bH800\b", 989, 494),
    _peak("H20", r"\bH20\b", 148, 74),
    _peak("B200", r"\bB200\b", 2250, 1125),
    _peak("A100", r"\bA100\b", 312, 156),
    _peak("A800", r"\bA800\b", 312, 156),
    _peak("L40S", r"\bL40S\b", 362, 183),
    _peak("L40", r"\bL40\b", 181, 90.5),
    _peak("L4", r"\bL4\b", 121, 60),
    _peak("A10", r"\bA10\b", 125, 62.5),
    _peak("RTX 4090", r"\bRTX 4090\b(?! D\b)", 165, 82.6),
    _peak("RTX 3090", r"\bRTX 3090\b(?! Ti\b)", 71, 35.6),
)


def find_peak(device_name: str) -> Peak | None:
    """The table's row for a device name as CUDA reports it, or None for an unknown GPU."""
    return next((p for p in PEAKS if p.pattern.search(device_name)), None)


def peak_flops(device_name: str, float32: bool) -> float | None:
    """The dense peak MFU is measured against: tf32 for float32 runs, else bf16/fp16."""
    peak = find_peak(device_name)
    if peak is None:
        return None
    return peak.tf32 if float32 else peak.half
