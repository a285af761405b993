"""The numpy reference: its convolution, its semantics, and its onnx.reference kernel."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal import correlate2d

from tests.zap_builders import feeds_of, random_zap_case, trace_of, zap_model
from zapopt.errors import ZapoptError
from zapopt.ops import conv2d, get_pattern, reference_session, zap_conv_reference


@pytest.mark.parametrize("seed", range(20))
def test_conv2d_matches_torch(seed: int) -> None:
    case = random_zap_case(np.random.default_rng(seed))
    a, attrs = case["arrays"], case["attrs"]
    pt, pl, pb, pr = attrs.pads
    padded = torch.nn.functional.pad(torch.from_numpy(a["X"]).double(), (pl, pr, pt, pb))
    bias = None if a["B"] is None else torch.from_numpy(a["B"]).double()
    expected = torch.nn.functional.conv2d(
        padded, torch.from_numpy(a["W"]).double(), bias,
        stride=attrs.strides, dilation=attrs.dilations, groups=attrs.group,
    ).numpy()
    got = conv2d(a["X"], a["W"], a["B"], strides=attrs.strides, pads=attrs.pads, dilations=attrs.dilations, group=attrs.group)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def _layer(rng: np.random.Generator, c_in: int = 3, c_out: int = 4):
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return f(2, c_in, 7, 6), f(c_out, c_in, 3, 3), f(c_out), f(c_out, 1, 3, 3), f(c_out), f(c_out, 1, 3, 3), f(c_out)


def test_minus_inf_threshold_is_the_original_layer() -> None:
    X, W, B, PW1, PB1, PW2, PB2 = _layer(np.random.default_rng(0))
    skip = np.random.default_rng(1).standard_normal((2, 4, 7, 6)).astype(np.float32)
    for clip_max, extra in ((math.inf, None), (6.0, None), (math.inf, skip), (1.0, skip)):
        y = zap_conv_reference(
            X, W, B, PW1, PB1, PW2, PB2, extra, pads=(1, 1, 1, 1), clip_max=clip_max,
            pattern=get_pattern("checkerboard"), threshold=-math.inf,
        )
        v = conv2d(X, W, B, pads=(1, 1, 1, 1)) + (0 if extra is None else extra)
        expected = np.clip(v, 0, clip_max)
        assert y.dtype == np.float32
        assert np.abs(y - expected).max() <= 1e-5 * np.abs(expected).max()


@pytest.mark.parametrize("predictor_input", ["activation", "preactivation"])
def test_semantics_against_a_literal_implementation(predictor_input: str) -> None:
    """docs/zap_op.md's pseudo-code, written out with scipy per channel."""
    rng = np.random.default_rng(3)
    X, W, B, PW1, PB1, PW2, PB2 = _layer(rng)
    pattern, threshold = get_pattern("tile5x5-40"), 0.1
    y, computed = zap_conv_reference(
        X, W, B, PW1, PB1, PW2, PB2, pads=(1, 1, 1, 1), pattern=pattern, threshold=threshold,
        predictor_input=predictor_input, return_computed=True,
    )
    v = conv2d(X, W, B, pads=(1, 1, 1, 1))
    full = np.maximum(v, 0)
    s = pattern.mask(7, 6)
    for n in range(2):
        for c in range(4):
            p = (v if predictor_input == "preactivation" else full)[n, c] * s
            hd = np.maximum(correlate2d(p, PW1[c, 0].astype(np.float64), mode="same") + PB1[c], 0)
            z = correlate2d(hd, PW2[c, 0].astype(np.float64), mode="same") + PB2[c]
            sure = np.abs(z - threshold) > 1e-4
            np.testing.assert_array_equal(computed[n, c][sure], (s | (z > threshold))[sure])
            np.testing.assert_allclose(y[n, c], np.where(computed[n, c], full[n, c], 0), rtol=1e-6, atol=1e-6)


def test_plus_inf_threshold_computes_only_the_pattern() -> None:
    X, W, B, PW1, PB1, PW2, PB2 = _layer(np.random.default_rng(4))
    pattern = get_pattern("diag3x3-33")
    y, computed = zap_conv_reference(
        X, W, B, PW1, PB1, PW2, PB2, pads=(1, 1, 1, 1), pattern=pattern, threshold=math.inf, return_computed=True
    )
    np.testing.assert_array_equal(computed, np.broadcast_to(pattern.mask(7, 6), computed.shape))
    assert (y[~computed] == 0).all()


def test_all_pattern_is_exact_whatever_the_threshold() -> None:
    X, W, B, PW1, PB1, PW2, PB2 = _layer(np.random.default_rng(5))
    y = zap_conv_reference(X, W, B, PW1, PB1, PW2, PB2, pattern=get_pattern("all"), threshold=math.inf)
    np.testing.assert_array_equal(y, np.maximum(conv2d(X, W, B), 0).astype(np.float32))


