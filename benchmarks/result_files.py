"""Where benchmark results live, and what every result file records about how it was made.

A number in the docs is only as good as what says how, when and where it was measured, so
every benchmark writes its JSON through ``write_result``: it adds the command, the git
commit (and whether the tree had uncommitted changes) and the machine (CPU model, cores),
and writes atomically (``zapopt.files``). Each benchmark has its own folder,
``benchmarks/results/<benchmark>/``; ``benchmarks/README.md`` says which file backs which
claim.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from zapopt.files import write_text_atomically  # noqa: E402
from zapopt.machine import cpu_model  # noqa: E402

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


def results_dir(benchmark: str) -> Path:
    """``benchmarks/results/<benchmark>/``: one folder per benchmark script."""
    return RESULTS_DIR / benchmark


def command_line(argv: list[str] | None = None) -> str:
    """The command that ran this benchmark, as a user would type it from the repo root."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(REPO_ROOT)
    except ValueError:
        pass
    args = sys.argv[1:] if argv is None else argv
    return f"python {script.as_posix()} {shlex.join(args)}".rstrip()


def git_state(root: Path = REPO_ROOT) -> dict[str, Any]:
    """The commit the code was at and whether tracked files differed from it.

    ``commit`` is None (with ``why``) outside a git checkout, never a guess.
    """
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        changes = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                 capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        return {"commit": None, "dirty": None, "why": f"git unavailable: {exc}"}
    return {"commit": commit, "dirty": bool(changes.strip())}


def machine() -> dict[str, Any]:
    """CPU model, core count, OS and Python; torch and the GPU if this process uses torch."""
    info: dict[str, Any] = {"cpu_model": cpu_model(), "cores": os.cpu_count(),
                            "platform": platform.platform(), "python": platform.python_version()}
    if hasattr(os, "sched_getaffinity"):
        info["cores_usable"] = len(os.sched_getaffinity(0))
    if hasattr(os, "getloadavg"):  # a shared machine's timings mean little without how busy it was
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    torch = sys.modules.get("torch")  # never imported here: the ONNX benchmarks run without it
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_initialized():
            info["gpu"] = torch.cuda.get_device_name()
    return info


def provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """Command, git commit and machine of this run."""
    return {"command": command_line(argv), "git": git_state(), "machine": machine()}


def write_result(path: str | Path, payload: dict[str, Any], argv: list[str] | None = None) -> Path:
    """Write ``payload`` as JSON to ``path`` atomically, with this run's ``provenance``.

    ``payload`` keeps its own ``command`` if it has one (a resumed sweep lists several);
    otherwise the current command is added at the top, as every result file has one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = provenance(argv)
    body = {"command": record["command"], **payload, "provenance": record}
    write_text_atomically(path, json.dumps(body, indent=1) + "\n")
    return path
