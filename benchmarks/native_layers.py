"""The native kernels against onnxruntime's own Conv on ResNet-50-like layers, one run.

    python benchmarks/native_layers.py --json benchmarks/results/native_layers/native_layers.json

For each layer, input zero share and thread count: stock onnxruntime Conv+Relu (ORT_ENABLE_ALL,
its MLAS kernels) and ai.zapopt::ZeroSkipConv with the same weights, runs alternated in one
process; median wall time, its spread (25-75 %), the ratio stock/native (> 1: native faster),
the same ratio on median process CPU time (the contention-free figure at one thread) and
GFLOP/s on the layer's dense work (2 * MACs). ZapConv rows add a checkerboard predictor
at a threshold that skips about half of the predicted positions (a quarter of all outputs)
and at +inf (only the pattern, half the outputs). Input zeros are scattered at element level
(the hard case: real ReLU zeros cluster a little). Batch 1.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import onnxruntime as ort  # noqa: E402

from zapopt import native  # noqa: E402
from zapopt.ops import (  # noqa: E402
    DOMAIN, ZapConvAttrs, ZeroSkipConvAttrs, get_pattern, make_zap_node, make_zero_skip_node, zap_conv_trace,
)
from zap_common import save_results  # noqa: E402

#: (C_in, C_out, kernel, spatial size): ResNet-50's 3x3 and 1x1 convs, one per stage.
LAYERS = [(64, 64, 3, 56), (128, 128, 3, 28), (256, 256, 3, 14), (512, 512, 3, 7), (256, 64, 1, 56), (1024, 256, 1, 14),
          (64, 256, 1, 56), (64, 64, 1, 56)]


def _model(node: onnx.NodeProto, inits: list, c_in: int, size: int, custom: bool) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node] if isinstance(node, onnx.NodeProto) else node, "layer",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, c_in, size, size])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    imports = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(DOMAIN, 1)] if custom else [])
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 10
    return model


def conv_models(w: np.ndarray, b: np.ndarray, c_in: int, size: int) -> dict:
    """Stock Conv+Relu and ZeroSkipConv models of one same-padded layer with weights ``w``, bias ``b``."""
    pad = w.shape[2] // 2
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]
    stock = _model([helper.make_node("Conv", ["X", "W", "B"], ["C"], pads=[pad] * 4),
                    helper.make_node("Relu", ["C"], ["Y"])], inits, c_in, size, False)
    zero_skip = _model(make_zero_skip_node(name="conv", x="X", w="W", b="B", y="Y",
                                           attrs=ZeroSkipConvAttrs(pads=(pad,) * 4)), inits, c_in, size, True)
    return {"W": w, "B": b, "pad": pad, "stock": stock, "ZeroSkipConv": zero_skip}


def layer_models(c_in: int, c_out: int, k: int, size: int, rng: np.random.Generator) -> dict:
    """:func:`conv_models` of a layer with random weights."""
    w = (rng.standard_normal((c_out, c_in, k, k)) / math.sqrt(c_in * k * k)).astype(np.float32)
    b = (rng.standard_normal(c_out) * 0.1).astype(np.float32)
    return conv_models(w, b, c_in, size)


def zap_model(layer: dict, x: np.ndarray, c_in: int, size: int, rng: np.random.Generator,
              skip_share_of_predicted: float) -> tuple[onnx.ModelProto, float]:
    """ZapConv with random predictor weights and a threshold skipping that share of predicted outputs."""
    c_out = layer["W"].shape[0]
    predictor = {"PW1": rng.standard_normal((c_out, 1, 3, 3)), "PB1": rng.standard_normal(c_out) * 0.1,
                 "PW2": rng.standard_normal((c_out, 1, 3, 3)), "PB2": rng.standard_normal(c_out) * 0.1}
    predictor = {k: (v * 0.3).astype(np.float32) for k, v in predictor.items()}
    pattern = get_pattern("checkerboard")
    base = dict(pattern=pattern, pads=(layer["pad"],) * 4)
    if skip_share_of_predicted >= 1:
        threshold = math.inf
    else:
        trace = zap_conv_trace(x, layer["W"], layer["B"], predictor["PW1"], predictor["PB1"], predictor["PW2"],
                               predictor["PB2"], attrs=ZapConvAttrs(threshold=0.0, **base))
        threshold = float(np.quantile(trace.Z[:, :, ~trace.S], skip_share_of_predicted))
    attrs = ZapConvAttrs(threshold=threshold, **base)
    inits = [numpy_helper.from_array(layer["W"], "W"), numpy_helper.from_array(layer["B"], "B")] + [
        numpy_helper.from_array(v, k) for k, v in predictor.items()]
    node = make_zap_node(name="zap", x="X", w="W", b="B", pw1="PW1", pb1="PB1", pw2="PW2", pb2="PB2", y="Y",
                         computed="Computed", attrs=attrs)
    model = _model(node, inits, c_in, size, True)
    model.graph.output.append(helper.make_tensor_value_info("Computed", TensorProto.BOOL, None))
    return model, threshold


def sparse_input(rng: np.random.Generator, c_in: int, size: int, zero_share: float) -> np.ndarray:
    x = (np.abs(rng.standard_normal((1, c_in, size, size))) + 0.05).astype(np.float32)
    x[rng.random(x.shape) < zero_share] = 0
    return x


def time_alternated(sessions: dict, feed: dict, repeats: int, warmup: int = 3) -> dict[str, dict[str, list[float]]]:
    """Wall and process-CPU seconds per run of each session, runs alternating, every other
    round in reverse order (the run right after stock's measured 10-20 % faster here,
    whichever session it was).

    With one intra-op thread the CPU time is the work itself, unaffected by other processes
    taking the cores (a shared machine); with more, onnxruntime's spinning threads inflate it.
    """
    for session in sessions.values():
        for _ in range(warmup):
            session.run(["Y"], feed)
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in sessions}
    names = list(sessions)
    for round_index in range(repeats):
        for name in reversed(names) if round_index % 2 else names:
            wall, cpu = time.perf_counter(), time.process_time()
            sessions[name].run(["Y"], feed)
            times[name]["cpu"].append(time.process_time() - cpu)
            times[name]["wall"].append(time.perf_counter() - wall)
    return times


def summary(values: dict[str, list[float]]) -> dict[str, float]:
    q = statistics.quantiles(values["wall"], n=4)
    return {"median_ms": statistics.median(values["wall"]) * 1e3, "p25_ms": q[0] * 1e3, "p75_ms": q[2] * 1e3,
            "cpu_median_ms": statistics.median(values["cpu"]) * 1e3, "cpu_min_ms": min(values["cpu"]) * 1e3}


def stock_session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def baseline_session(model: onnx.ModelProto, library: Path) -> ort.InferenceSession:
    """A one-thread session running ``model`` with another build of the op library (e.g. of an
    earlier commit), for same-process before/after comparisons."""
    options = native.session_options(threads=1, register_library=False)
    options.register_custom_ops_library(str(library))
    return native.open_session(model.SerializeToString(), options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--zeros", type=float, nargs="+", default=[0.0, 0.5, 0.7, 0.9])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--layers", type=int, nargs="+", default=None, help="indices into LAYERS (default: all)")
    parser.add_argument("--zap-zeros", type=float, default=0.5, help="input zero share of the ZapConv rows")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    rows = []
    print(f"kernel path: {native.selected_path()} (this CPU has {', '.join(native.kernel_paths())})")
    print("| layer | threads | input zeros | op | skipped outputs | stock ms (25-75 %) | native ms (25-75 %) "
          "| stock/native | stock/native (CPU time) | stock GFLOP/s | native GFLOP/s |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for index in args.layers if args.layers is not None else range(len(LAYERS)):
        c_in, c_out, k, size = LAYERS[index]
        rng = np.random.default_rng(index)
        layer = layer_models(c_in, c_out, k, size, rng)
        flops = 2 * c_in * c_out * k * k * size * size
        name = f"{c_in}->{c_out} {k}x{k} {size}x{size}"
        zap_x = sparse_input(rng, c_in, size, args.zap_zeros)
        variants = [("ZeroSkipConv", zero, layer["ZeroSkipConv"], 0.0) for zero in args.zeros]
        for share in (0.5, 1.0):
            model, _ = zap_model(layer, zap_x, c_in, size, rng, share)
            variants.append((f"ZapConv checkerboard, {'tau=+inf' if share >= 1 else 'tau=median'}", args.zap_zeros,
                             model, None))
        for threads in args.threads:
            stock = stock_session(layer["stock"], threads)
            for op, zero, model, skipped in variants:
                x = zap_x if op.startswith("ZapConv") else sparse_input(np.random.default_rng(7), c_in, size, zero)
                session = native.session(model, threads=threads)
                if skipped is None:
                    computed = session.run(["Computed"], {"X": x})[0]
                    skipped = 1.0 - float(computed.mean())
                times = time_alternated({"stock": stock, "native": session}, {"X": x}, args.repeats)
                s, n = summary(times["stock"]), summary(times["native"])
                row = {
                    "layer": name, "c_in": c_in, "c_out": c_out, "kernel": k, "size": size, "threads": threads,
                    "input_zero_share": zero, "op": op, "skipped_output_share": skipped,
                    "stock": s, "native": n, "stock_over_native": s["median_ms"] / n["median_ms"],
                    "stock_over_native_cpu": s["cpu_median_ms"] / n["cpu_median_ms"],
                    "stock_gflops": flops / s["median_ms"] / 1e6, "native_gflops": flops / n["median_ms"] / 1e6,
                    "kernel_path": native.selected_path(),
                }
                rows.append(row)
                print(f"| {name} | {threads} | {zero:.0%} | {op} | {skipped:.0%} "
                      f"| {s['median_ms']:.2f} ({s['p25_ms']:.2f}-{s['p75_ms']:.2f}) "
                      f"| {n['median_ms']:.2f} ({n['p25_ms']:.2f}-{n['p75_ms']:.2f}) "
                      f"| {row['stock_over_native']:.2f} | {row['stock_over_native_cpu']:.2f} "
                      f"| {row['stock_gflops']:.0f} | {row['native_gflops']:.0f} |",
                      flush=True)
    save_results(rows, args.json)  # adds the command, git commit and machine (result_files)


if __name__ == "__main__":
    main()