def test_flat_pattern_and_missing_bias() -> None:
    X, W, _, PW1, PB1, PW2, PB2 = _layer(np.random.default_rng(6))
    flat = zap_conv_reference(X, W, None, PW1, PB1, PW2, PB2, pattern=[1, 0, 0, 1], pattern_shape=[2, 2], threshold=0.0)
    named = zap_conv_reference(X, W, np.zeros(0, np.float32), PW1, PB1, PW2, PB2, pattern=get_pattern("checkerboard"), threshold=0.0)
    np.testing.assert_array_equal(flat, named)


def test_input_checks() -> None:
    X, W, B, PW1, PB1, PW2, PB2 = _layer(np.random.default_rng(7))
    kw = dict(pattern=get_pattern("checkerboard"), threshold=0.0)
    with pytest.raises(TypeError, match="float32"):
        zap_conv_reference(X.astype(np.float64), W, B, PW1, PB1, PW2, PB2, **kw)
    with pytest.raises(ZapoptError, match="PW1"):
        zap_conv_reference(X, W, B, PW1[:2], PB1, PW2, PB2, **kw)
    with pytest.raises(ZapoptError, match="channels"):
        zap_conv_reference(X[:, :2], W, B, PW1, PB1, PW2, PB2, **kw)
    with pytest.raises(ZapoptError, match="Skip"):
        zap_conv_reference(X, W, B, PW1, PB1, PW2, PB2, np.zeros((2, 4, 3, 3), np.float32), **kw)
    with pytest.raises(ZapoptError, match="empty"):
        zap_conv_reference(X, W, B, PW1, PB1, PW2, PB2, strides=(9, 9), pads=(0, 0, 0, 0), dilations=(4, 4), **kw)
    with pytest.raises(ZapoptError, match="pattern_shape"):
        zap_conv_reference(X, W, B, PW1, PB1, PW2, PB2, pattern=[1, 0], threshold=0.0)


@pytest.mark.parametrize("seed", range(6))
def test_reference_evaluator_kernel_runs_the_reference(seed: int) -> None:
    case = random_zap_case(np.random.default_rng(200 + seed))
    session = reference_session(zap_model(case, declare_computed=True))
    y, computed = session.run(None, feeds_of(case))
    trace = trace_of(case)
    np.testing.assert_array_equal(y, trace.Y)
    np.testing.assert_array_equal(computed, trace.Computed)
    (y_only,) = reference_session(zap_model(case)).run(None, feeds_of(case))
    np.testing.assert_array_equal(y_only, trace.Y)


def test_conv2d_chunks_large_batches_without_changing_results(monkeypatch: pytest.MonkeyPatch) -> None:
    import zapopt.ops.reference as reference

    rng = np.random.default_rng(8)
    X = rng.standard_normal((5, 6, 9, 9)).astype(np.float32)
    W = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    B = rng.standard_normal(4).astype(np.float32)
    whole = conv2d(X, W, B, pads=(1, 0, 1, 2), group=2)
    monkeypatch.setattr(reference, "_IM2COL_BYTES", 1)  # one sample per chunk
    np.testing.assert_allclose(conv2d(X, W, B, pads=(1, 0, 1, 2), group=2), whole, rtol=1e-13, atol=1e-13)


def test_predictor_input_changes_the_decision_only_through_negative_pattern_values() -> None:
    """Reading V instead of relu(V) matters exactly when a pattern position is negative."""
    rng = np.random.default_rng(8)
    X, W, B, PW1, PB1, PW2, PB2 = _layer(rng)
    kwargs = dict(pads=(1, 1, 1, 1), pattern=get_pattern("checkerboard"), threshold=0.0, return_computed=True)
    _, on_act = zap_conv_reference(X, W, B, PW1, PB1, PW2, PB2, predictor_input="activation", **kwargs)
    _, on_pre = zap_conv_reference(X, W, B, PW1, PB1, PW2, PB2, predictor_input="preactivation", **kwargs)
    assert (on_act != on_pre).any()
    positive_bias = np.abs(B) + 50  # every V > 0: relu(V) == V, so both inputs agree
    _, on_act = zap_conv_reference(X, W, positive_bias, PW1, PB1, PW2, PB2, predictor_input="activation", **kwargs)
    _, on_pre = zap_conv_reference(X, W, positive_bias, PW1, PB1, PW2, PB2, predictor_input="preactivation",
                                   **kwargs)
    np.testing.assert_array_equal(on_act, on_pre)
