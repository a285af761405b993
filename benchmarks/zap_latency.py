"""Latency of an optimized model vs stock onnxruntime, side by side in one run.

    python benchmarks/zap_latency.py models/vgg16/vgg16.onnx zapopt-demo/vgg16.zap.onnx

Both run on the CPU with ORT_ENABLE_ALL (the default). The optimized model runs in its
portable form here (standard ops, computing everything and masking), so this measures the
*overhead* of the portable form; `benchmarks/native_models.py` and `zapopt bench` measure
the native ops. Prints a markdown table and the command; writes JSON if --json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zapopt.data import model_input  # noqa: E402
from zapopt.runtime import make_session, prepare  # noqa: E402
from zapopt.timing import time_alternated  # noqa: E402
from zap_common import save_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("original")
    parser.add_argument("optimized")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: onnxruntime's)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    original = onnx.load(args.original)
    zap = prepare(onnx.load(args.optimized), native=False).model
    spec = model_input(original)
    sessions = {"stock onnxruntime": make_session(original, threads=args.threads),
                "zapopt (portable form)": make_session(zap, threads=args.threads)}
    rng = np.random.default_rng(0)
    rows = []
    for batch in args.batch:
        shape = [batch if d is None else d for d in spec.shape]
        feed = {spec.name: rng.random(shape, dtype=np.float32)}
        timings = time_alternated({name: (lambda s=s: s.run(None, feed)) for name, s in sessions.items()},
                                  repeats=args.repeats, warmup=3)
        medians = {name: timings.median(name) for name in sessions}
        base = medians["stock onnxruntime"]
        for name, value in medians.items():
            rows.append({"batch": batch, "model": name, "median_ms": 1000 * value, "ratio_vs_stock": value / base})
    print("| batch | model | median ms | time / stock |\n|---:|---|---:|---:|")
    for r in rows:
        print(f"| {r['batch']} | {r['model']} | {r['median_ms']:.2f} | {r['ratio_vs_stock']:.2f} |")
    save_results(rows, args.json)


if __name__ == "__main__":
    main()
