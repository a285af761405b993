"""How OpenNSFW's input zeros fall for a convolution vectorized along positions.

    python benchmarks/native_zero_windows.py --json benchmarks/results/native_ab/zero_windows.json

The native kernel skips zeros one element at a time (lists along input channels, vectorized
along output channels), which costs a weight load per multiply-add
(native_loop_ceiling.py). A dense NCHW direct convolution vectorized along positions would
run near the FMA peak, but could only skip an input channel for a tile of positions when
every input pixel the tile reads in that channel is zero. This counts how much of the work
such windows hold on real photos: for each stride-1 1x1 and 3x3 conv, the share of
(input channel, output tile) pairs whose window is all zero, the tile being ``--tile``
consecutive output positions of the flattened plane (3x3: planes padded by one pixel on
each side and flattened row by row, as such a kernel would lay them out), next to the
element-level zero share the lists skip. MAC-weighted totals at the end.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from native_models import opennsfw_model, opennsfw_photos  # noqa: E402
from zap_common import save_results  # noqa: E402


def conv_inputs(model: onnx.ModelProto, photos: np.ndarray) -> dict[str, np.ndarray]:
    """Every Conv's input tensor on ``photos`` (one run of the original in onnxruntime)."""
    outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        if node.op_type == "Conv" and node.input[0] not in outputs:
            model.graph.output.append(onnx.helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, None))
            outputs.add(node.input[0])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {session.get_inputs()[0].name: photos})))


def window_nonzero(nonzero: np.ndarray, kernel: int, tile: int) -> np.ndarray:
    """[N, C, tiles]: whether any input pixel under (channel, tile of output positions) is nonzero."""
    n, c, h, w = nonzero.shape
    if kernel == 1:
        flat, positions, reach = nonzero.reshape(n, c, h * w), h * w, 0
    else:
        padded = np.zeros((n, c, h + 2, w + 2), bool)
        padded[:, :, 1:-1, 1:-1] = nonzero
        flat, positions, reach = padded.reshape(n, c, -1), h * (w + 2), 2 * (w + 2) + 2
    tiles = (positions + tile - 1) // tile
    windows = np.zeros((n, c, tiles), bool)
    for t in range(tiles):
        first, last = t * tile, min(positions, (t + 1) * tile) - 1 + reach
        windows[..., t] = flat[..., first:last + 1].any(-1)
    return windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--tile", type=int, default=24, help="output positions per tile (3 AVX2 vectors)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        model = onnx.load(opennsfw_model(Path(work)))
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    inputs = conv_inputs(model, opennsfw_photos(args.photos))
    rows, totals = [], {}
    print("| conv | shape | input zeros (elements) | all-zero windows |")
    print("|---|---|---:|---:|")
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        w = weights[node.input[1]]
        c_out, _, kernel, _ = w.shape
        if list(attrs.get("strides", [1, 1])) != [1, 1] or kernel not in (1, 3) or attrs.get("group", 1) != 1:
            continue
        x = inputs[node.input[0]]
        _, c_in, h, wd = x.shape
        element_zeros = float((x == 0).mean())
        window_zeros = float(1.0 - window_nonzero(x != 0, kernel, args.tile).mean())
        macs = c_out * c_in * kernel * kernel * h * wd
        total = totals.setdefault(f"{kernel}x{kernel}", [0.0, 0.0, 0.0])
        total[0] += macs
        total[1] += element_zeros * macs
        total[2] += window_zeros * macs
        shape = f"{c_in}->{c_out} {kernel}x{kernel} {h}x{wd}"
        rows.append({"conv": node.name, "shape": shape, "macs": macs, "element_zero_share": element_zeros,
                     "all_zero_window_share": window_zeros})
        print(f"| {node.name} | {shape} | {element_zeros:.0%} | {window_zeros:.0%} |")
    for kernel, (macs, element, window) in totals.items():
        rows.append({"conv": f"all {kernel}", "macs": macs, "element_zero_share": element / macs,
                     "all_zero_window_share": window / macs, "mac_weighted": True})
        print(f"| all {kernel} (MAC-weighted) | | {element / macs:.1%} | {window / macs:.1%} |")
    save_results(rows, args.json)


if __name__ == "__main__":
    main()
