"""ZeroSkipConv from this checkout's library against another build of it, and both against stock.

    python benchmarks/native_ab.py --baseline /tmp/base/libzapopt_ops.so --zeros 0 0.5 0.9 1

Kernel changes move single timings by +-15 % on a shared machine, more than most changes
gain, so the two builds run in one process, alternated with stock onnxruntime (Conv+Relu,
ORT_ENABLE_ALL) on the same input, one intra-op thread, and the figure is the minimum process
CPU time per run (the least disturbed one); each row records the load average. Build the
baseline from another commit, e.g.
``git archive COMMIT zapopt/native | tar -x -C /tmp/base`` then
``cmake -S /tmp/base/zapopt/native -B /tmp/base -DZAPOPT_ORT_INCLUDE_DIR=...`` and
``cmake --build /tmp/base``. The 100 %-zero rows are the kernel's fixed cost: no
multiply-adds at all. Layers: ``native_layers.LAYERS``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from native_layers import (  # noqa: E402
    LAYERS, baseline_session, layer_models, sparse_input, stock_session, summary, time_alternated,
)
from zap_common import save_results  # noqa: E402

from zapopt import native  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="another build's libzapopt_ops.so")
    parser.add_argument("--zeros", type=float, nargs="+", default=[0.0, 0.5, 0.9, 1.0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--layers", type=int, nargs="+", default=None, help="indices into LAYERS (default: all)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not args.baseline.is_file():
        parser.error(f"--baseline {args.baseline} is not a file")

    rows = []
    print("| layer | input zeros | stock ms | baseline ms | this checkout ms | baseline/this | stock/this |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for index in args.layers if args.layers is not None else range(len(LAYERS)):
        c_in, c_out, k, size = LAYERS[index]
        layer = layer_models(c_in, c_out, k, size, np.random.default_rng(index))
        sessions = {"stock": stock_session(layer["stock"], 1),
                    "baseline": baseline_session(layer["ZeroSkipConv"], args.baseline),
                    "this": native.session(layer["ZeroSkipConv"], threads=1)}
        name = f"{c_in}->{c_out} {k}x{k} {size}x{size}"
        for zero in args.zeros:
            x = sparse_input(np.random.default_rng(7), c_in, size, zero)
            times = {n: summary(t) for n, t in time_alternated(sessions, {"X": x}, args.repeats).items()}
            ms = {n: s["cpu_min_ms"] for n, s in times.items()}
            rows.append({"layer": name, "input_zero_share": zero, "threads": 1, "cpu_min_ms": ms, "timings": times,
                         "baseline_over_this": ms["baseline"] / ms["this"], "stock_over_this": ms["stock"] / ms["this"],
                         "baseline_library": str(args.baseline), "kernel_path": native.selected_path(),
                         "load_average_1_5_15_min": os.getloadavg()})
            print(f"| {name} | {zero:.0%} | {ms['stock']:.2f} | {ms['baseline']:.2f} | {ms['this']:.2f} "
                  f"| {ms['baseline'] / ms['this']:.2f} | {ms['stock'] / ms['this']:.2f} |", flush=True)
    save_results(rows, args.json)  # adds the command, git commit and machine (result_files)


if __name__ == "__main__":
    main()
