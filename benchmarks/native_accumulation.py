"""The native kernel's accumulation forms at medium input sparsity, one run (issue 17).

    python benchmarks/native_accumulation.py --json benchmarks/results/native_layers/native_accumulation.json

Two parts, both on ResNet-50's 3x3 and 1x1 layer shapes (``native_layers.LAYERS``):

* Union statistics on real activations: OpenNSFW's conv inputs on crops of real photos. For
  groups of R consecutive output positions (the kernel's groups), the work of the union form
  (|channels nonzero at one of the R positions| per position and 64-channel chunk) against the
  per-position lists (the nonzeros) and the dense form (every channel).
* Timing, 1 intra-op thread, process CPU time, stock onnxruntime Conv+Relu (ORT_ENABLE_ALL)
  alternated with ZeroSkipConv in one process (every other round in reverse order), once per accumulation form forced with
  ZAPOPT_ACCUMULATION (lists, union1-4, dense) and once with the per-step choice (auto), on
  scattered zeros (random weights) and on the real input and weights of the OpenNSFW conv
  with those channels and kernel (``--real``); ``--baseline-library`` adds another build of the
  library (e.g. of the commit before) to the same alternated runs.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from native_layers import LAYERS, baseline_session, conv_models, layer_models, sparse_input, stock_session  # noqa: E402
from zap_common import save_results  # noqa: E402

from zapopt import native  # noqa: E402
from zapopt.timing import time_alternated  # noqa: E402

FORMS = ("lists", "union1", "union2", "union3", "union4", "dense", "auto")


def opennsfw_conv_inputs(photos: int) -> dict[tuple[int, int, int], dict]:
    """For each (C_in, C_out, kernel) of LAYERS, the first stride-1 OpenNSFW conv with them (a
    half-width ResNet-50: its feature maps are half LAYERS' size): its weights, bias and the
    input it sees on ``photos`` photo crops (NCHW, the model runs NHWC -> NCHW inside)."""
    from native_models import opennsfw_model, opennsfw_photos

    with tempfile.TemporaryDirectory() as tmp:
        model = onnx.load(opennsfw_model(Path(tmp)))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    wanted: dict[tuple[int, int, int, int], onnx.NodeProto] = {}
    shapes = {}
    for node in model.graph.node:
        if node.op_type != "Conv" or node.input[1] not in inits:
            continue
        w = inits[node.input[1]]
        strides = next((list(a.ints) for a in node.attribute if a.name == "strides"), [1, 1])
        if strides != [1, 1]:
            continue
        shapes[node.input[0]] = (node, w)
    model.graph.output.extend(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in shapes)
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = opennsfw_photos(photos)
    names = list(shapes)
    values = session.run(names, {session.get_inputs()[0].name: x})
    found: dict[tuple[int, int, int], dict] = {}
    wanted = {layer[:3] for layer in LAYERS}
    for name, value in zip(names, values):
        node, w = shapes[name]
        key = (w.shape[1], w.shape[0], w.shape[2])
        if key in wanted and key not in found and w.shape[2] == w.shape[3]:
            bias = inits[node.input[2]] if len(node.input) > 2 else np.zeros(w.shape[0], np.float32)
            found[key] = {"x": value.astype(np.float32), "W": w.astype(np.float32), "B": bias.astype(np.float32),
                          "name": node.name or name}
    return found


def union_work(x: np.ndarray, k: int, rows: int, chunk: int = 64) -> float:
    """Union work over list work for groups of ``rows`` consecutive output positions (raster
    order, stride 1, same padding: the group's receptive fields shift together), all taps."""
    n, c, h, w = x.shape
    pad = k // 2
    nz = np.pad(x != 0, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    union = lists = 0
    for a in range(k):
        for b in range(k):
            window = nz[:, :, a:a + h, b:b + w].transpose(0, 2, 3, 1).reshape(n, h * w, c)
            positions = (h * w) // rows * rows
            grouped = window[:, :positions].reshape(n, positions // rows, rows, c)
            for c0 in range(0, c, chunk):
                piece = grouped[..., c0:c0 + chunk]
                union += int(piece.any(axis=2).sum()) * rows
                lists += int(piece.sum())
    return union / max(lists, 1)


def time_forms(stock_model_proto: onnx.ModelProto, native_model: onnx.ModelProto, x: np.ndarray,
               forms: list[str], repeats: int, baseline: Path | None) -> dict[str, float]:
    """CPU-time ratio stock/native per forced form (and for the baseline library's default
    choice, key "baseline"), 1 thread, all sessions' runs alternated in one process."""
    sessions = {"stock": stock_session(stock_model_proto, 1)}
    for form in forms:
        os.environ[native.ACCUMULATION_ENV] = form
        sessions[form] = native.session(native_model, threads=1)  # the kernel reads it when created
    os.environ.pop(native.ACCUMULATION_ENV, None)
    if baseline is not None:
        sessions["baseline"] = baseline_session(native_model, baseline)
    timings = time_alternated({name: (lambda s=s: s.run(["Y"], {"X": x})) for name, s in sessions.items()},
                              repeats=repeats, warmup=3, clock=time.process_time, balanced=True)
    stock = timings.median("stock")
    return {name: stock / timings.median(name) for name in sessions if name != "stock"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zeros", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7])
    parser.add_argument("--forms", nargs="+", default=list(FORMS), choices=FORMS)
    parser.add_argument("--layers", type=int, nargs="+", default=None, help="indices into LAYERS (default: all)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--real", action="store_true", help="also real OpenNSFW inputs and weights")
    parser.add_argument("--photos", type=int, default=4, help="photo crops for --real (the first is timed)")
    parser.add_argument("--baseline-library", type=Path, default=None,
                        help="another build of libzapopt_ops.so (e.g. of an earlier commit), timed in the same runs")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    indices = args.layers if args.layers is not None else range(len(LAYERS))
    real = opennsfw_conv_inputs(args.photos) if args.real else {}
    rows = []
    print(f"kernel path: {native.selected_path()}, 1 thread, CPU-time ratio stock/native (> 1: native faster)")
    columns = list(args.forms) + (["baseline"] if args.baseline_library is not None else [])
    print("| layer | input | zeros | union work / list work R=2,3,4 | " + " | ".join(columns) + " |")
    print("|---|---|---:|---|" + "---:|" * len(columns))
    for index in indices:
        c_in, c_out, k, size = LAYERS[index]
        name = f"{c_in}->{c_out} {k}x{k} {size}x{size}"
        layer = layer_models(c_in, c_out, k, size, np.random.default_rng(index))
        inputs = [("scattered", sparse_input(np.random.default_rng(7), c_in, size, z), layer["stock"],
                   layer["ZeroSkipConv"]) for z in args.zeros]
        if LAYERS[index][:3] in real:
            r = real[LAYERS[index][:3]]
            real_size = r["x"].shape[2]
            models = conv_models(r["W"], r["B"], c_in, real_size)
            inputs.append((f"OpenNSFW {r['name']} {real_size}x{real_size}", np.ascontiguousarray(r["x"][:1]),
                           models["stock"], models["ZeroSkipConv"]))
        for kind, x, stock, model in inputs:
            zero = float((x == 0).mean())
            union = [union_work(x if kind == "scattered" else real[LAYERS[index][:3]]["x"], k, rr) for rr in (2, 3, 4)]
            ratios = time_forms(stock, model, x, args.forms, args.repeats, args.baseline_library)
            rows.append({"layer": name, "input": kind, "input_zero_share": zero, "threads": 1,
                         "union_over_list_work": dict(zip(("2", "3", "4"), union)),
                         "stock_over_native_cpu": ratios, "kernel_path": native.selected_path()})
            print(f"| {name} | {kind} | {zero:.0%} | {' / '.join(f'{u:.2f}' for u in union)} | "
                  + " | ".join(f"{ratios[f]:.2f}" for f in columns) + " |", flush=True)
    save_results(rows, args.json)


if __name__ == "__main__":
    main()
