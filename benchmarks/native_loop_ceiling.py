"""How fast the native kernel's inner loops can go on this CPU, everything in L1.

    python benchmarks/native_loop_ceiling.py --json benchmarks/results/native_ab/loop_ceiling.json

Compiles native_loop_ceiling.cc against the kernel's own sources (zapopt/native/src) once per
vector path this CPU has (AVX2; AVX-512 where present), runs it on one thread, and reports
vectors of fused multiply-adds per nanosecond and their share of the
register-only FMA peak:

* ``loads_only``: 8 FMAs per step with their weight vectors from memory and nothing else:
  what the load ports allow a list entry's weight row;
* ``list_ocb32/64_aligned`` and ``..._16B_off``: the list loop (one broadcast input and one
  weight row per nonzero) with weight rows on a cache line and 16 bytes past one;
* ``pointwise_planes_196/208``: the pointwise loop (a matrix product on NCHW planes), with
  14x14 planes (784 bytes: every other plane starts mid-vector) and planes padded to 208.

Why it matters: the list loop needs one weight load per multiply-add, so its ceiling is the
load ports', not the FMA pipes'; a dense convolution (onnxruntime's MLAS) reuses each loaded
weight for several positions and runs near the FMA peak. The input zero share at which
skipping breaks even is about (list loop's share of peak) / (MLAS's share of peak).
Needs g++ (or $CXX).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from result_files import write_result  # noqa: E402

from zapopt import native  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SOURCE = Path(__file__).with_suffix(".cc")
KERNEL_SOURCES = ROOT / "zapopt" / "native" / "src"
PATH_FLAGS = {"avx2": ["-mavx2", "-mfma", "-mpopcnt"], "avx512": ["-mavx512f", "-mfma", "-mpopcnt", "-DCEILING_AVX512"]}


def measure(path: str, compiler: str, workdir: Path) -> dict[str, float]:
    """Build the harness for one vector path and run it once."""
    binary = workdir / f"ceiling_{path}"
    subprocess.run([compiler, "-O3", "-std=c++17", *PATH_FLAGS[path], f"-I{KERNEL_SOURCES}", str(SOURCE),
                    str(KERNEL_SOURCES / "microkernel_portable.cc"), "-o", str(binary)], check=True)
    out = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    compiler = os.environ.get("CXX") or shutil.which("g++")
    if compiler is None:
        parser.error("needs a C++ compiler: install g++ or set CXX")
    paths = [p for p in native.kernel_paths() if p in PATH_FLAGS]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            result = measure(path, compiler, Path(tmp))
            peak = result["peak"]
            print(f"{path}: FMA peak {peak:.2f} vectors/ns ({peak * result['lanes'] * 2:.0f} GFLOP/s)")
            for name, value in result.items():
                if name not in ("lanes", "peak"):
                    print(f"  {name:28s} {value:5.2f} vectors/ns  {value / peak:5.1%} of peak")
            rows.append({"path": path, "fma_vectors_per_ns": result,
                         "share_of_peak": {k: v / peak for k, v in result.items() if k not in ("lanes", "peak")}})
    if args.json is not None:
        write_result(args.json, {"rows": rows})


if __name__ == "__main__":
    main()
