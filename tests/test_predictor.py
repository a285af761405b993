"""ZAP predictor: learning, reproducibility, BN folding, agreement with the op reference."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from zapopt.errors import ZapoptError
from zapopt.ops.patterns import Pattern, get_pattern
from zapopt.ops.reference import zap_conv_reference
from zapopt.predictor import FoldedPredictor, depthwise_conv3x3
from zapopt.predictor.inputs import PredictorInput
from zapopt.predictor.model import ZapPredictor
from zapopt.predictor.train import scaled_epochs, train_predictor


def _block_ofm(seed: int = 0, n: int = 64, c: int = 8, side: int = 16, block: int = 4) -> np.ndarray:
    """Positive values in random 4x4 blocks, zero elsewhere: trivially predictable."""
    rng = np.random.default_rng(seed)
    on = rng.random((n, c, side // block, side // block)) > 0.5
    values = rng.random((n, c, side, side)) + 0.5
    return (np.kron(on, np.ones((block, block))) * values).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the shared CI machine has 2 cores, and oversubscription is 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def block_ofm() -> np.ndarray:
    return _block_ofm()


@pytest.fixture(scope="module")
def trained(block_ofm: np.ndarray):
    return train_predictor(block_ofm, get_pattern("checkerboard"), epochs=20, batch_size=8, seed=0,
                           progress=False)


def test_learns_block_zeros(block_ofm: np.ndarray, trained) -> None:
    held_out = _block_ofm(seed=1, n=16)
    t = ~trained.mask
    predicted_nonzero = (trained.scores(held_out) > 0.5)[:, :, t]
    accuracy = float(np.mean(predicted_nonzero == (held_out > 0)[:, :, t]))
    assert accuracy > 0.95
    assert trained.epoch_losses[-1] < trained.epoch_losses[0]
    assert trained.images == 64 and trained.epochs == 20 and trained.seconds > 0


def test_seeded_and_reproducible(block_ofm: np.ndarray) -> None:
    rng_state = torch.get_rng_state()
    kwargs = dict(epochs=2, batch_size=16, progress=False)
    first = train_predictor(block_ofm, get_pattern("checkerboard"), seed=3, **kwargs)
    second = train_predictor(block_ofm, get_pattern("checkerboard"), seed=3, **kwargs)
    other = train_predictor(block_ofm, get_pattern("checkerboard"), seed=4, **kwargs)
    for a, b in zip(first.folded, second.folded):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.folded.pw1, other.folded.pw1)
    assert torch.equal(torch.get_rng_state(), rng_state)  # global RNG untouched


def test_memmap_input_matches_array(block_ofm: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "ofm.npy"
    np.save(path, block_ofm)
    mapped = np.load(path, mmap_mode="r")
    kwargs = dict(epochs=1, batch_size=16, seed=0, progress=False)
    a = train_predictor(mapped, get_pattern("rows-50"), **kwargs)
    b = train_predictor(block_ofm, get_pattern("rows-50"), **kwargs)
    for x, y in zip(a.folded, b.folded):
        np.testing.assert_array_equal(x, y)


def test_fold_matches_torch_eval() -> None:
    torch.manual_seed(0)
    model = ZapPredictor(6)
    for bn in (model.bn1, model.bn2):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.2, 3)
        bn.weight.data.uniform_(0.5, 2)
        bn.bias.data.uniform_(-1, 1)
    model.eval()
    partial = torch.rand(3, 6, 9, 7) * (torch.rand(3, 6, 9, 7) > 0.5)
    with torch.no_grad():
        expected = model(partial).numpy()
    folded = model.fold()
    pw1, pb1, pw2, pb2 = folded
    assert pw1.dtype == np.float32 and pw1.shape == (6, 1, 3, 3) and pb2.shape == (6,)
    np.testing.assert_allclose(folded.scores(partial.numpy()), expected, rtol=1e-5, atol=1e-5)


def test_decisions_equal_op_reference(block_ofm: np.ndarray, trained) -> None:
    """With a 1x1 identity conv the op's Full is the ofm itself; Computed must match exactly."""
    ofm = block_ofm[:6]
    channels = ofm.shape[1]
    identity = np.eye(channels, dtype=np.float32)[:, :, None, None]
    pattern = get_pattern("checkerboard")
    for tau in (-np.inf, 0.0, 0.1, 0.3, 0.5):
        _, computed = zap_conv_reference(
            ofm, identity, None, *trained.folded, pattern=pattern, threshold=float(tau),
            return_computed=True,
        )
        np.testing.assert_array_equal(trained.computed(ofm, float(tau)), computed)


def test_depthwise_conv_is_cross_correlation() -> None:
    x = np.zeros((1, 1, 3, 3), np.float32)
    x[0, 0, 1, 1] = 1.0
    weight = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    out = depthwise_conv3x3(x, weight, np.array([0.5], np.float32))
    # A unit impulse yields the flipped kernel under cross-correlation.
    np.testing.assert_array_equal(out[0, 0], weight[0, 0, ::-1, ::-1] + 0.5)


def test_rejects_bad_inputs(block_ofm: np.ndarray) -> None:
    pattern = get_pattern("checkerboard")
    with pytest.raises(ZapoptError, match=r"\[N, C, H, W\]"):
        train_predictor(block_ofm[0], pattern)
    with pytest.raises(ZapoptError, match="epochs"):
        train_predictor(block_ofm, pattern, epochs=0)
    with pytest.raises(ZapoptError, match="nothing to predict"):
        train_predictor(block_ofm, Pattern("all", ((1,),)))
    with pytest.raises(TypeError, match="mask"):
        train_predictor(block_ofm, object())
    bad = block_ofm[:4].copy()
    bad[1, 0, 0, 0] = np.inf
    with pytest.raises(ZapoptError, match="NaN or Inf"):
        train_predictor(bad, pattern, epochs=1, progress=False)
    with pytest.raises(ZapoptError, match="shape"):
        pw1, pb1, pw2, pb2 = ZapPredictor(3).fold()
        FoldedPredictor(pw1[:2], pb1, pw2, pb2)
    with pytest.raises(ZapoptError, match="positive channel"):
        ZapPredictor(0)


