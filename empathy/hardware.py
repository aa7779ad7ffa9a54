"""This machine: what it is (written with every run's metrics) and what it can do fast."""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def hardware() -> dict[str, Any]:
    """This machine: CPU model, cores, torch version and GPU (if any)."""
    cpu = platform.processor() or platform.machine()
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "native_bf16": cpu_has_native_bf16()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover
        info["torch"] = None
    return info


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16): there bf16 autocast
    runs faster than fp32; on CPUs with AVX2 only it runs several times slower
    (``scripts/bench_precision.py`` measures both)."""
    flags = next((line.split(":", 1)[1].split() for line in _cpuinfo().splitlines() if line.startswith("flags")), [])
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def bf16_is_fast(device_type: str) -> bool:
    """Whether bf16 autocast pays on this device type: a GPU that supports bf16, or a CPU with
    native bf16 (:func:`cpu_has_native_bf16`)."""
    if device_type == "cuda":
        import torch

        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device_type == "cpu" and cpu_has_native_bf16()


def describe_hardware(info: Mapping[str, Any]) -> str:
    text = f"{info.get('cpu')}, {info.get('cores')} cores, torch {info.get('torch')}"
    return text + (f", GPU {info['gpu']}" if info.get("gpu") else "")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a cluster allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
