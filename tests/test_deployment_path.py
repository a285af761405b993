"""Running, evaluating and retuning a model must not import torch (deployment needs no torch)."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_runtime_modules_do_not_import_torch() -> None:
    code = ("import sys; import zapopt.runtime, zapopt.evaluate, zapopt.sweep, zapopt.retune, zapopt.graph, "
            "zapopt.ops.reference; print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
