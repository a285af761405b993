"""The command line's error contract: one line, non-zero exit, no traceback."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO_ROOT


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "cli.py"), *args],
                          capture_output=True, text=True, cwd=REPO_ROOT)


def test_help_lists_the_tool() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert "zapopt" in result.stdout


def test_unknown_command_is_a_clean_error() -> None:
    result = run_cli("no-such-command")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
