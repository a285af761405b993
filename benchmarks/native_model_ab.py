"""A whole native model with this checkout's library against another build of it, and both
against the original model in stock onnxruntime, in one process.

    python benchmarks/native_model_ab.py --baseline /tmp/base/libzapopt_ops.so \\
        --models opennsfw --layers all deep3x3 --runs 30 \\
        --json benchmarks/results/native_ab/models_vs_d06782c.json

native_ab.py compares builds layer by layer, alone; inside a model a layer runs with other
caches (a deep layer's weights come from L3 or memory on every run), which is where some
kernel changes pay and others do not. Here the model with every candidate conv native
(``--layers all``) or only OpenNSFW's ten deep 3x3 convs (``deep3x3``) runs once on each
build, alternated (every other round reversed) with the original, one intra-op thread,
timed in the running thread's CPU time, on real-photo batches (a different photo each
round). Two copies of the *same* library differ by up to ~5 % in this harness on a shared
2-core machine; only repeated gains count. Build the baseline as native_ab.py's docstring
says.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from native_layers import baseline_session, stock_session  # noqa: E402
from native_models import FASHION, model_and_data  # noqa: E402
from zap_common import save_results  # noqa: E402

from zapopt import native  # noqa: E402
from zapopt.data import model_input, open_dataset  # noqa: E402
from zapopt.optimize import ExactOnly, OptimizeConfig, optimize  # noqa: E402
from zapopt.rewrite.graph_edit import is_native_node  # noqa: E402
from zapopt.timing import clock_for, time_alternated  # noqa: E402

#: Which convs go native: every candidate, or OpenNSFW's ten 3x3 convs with 57-75 % input zeros.
LAYER_SETS = {"all": (), "deep3x3": ("Conv__(488|498|514|524|534|544|554|568|570|580)",)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="another build's libzapopt_ops.so")
    parser.add_argument("--models", nargs="+", default=["opennsfw"], choices=[*FASHION, "mobilenet_v2", "opennsfw"])
    parser.add_argument("--layers", nargs="+", default=["all"], choices=sorted(LAYER_SETS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not args.baseline.is_file():
        parser.error(f"--baseline {args.baseline} is not a file")

    rows = []
    print("| model | native convs | original ms | baseline ms | this checkout ms | baseline/this | original/this |")
    print("|---|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="zapopt-model-ab-") as tmp:
        for name in args.models:
            model_path, calib, data = model_and_data(name, Path(tmp), photos=32)
            original = onnx.load(model_path)
            dataset = open_dataset(data, model_input(original))
            feeds = [np.ascontiguousarray(dataset.batch_of(args.batch)) for _ in range(4)]
            for layer_set in args.layers:
                if layer_set != "all" and name != "opennsfw":
                    continue
                out = Path(tmp) / f"{name}.{layer_set}.onnx"
                optimize(model_path, out, calib, config=OptimizeConfig(ExactOnly(), latency_check=False,
                                                                        layers=LAYER_SETS[layer_set]),
                         progress=False)
                optimized = onnx.load(out)
                sessions = {"original": stock_session(original, 1),
                            "baseline": baseline_session(optimized, args.baseline),
                            "this": native.session(optimized, threads=1)}
                feed_name = sessions["original"].get_inputs()[0].name
                rounds = dict.fromkeys(sessions, 0)

                def runner(key: str):
                    def run() -> None:  # a different photo batch each round, the same for all three
                        sessions[key].run(None, {feed_name: feeds[rounds[key] % len(feeds)]})
                        rounds[key] += 1
                    return run

                timings = time_alternated({k: runner(k) for k in sessions}, repeats=args.runs, balanced=True,
                                          clock=clock_for(1)[1])
                ms = {k: 1e3 * timings.median(k) for k in sessions}
                native_convs = sum(is_native_node(n) for n in optimized.graph.node)
                row = {"model": name, "layers": layer_set, "batch": args.batch, "threads": 1,
                       "clock": "thread CPU time", "median_ms": ms, "native_convs": native_convs,
                       "baseline_over_this": timings.ratio("baseline", "this").to_dict(),
                       "original_over_this": timings.ratio("original", "this").to_dict(),
                       "original_over_baseline": timings.ratio("original", "baseline").to_dict()}
                rows.append(row)
                print(f"| {name} | {layer_set} ({native_convs}) | {ms['original']:.2f} | {ms['baseline']:.2f} | {ms['this']:.2f} | "
                      f"{row['baseline_over_this']['median']:.3f} | {row['original_over_this']['median']:.3f} |",
                      flush=True)
    save_results(rows, args.json)


if __name__ == "__main__":
    main()