def _block_preactivation(seed: int = 0, n: int = 64) -> np.ndarray:
    """Pre-activations with a blocky sign: the block ofm where it is positive, random negatives elsewhere."""
    ofm = _block_ofm(seed, n)
    rng = np.random.default_rng(seed + 100)
    return np.where(ofm > 0, ofm, -(rng.random(ofm.shape) + 0.5)).astype(np.float32)


def test_predictor_input_recovers_the_ofm() -> None:
    v = np.array([-2.0, -0.0, 0.5, 3.0, 9.0], dtype=np.float32)
    np.testing.assert_array_equal(PredictorInput().ofm(v), v)
    np.testing.assert_array_equal(PredictorInput("preactivation").ofm(v), [0, 0, 0.5, 3, 9])
    np.testing.assert_array_equal(PredictorInput("preactivation", 6.0).ofm(v), [0, 0, 0.5, 3, 6])
    with pytest.raises(ZapoptError, match="preactivation"):
        PredictorInput("relu")
    with pytest.raises(ZapoptError, match="clip_max"):
        PredictorInput("preactivation", 0.0)


def test_preactivation_predictor_trains_on_v_and_decides_like_the_op() -> None:
    """Trained on V, its targets come from relu(V); its decisions equal the op's with
    predictor_input="preactivation" (identity 1x1 conv: the op's V is the stored array)."""
    v = _block_preactivation()
    source = PredictorInput("preactivation")
    trained_v = train_predictor(v, get_pattern("checkerboard"), epochs=10, batch_size=8, seed=0,
                                progress=False, predictor_input=source)
    assert trained_v.predictor_input == source
    held_out = _block_preactivation(seed=1, n=16)
    t = ~trained_v.mask
    accuracy = float(np.mean((trained_v.scores(held_out) > 0.5)[:, :, t] == (held_out > 0)[:, :, t]))
    assert accuracy > 0.95
    identity = np.eye(v.shape[1], dtype=np.float32)[:, :, None, None]
    for tau in (-np.inf, 0.0, 0.2, 0.5):
        _, computed = zap_conv_reference(
            held_out[:4], identity, None, *trained_v.folded, pattern=get_pattern("checkerboard"),
            threshold=float(tau), predictor_input="preactivation", return_computed=True,
        )
        np.testing.assert_array_equal(trained_v.computed(held_out[:4], float(tau)), computed)


def test_preactivation_training_differs_from_training_on_its_ofm() -> None:
    """The same layer trained on V or on relu(V) gives different predictors (the input matters)."""
    v = _block_preactivation(n=32)
    kwargs = dict(epochs=1, batch_size=8, seed=0, progress=False)
    on_v = train_predictor(v, get_pattern("checkerboard"), predictor_input=PredictorInput("preactivation"), **kwargs)
    on_ofm = train_predictor(np.maximum(v, 0), get_pattern("checkerboard"), **kwargs)
    assert not np.array_equal(on_v.folded.pw1, on_ofm.folded.pw1)
    with pytest.raises(TypeError, match="PredictorInput"):
        train_predictor(v, get_pattern("checkerboard"), predictor_input="preactivation",  # type: ignore[arg-type]
                        **kwargs)


def test_magnitude_weight_changes_training_and_is_validated(block_ofm: np.ndarray) -> None:
    """Weighted by activation, the loss is another function: other weights, recorded."""
    kwargs = dict(epochs=1, batch_size=16, seed=0, progress=False)
    plain = train_predictor(block_ofm, get_pattern("checkerboard"), **kwargs)
    weighted = train_predictor(block_ofm, get_pattern("checkerboard"), magnitude_weight=6.0, **kwargs)
    assert plain.magnitude_weight == 0.0 and weighted.magnitude_weight == 6.0
    assert not np.array_equal(plain.folded.pw1, weighted.folded.pw1)
    # Weighting positives raises the scores (the optimum moves towards "nonzero").
    t = ~plain.mask
    assert weighted.scores(block_ofm[:8])[:, :, t].mean() > plain.scores(block_ofm[:8])[:, :, t].mean()
    for bad in (-1.0, float("inf"), float("nan"), True):
        with pytest.raises(ZapoptError, match="magnitude_weight"):
            train_predictor(block_ofm, get_pattern("checkerboard"), magnitude_weight=bad, **kwargs)


def test_scaled_epochs_gives_small_maps_more_passes() -> None:
    largest = 16 * 32 * 32
    assert scaled_epochs(3, largest, largest) == 3
    assert scaled_epochs(3, largest // 4, largest) == 12
    assert scaled_epochs(3, 128 * 2 * 2, largest) == 24  # 32x the activations, capped at 8x
    assert scaled_epochs(3, 128 * 2 * 2, largest, max_scale=1) == 3
    assert scaled_epochs(2, largest * 2, largest) == 2  # never fewer than asked
    for bad in ({"epochs": 0}, {"activations": -1}, {"max_scale": 0}, {"largest": True}):
        with pytest.raises(ZapoptError, match="positive integer"):
            scaled_epochs(**{"epochs": 3, "activations": 10, "largest": 10, **bad})
