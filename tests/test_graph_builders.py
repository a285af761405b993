"""Small hand-built ONNX graphs shared by the graph-analysis tests (plus a sanity check)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Shape = Sequence[int | str | None]


def build_model(nodes: list[onnx.NodeProto], inputs: Mapping[str, Shape], outputs: Sequence[str],
                initializers: Mapping[str, np.ndarray] | None = None, opset: int = 17,
                elem_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """A checked model: ``inputs`` name -> shape (str = symbolic dim), output types filled by
    shape inference (as an exporter would), float32 initializers from numpy arrays."""
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(name, elem_type, list(shape)) for name, shape in inputs.items()],
        [helper.make_empty_tensor_value_info(name) for name in outputs],
        initializer=[numpy_helper.from_array(np.asarray(value), name)
                     for name, value in (initializers or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset <= 18 else 10
    inferred = onnx.shape_inference.infer_shapes(model)
    model.graph.ClearField("output")
    model.graph.output.extend(inferred.graph.output)
    onnx.checker.check_model(model)
    return model


def weights(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def bn_params(prefix: str, channels: int) -> dict[str, np.ndarray]:
    return {f"{prefix}_scale": np.ones(channels, np.float32), f"{prefix}_bias": np.zeros(channels, np.float32),
            f"{prefix}_mean": np.zeros(channels, np.float32), f"{prefix}_var": np.ones(channels, np.float32)}


def bn_node(prefix: str, x: str, y: str, name: str = "") -> onnx.NodeProto:
    return helper.make_node("BatchNormalization",
                            [x, f"{prefix}_scale", f"{prefix}_bias", f"{prefix}_mean", f"{prefix}_var"],
                            [y], name=name or prefix)


def single_conv_model(x_shape: Shape, w_shape: Sequence[int], opset: int = 17, **attrs) -> onnx.ModelProto:
    """X -> Conv(W, attrs) -> Y."""
    node = helper.make_node("Conv", ["X", "W"], ["Y"], name="conv", **attrs)
    return build_model([node], {"X": x_shape}, ["Y"], {"W": weights(*w_shape)}, opset=opset)


def test_builders_make_valid_models() -> None:
    model = single_conv_model([1, 3, 8, 8], [4, 3, 3, 3], pads=[1, 1, 1, 1])
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    (y,) = [v for v in inferred.graph.output if v.name == "Y"]
    assert [d.dim_value for d in y.type.tensor_type.shape.dim] == [1, 4, 8, 8]
