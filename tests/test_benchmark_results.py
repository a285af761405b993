"""Benchmark result files say how, when and where they were measured
(benchmarks/result_files.py), and live in the folder of the script that writes them."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

BENCH = REPO_ROOT / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from result_files import RESULTS_DIR, git_state, machine, results_dir, write_result  # noqa: E402


def test_write_result_records_command_commit_and_machine(tmp_path: Path) -> None:
    path = write_result(tmp_path / "sub" / "out.json", {"rows": [1, 2]}, argv=["--flag", "a b"])
    payload = json.loads(path.read_text())
    assert payload["rows"] == [1, 2]
    assert payload["command"].endswith("--flag 'a b'")
    provenance = payload["provenance"]
    assert provenance["command"] == payload["command"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    if head.returncode == 0:
        assert provenance["git"]["commit"] == head.stdout.strip()
        assert isinstance(provenance["git"]["dirty"], bool)
    assert provenance["machine"]["cores"] == os.cpu_count()
    assert provenance["machine"]["cpu_model"]
    load = provenance["machine"].get("load_average")
    assert load is None if not hasattr(os, "getloadavg") else len(load) == 3 and min(load) >= 0
    assert not [p.name for p in path.parent.iterdir() if p.name != "out.json"], "no temp file left behind"


def test_a_payload_keeps_its_own_command(tmp_path: Path) -> None:
    """A resumed sweep stores the command that started it; the helper must not replace it."""
    body = {"command": "python benchmarks/x.py --first", "commands": ["a", "b"]}
    payload = json.loads(write_result(tmp_path / "r.json", body, argv=["--second"]).read_text())
    assert payload["command"] == "python benchmarks/x.py --first"
    assert payload["provenance"]["command"].endswith("--second")


def test_outside_a_checkout_the_commit_is_unknown_not_guessed(tmp_path: Path) -> None:
    state = git_state(tmp_path)
    assert state["commit"] is None and state["dirty"] is None and state["why"]


def test_machine_names_torch_only_when_the_script_uses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert "torch" not in machine()


def test_every_stored_result_sits_in_its_benchmarks_folder_and_says_where_it_came_from() -> None:
    scripts = {p.stem for p in BENCH.glob("*.py")}
    files = sorted(RESULTS_DIR.rglob("*.json"))
    assert files, "benchmarks/results/ holds the evidence the docs cite"
    for path in files:
        relative = path.relative_to(RESULTS_DIR)
        assert len(relative.parts) == 2 and relative.parts[0] in scripts, f"{relative}: not in results/<script>/"
        assert results_dir(relative.parts[0]) == path.parent
        payload = json.loads(path.read_text())
        provenance = payload["provenance"]
        assert (payload.get("command") or payload.get("commands") or payload.get("args")
                or provenance.get("command_note")), f"{relative}: says nothing of how it was made"
        git = provenance["git"]
        if git["commit"] is None:
            assert git["why"], f"{relative}: an unknown commit must say why"
        else:
            assert re.fullmatch(r"[0-9a-f]{40}", git["commit"]), relative
        assert "machine" in provenance, relative
