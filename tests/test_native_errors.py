"""Bad input to the native kernels ends in an onnxruntime error with a clear message, never a crash.

The kernels check shapes at run time (rank, channels, empty tensors, Skip broadcasting, an
empty output) and their weights and attributes when the session is created.
"""
from __future__ import annotations

import math
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.native_cases import batch_model, random_case
from tests.zap_builders import IR_VERSION
from zapopt import native
from zapopt.errors import ZapoptError
from zapopt.ops import DOMAIN, ZeroSkipConvAttrs, get_pattern, make_zero_skip_node

pytestmark = pytest.mark.skipif(
    not native.library_available(), reason="libzapopt_ops.so is not built (pip install -e . builds it)"
)

RNG = np.random.default_rng(7)
W = (RNG.standard_normal((16, 4, 3, 3)) * 0.2).astype(np.float32)


def _model(node: onnx.NodeProto, inits: list, inputs: tuple[str, ...] = ("X",)) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node], "bad",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in inputs],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT if o == "Y" else TensorProto.BOOL, None)
         for o in node.output],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    model.ir_version = IR_VERSION
    return model


def zero_skip_model(skip: bool = False, **attrs) -> onnx.ModelProto:
    node = make_zero_skip_node(name="conv", x="X", w="W", y="Y", skip="S" if skip else "",
                               attrs=ZeroSkipConvAttrs(pads=(1, 1, 1, 1), **attrs))
    return _model(node, [numpy_helper.from_array(W, "W")], ("X", "S") if skip else ("X",))


def raw_node(op: str = "ZeroSkipConv", inputs=("X", "W"), **attrs) -> onnx.NodeProto:
    return helper.make_node(op, list(inputs), ["Y"], name="conv", domain=DOMAIN, **attrs)


@pytest.mark.parametrize(
    "x, message",
    [
        (np.zeros((4, 8, 8), np.float32), "must be 4-D"),
        (np.zeros((1, 4, 8, 8, 1), np.float32), "must be 4-D"),
        (np.zeros((1, 5, 8, 8), np.float32), "has 5 channels but W and group expect 4"),
        (np.zeros((0, 4, 8, 8), np.float32), "must not be empty"),
        (np.zeros((1, 4, 0, 8), np.float32), "must not be empty"),
    ],
)
def test_bad_input_shapes_are_errors(x: np.ndarray, message: str) -> None:
    session = native.session(zero_skip_model())
    with pytest.raises(Exception, match=message):
        session.run(None, {"X": x})
    # The session still works afterwards.
    good = session.run(None, {"X": np.ones((1, 4, 5, 5), np.float32)})[0]
    assert good.shape == (1, 16, 5, 5)


def test_an_output_that_would_be_empty_is_an_error() -> None:
    node = make_zero_skip_node(name="conv", x="X", w="W", y="Y", attrs=ZeroSkipConvAttrs())
    session = native.session(_model(node, [numpy_helper.from_array(W, "W")]))
    with pytest.raises(Exception, match="output would be empty"):
        session.run(None, {"X": np.ones((1, 4, 2, 2), np.float32)})


@pytest.mark.parametrize("shape", [(1, 15, 1, 1), (2, 16, 5, 5), (4,), (1, 1, 1, 1, 1)])
def test_a_skip_that_does_not_broadcast_is_an_error(shape: tuple[int, ...]) -> None:
    session = native.session(zero_skip_model(skip=True))
    x = np.ones((1, 4, 5, 5), np.float32)
    with pytest.raises(Exception, match="does not broadcast"):
        session.run(None, {"X": x, "S": np.ones(shape, np.float32)})
    ok = session.run(None, {"X": x, "S": np.ones((16, 1, 1), np.float32)})[0]
    assert ok.shape == (1, 16, 5, 5)


def test_weights_that_are_not_constant_are_refused_at_session_creation() -> None:
    model = _model(raw_node(), [], ("X", "W"))
    with pytest.raises(ZapoptError, match="W must be a constant initializer"):
        native.session(model)


