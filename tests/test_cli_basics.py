"""The command line's error contract: one line, non-zero exit, no traceback."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from zapopt.errors import ZapoptError


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


def _main_with_info_raising(monkeypatch, error: Exception) -> None:
    import cli
    import zapopt.graph.info

    def broken_info(*_args, **_kwargs):
        raise error

    monkeypatch.setattr(zapopt.graph.info, "info", broken_info)
    monkeypatch.delenv("ZAPOPT_DEBUG", raising=False)
    cli.main(["info", "model.onnx"])


@pytest.mark.parametrize("error", [ZapoptError("the model is broken"), FileNotFoundError(2, "No such file", "m")])
def test_user_errors_are_one_line(monkeypatch, capsys, error: Exception) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _main_with_info_raising(monkeypatch, error)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("error", [ValueError("a bug"), TypeError("a bug"), KeyError("a bug")])
def test_bugs_are_not_dressed_up_as_user_errors(monkeypatch, error: Exception) -> None:
    with pytest.raises(type(error), match="a bug"):
        _main_with_info_raising(monkeypatch, error)
