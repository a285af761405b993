"""The machine a timing was taken on: CPU model, cores, platform, onnxruntime version.

Latency numbers mean nothing without the machine they came from; ``zapopt bench`` records
this next to its results, and ``benchmarks/result_files.py`` reads the CPU model from here.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> dict[str, Any]:
    import onnxruntime

    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
            "onnxruntime": onnxruntime.__version__}
    if hasattr(os, "getloadavg"):  # 1, 5 and 15 minute load: how busy the machine was around the timing
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    return info
