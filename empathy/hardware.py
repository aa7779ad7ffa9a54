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
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover
        info["torch"] = None
    return info


def describe_hardware(info: Mapping[str, Any]) -> str:
    text = f"{info.get('cpu')}, {info.get('cores')} cores, torch {info.get('torch')}"
    return text + (f", GPU {info['gpu']}" if info.get("gpu") else "")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a cluster allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
