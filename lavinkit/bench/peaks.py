"""Accelerator peak FLOP/s and model FLOPs utilisation (MFU), shared by the benchmarks."""

from __future__ import annotations

# bf16 dense tensor-core peaks (no sparsity), by device-name substring, most specific first.
PEAK_BF16_FLOPS = (
    ("H100 NVL", 835e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12),
)


def peak_flops(device_name: str) -> float | None:
    """bf16 dense peak FLOP/s from a CUDA device name (``None`` when unknown)."""
    for key, value in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def mfu(flops_per_step: float, step_seconds: float, peak: float, n_devices: int = 1) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the peak of all devices."""
    return flops_per_step / (step_seconds * peak * n_devices)
