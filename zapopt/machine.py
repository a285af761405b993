"""Where a timing was taken: CPU model, cores, onnxruntime version, git commit.

Latency numbers mean nothing without the machine they came from; ``zapopt bench`` and
every benchmark under ``benchmarks/`` record this next to their results.
"""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def git_commit(directory: str | os.PathLike | None = None) -> str | None:
    """The checked-out commit of the repository holding ``directory`` (default: zapopt's)."""
    where = Path(directory) if directory is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def machine_info() -> dict[str, Any]:
    import onnxruntime

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
            "onnxruntime": onnxruntime.__version__, "git_commit": git_commit()}
