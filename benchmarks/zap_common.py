"""How every ZAP benchmark ends: print the exact command, and save the rows with it.

A result file that does not say how it was made cannot be reproduced, so the JSON is
``{"command": ..., "rows": [...], "provenance": ...}``, written by ``result_files``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from result_files import command_line, write_result


def save_results(rows: list[dict[str, Any]], json_path: Path | None) -> None:
    """Print the command under the table and write ``json_path`` (if given) with it."""
    print("\ncommand: " + command_line())
    if json_path is not None:
        write_result(json_path, {"rows": rows})
