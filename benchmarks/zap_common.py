"""How every ZAP benchmark ends: print the exact command, and save the rows with it.

A result file that does not say how it was made cannot be reproduced, so the JSON is
``{"command": ..., "machine": {cpu, cores, git_commit, ...}, "rows": [...]}``, written
atomically (``zapopt.files``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zapopt.files import write_text_atomically  # noqa: E402
from zapopt.machine import machine_info  # noqa: E402


def command_line() -> str:
    """The command that ran this benchmark, as a user would type it."""
    return "python " + " ".join(sys.argv)


def save_results(rows: list[dict[str, Any]], json_path: Path | None) -> None:
    """Print the command under the table and write ``json_path`` (if given) with it."""
    print("\ncommand: " + command_line())
    if json_path is not None:
        record = {"command": command_line(), "machine": machine_info(), "rows": rows}
        write_text_atomically(json_path, json.dumps(record, indent=1))
