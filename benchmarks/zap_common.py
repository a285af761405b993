"""How every ZAP benchmark ends: print the exact command, and save the rows with it.

A result file that does not say how it was made cannot be reproduced, so the JSON is
``{"command": ..., "rows": [...]}``, written atomically (``zapopt.files``).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zapopt.files import write_text_atomically  # noqa: E402


def command_line() -> str:
    """The command that ran this benchmark, as a user would type it."""
    return "python " + " ".join(sys.argv)


def save_results(rows: list[dict[str, Any]], json_path: Path | None, extra: dict[str, Any] | None = None) -> None:
    """Print the command under the table and write ``json_path`` (if given) with it (and ``extra``)."""
    print("\ncommand: " + command_line())
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        document = {"command": command_line(), **(extra or {}), "rows": rows}
        write_text_atomically(json_path, json.dumps(document, indent=1))


def provenance() -> dict[str, Any]:
    """The git commit and machine a result came from (CPU model, cores), for result JSONs."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "git_commit": commit + ("+uncommitted" if dirty else ""),
        "machine": {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()},
    }
