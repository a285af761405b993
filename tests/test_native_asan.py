"""The native kernels under AddressSanitizer + UndefinedBehaviorSanitizer.

Builds the library with -DZAPOPT_SANITIZE=ON into build/native-asan (incremental after the
first run) and runs tests/native_asan_check.py in a subprocess with libasan preloaded: random
layers on every path plus the bad-input cases. Any sanitizer report fails the test.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zapopt import native

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "native-asan"

pytestmark = pytest.mark.skipif(
    not native.library_available(), reason="libzapopt_ops.so is not built (pip install -e . builds it)"
)


def _preload() -> str:
    """libasan first, then libstdc++: Python does not link libstdc++, and ASan must find its
    __cxa_throw when it starts, or the first C++ exception aborts the process."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("no gcc to locate libasan.so")
    paths = []
    for name in ("libasan.so", "libstdc++.so"):
        path = subprocess.run([compiler, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
        if not os.path.isabs(path) or not os.path.exists(path):
            pytest.skip(f"gcc has no {name} (install the compiler's sanitizer runtime)")
        paths.append(os.path.realpath(path))
    return " ".join(paths)


def _build() -> Path:
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    library = BUILD / "lib" / native.LIBRARY_NAME
    configure = ["cmake", "-S", str(ROOT / "zapopt" / "native"), "-B", str(BUILD), "-DZAPOPT_SANITIZE=ON",
                 "-DCMAKE_BUILD_TYPE=Debug", f"-DZAPOPT_OUTPUT_DIR={library.parent}"]
    for command in (configure, ["cmake", "--build", str(BUILD), "--parallel", "2"]):
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, f"{' '.join(command[:3])} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return library


def test_random_layers_and_bad_inputs_run_clean_under_asan_and_ubsan() -> None:
    preload = _preload()
    library = _build()
    env = dict(os.environ)
    env.update(
        LD_PRELOAD=preload,
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:exitcode=99",
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=98",
        PYTHONPATH=str(ROOT),
    )
    env.pop(native.PATH_ENV, None)
    env.pop(native.ACCUMULATION_ENV, None)
    done = subprocess.run([sys.executable, "-m", "tests.native_asan_check", str(library), "80"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    report = done.stdout[-4000:] + done.stderr[-8000:]
    assert "AddressSanitizer" not in done.stderr and "runtime error:" not in done.stderr, report
    assert done.returncode == 0, report
    assert "ran clean" in done.stdout, report
