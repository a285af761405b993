"""scripts/install.sh says what it is doing before each long step (issue 15)."""
from __future__ import annotations

import subprocess

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "install.sh"


def test_install_script_parses() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_every_install_step_is_announced_in_words() -> None:
    lines = [line.strip() for line in SCRIPT.read_text().splitlines()]
    work = [i for i, line in enumerate(lines) if line.startswith(('"${PIP[@]}"', '"$VENV/bin/python"', '"$PY"'))]
    assert len(work) >= 4
    for i in work:
        before = [line for line in lines[max(0, i - 4):i] if line and not line.startswith("#")]
        assert any(line.startswith(("step ", "echo ")) for line in before), lines[i]
    steps = [line for line in lines if line.startswith("step ")]
    assert all(len(line.split('"')[1].split()) >= 5 for line in steps)  # a sentence, not a tag