@pytest.mark.parametrize(
    "attrs, message",
    [
        ({"activation": "gelu"}, "activation must be"),
        ({"activation": "none", "clip_max": 6.0}, "clip_max applies only"),
        ({"clip_max": -1.0}, "clip_max must be > 0"),
        ({"strides": [1]}, "strides must be 2 ints"),
        ({"pads": [1, 1, -1, 0]}, "pads must be 4 ints >= 0"),
        ({"group": 3}, "divisible by group"),
        ({"auto_pad": "SAME_UPPER"}, "auto_pad is not supported"),
    ],
)
def test_bad_zero_skip_attributes_are_refused(attrs: dict, message: str) -> None:
    model = _model(raw_node(**attrs), [numpy_helper.from_array(W, "W")])
    with pytest.raises(ZapoptError, match=message):
        native.session(model)


def _zap_node(**attrs) -> tuple[onnx.NodeProto, list]:
    c = W.shape[0]
    inits = [numpy_helper.from_array(W, "W")] + [
        numpy_helper.from_array(np.ones(shape, np.float32), name)
        for name, shape in (("PW1", (c, 1, 3, 3)), ("PB1", (c,)), ("PW2", (c, 1, 3, 3)), ("PB2", (c,)))
    ]
    node = helper.make_node("ZapConv", ["X", "W", "", "PW1", "PB1", "PW2", "PB2"], ["Y"], name="zap",
                            domain=DOMAIN, **attrs)
    return node, inits


@pytest.mark.parametrize(
    "attrs, message",
    [
        ({"pattern": [1, 0], "pattern_shape": [2, 2], "threshold": 0.0}, "pattern_shape\\[0\\] \\* pattern_shape\\[1\\]"),
        ({"pattern": [0, 0], "pattern_shape": [1, 2], "threshold": 0.0}, "at least one position"),
        ({"pattern": [1, 2], "pattern_shape": [1, 2], "threshold": 0.0}, "entries must be 0 or 1"),
        ({"pattern": [1, 0], "pattern_shape": [1, 2]}, "needs the attributes"),
        ({"pattern": [1, 0], "pattern_shape": [1, 2], "threshold": math.nan}, "not NaN"),
        ({"pattern": [1, 0], "pattern_shape": [1, 2], "threshold": 0.0, "predictor_input": "V"}, "predictor_input"),
    ],
)
def test_bad_zap_attributes_are_refused(attrs: dict, message: str) -> None:
    node, inits = _zap_node(**attrs)
    with pytest.raises(ZapoptError, match=message):
        native.session(_model(node, inits))


def test_bad_predictor_weights_are_refused() -> None:
    node, inits = _zap_node(pattern=[1, 0], pattern_shape=[1, 2], threshold=0.0)
    inits[1] = numpy_helper.from_array(np.ones((3, 1, 3, 3), np.float32), "PW1")
    with pytest.raises(ZapoptError, match="PW1 must have shape \\[16, 1, 3, 3\\]"):
        native.session(_model(node, inits))


def test_an_unknown_or_unavailable_forced_path_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.PATH_ENV, "sse9")
    with pytest.raises(ZapoptError, match="ZAPOPT_KERNEL_PATH"):
        native.selected_path()
    with pytest.raises(ZapoptError, match="is not one of avx512, avx2, portable"):
        native.session(zero_skip_model())
    missing = [p for p in ("avx512", "avx2") if p not in native.kernel_paths()]
    for path in missing:
        monkeypatch.setenv(native.PATH_ENV, path)
        with pytest.raises(ZapoptError, match="lacks that instruction set"):
            native.session(zero_skip_model())


def test_a_missing_library_says_how_to_build_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "LIBRARY_NAME", "libzapopt_ops_missing.so")
    assert not native.library_available()
    with pytest.raises(ZapoptError, match="pip install -e"):
        native.get_library_path()


def test_session_reports_a_missing_model_file(tmp_path) -> None:
    with pytest.raises(ZapoptError, match="does not exist"):
        native.session(tmp_path / "nope.onnx")


def test_sessions_and_threads_at_once_give_identical_results() -> None:
    rng = np.random.default_rng(11)
    cases = [random_case(rng, op) for op in ("ZeroSkipConv", "ZapConv") for _ in range(6)]
    model, feeds, names = batch_model(cases)
    wanted = [n for group in names for n in group]
    expected = native.session(model, threads=1).run(wanted, feeds)
    sessions = [native.session(model, threads=t) for t in (1, 2, 2)]
    results: list = []
    errors: list = []

    def worker(session) -> None:
        try:
            for _ in range(5):
                results.append(session.run(wanted, feeds))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in sessions + sessions[1:]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 5 * len(threads)
    for outputs in results:
        for got, want in zip(outputs, expected):
            np.testing.assert_array_equal(got, want)
