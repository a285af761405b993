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

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
            "onnxruntime": onnxruntime.__version__}
