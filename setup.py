"""Build hook: compiles the native op library (zapopt/native, CMake) into the package.

setuptools stays the build backend (pyproject.toml); this only adds a build_ext step that
runs CMake, for regular and editable (`pip install -e .`) installs alike. The library is
required: if CMake, a C++ compiler or onnxruntime's headers are missing, the install fails
with a message saying what to install. Set ZAPOPT_ORT_INCLUDE_DIR to use headers you
already have instead of fetching them.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
NATIVE_SOURCE = ROOT / "zapopt" / "native"
LIBRARY_MODULE = "zapopt.native.libzapopt_ops"


class CMakeLibrary(Extension):
    """A shared library built by CMake, placed where Python would put the extension."""

    def __init__(self, name: str, source_dir: Path) -> None:
        super().__init__(name, sources=[])
        self.source_dir = source_dir


class BuildWithCMake(build_ext):
    def get_ext_filename(self, fullname: str) -> str:
        # A plain .so that onnxruntime loads, not a Python module: no ABI suffix. build_ext
        # passes either the dotted name or only its last part.
        if fullname in (LIBRARY_MODULE, LIBRARY_MODULE.rsplit(".", 1)[1]):
            return os.path.join(*fullname.split(".")[:-1], "libzapopt_ops.so")
        return super().get_ext_filename(fullname)

    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeLibrary):
            super().build_extension(ext)
            return
        missing = [tool for tool in ("cmake",) if shutil.which(tool) is None]
        compiler = os.environ.get("CXX") or next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)
        if compiler is None:
            missing.append("a C++17 compiler (g++ or clang++)")
        if missing:
            raise SystemExit(
                "zapopt: building the native op library needs " + " and ".join(missing)
                + " (e.g. `apt-get install cmake g++`); install them and rerun the install."
            )
        output = Path(self.get_ext_fullpath(ext.name)).resolve()
        build_dir = Path(self.build_temp).resolve() / "zapopt_native"
        build_dir.mkdir(parents=True, exist_ok=True)
        configure = [
            "cmake", "-S", str(ext.source_dir), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
            f"-DZAPOPT_OUTPUT_DIR={output.parent}", f"-DCMAKE_CXX_COMPILER={shutil.which(compiler) or compiler}",
        ]
        if os.environ.get("ZAPOPT_ORT_INCLUDE_DIR"):
            configure.append(f"-DZAPOPT_ORT_INCLUDE_DIR={os.environ['ZAPOPT_ORT_INCLUDE_DIR']}")
        try:
            subprocess.run(configure, check=True)
            subprocess.run(["cmake", "--build", str(build_dir), "--parallel", str(os.cpu_count() or 1)], check=True)
        except subprocess.CalledProcessError as exc:
            raise SystemExit(
                f"zapopt: building the native op library failed ({' '.join(exc.cmd[:2])} exited {exc.returncode}); "
                "the CMake output above says why."
            ) from None
        if not output.is_file():
            raise SystemExit(f"zapopt: CMake finished but {output} was not produced")
        print(f"zapopt: built {output}", file=sys.stderr)


setup(
    ext_modules=[CMakeLibrary(LIBRARY_MODULE, NATIVE_SOURCE)],
    cmdclass={"build_ext": BuildWithCMake},
)
