"""The native kernels agree with the numpy references on 1,000 random layers, on every path.

Each instruction-set path this CPU has (``zapopt.native.kernel_paths()``) is forced with
``ZAPOPT_KERNEL_PATH`` (read when a session creates its kernels) and runs the same cases,
50 layers per session to keep the suite fast.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.native_cases import Case, assert_case_agrees, batch_model, random_case
from zapopt import native

pytestmark = pytest.mark.skipif(
    not native.library_available(), reason="libzapopt_ops.so is not built (pip install -e . builds it)"
)

CASES_PER_OP = 500
LAYERS_PER_SESSION = 50
#: Layers for the dense (register-blocked) accumulation and its switch with the nonzero lists:
#: (C_in, C_out, largest kernel side): input channels spanning several list chunks (64 per
#: chunk at 64 output channels), output channels that leave partial register blocks (24 and 48
#: channels per block), input zero shares around the cut-over (85 % nonzero). Kernels stay small
#: so that C_in * kH * kW stays within the float32 tolerances of the reference comparison.
DENSE_CHANNELS = ((70, 40, 3), (130, 64, 1), (96, 64, 2), (17, 100, 3), (33, 8, 3), (100, 24, 2), (65, 48, 3))
DENSE_ZERO_SHARES = (0.0, 0.0, 0.05, 0.1, 0.15, 0.2)
DENSE_CASES_PER_OP = 30
#: Layers for the vectorized tile write-back (8 positions x 8 channels per transpose): channel
#: counts at, between and above whole 8-channel blocks, several 64-position tiles with partial
#: 8-position tails; ZapConv's pattern-only and masked phases cover tiles whose positions are
#: not consecutive (the general write-back).
WRITE_BACK_CHANNELS = ((8, 8, 1), (12, 20, 1), (3, 64, 3), (16, 100, 1), (5, 13, 2))
WRITE_BACK_CASES_PER_OP = 20
#: Layers whose packed weights reach 128 KiB, where each step prefetches the next step's weight
#: slab (sparse_conv.cc, kPrefetchMinWeightBytes) when the drawn kernel is 2x2 or larger.
PREFETCH_CHANNELS = ((128, 128, 3), (64, 256, 3))
PREFETCH_CASES_PER_OP = 10
#: Layers for the pointwise (matrix product) path: 1x1, unpadded, one group, inputs at least
#: half nonzero; odd plane sizes leave the zero-padded tail, planes above 48 positions several
#: jobs, strides the gathered planes.
POINTWISE_CHANNELS = ((17, 9, 1), (64, 64, 1), (130, 24, 1), (5, 3, 1), (40, 70, 1))
POINTWISE_ZERO_SHARES = (0.0, 0.0, 0.2, 0.4)
POINTWISE_CASES_PER_OP = 30
#: Batches whose nonzero lists (shared by all of an item's jobs, sparse_conv.cc) exceed one
#: pass's budget (kPassListBytes, 1 MiB: ~2 MB per 40x40 item here), so the kernel compacts and
#: runs them one batch item at a time.
BATCH_PASS_CHANNELS = ((32, 32, 3), (16, 40, 3))
BATCH_PASS_SIZE = (3, 40, 40)
BATCH_PASS_CASES_PER_OP = 4
#: The accumulation forms a test can force (ZAPOPT_ACCUMULATION), each on the first
#: FORCED_CASES layers (both ops, every corner is reached well before that).
ACCUMULATIONS = ("lists", "dense", "union1", "union2", "union3", "union4")
FORCED_CASES = 150


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    rng = np.random.default_rng(20261202)
    out = [random_case(rng, op) for op in ("ZeroSkipConv", "ZapConv") for _ in range(CASES_PER_OP)]
    out += [random_case(rng, op, DENSE_CHANNELS[i % len(DENSE_CHANNELS)], DENSE_ZERO_SHARES)
            for op in ("ZeroSkipConv", "ZapConv") for i in range(DENSE_CASES_PER_OP)]
    out += [random_case(rng, op, WRITE_BACK_CHANNELS[i % len(WRITE_BACK_CHANNELS)])
            for op in ("ZeroSkipConv", "ZapConv") for i in range(WRITE_BACK_CASES_PER_OP)]
    out += [random_case(rng, op, PREFETCH_CHANNELS[i % len(PREFETCH_CHANNELS)])
            for op in ("ZeroSkipConv", "ZapConv") for i in range(PREFETCH_CASES_PER_OP)]
    out += [random_case(rng, op, POINTWISE_CHANNELS[i % len(POINTWISE_CHANNELS)], POINTWISE_ZERO_SHARES,
                        pointwise=True)
            for op in ("ZeroSkipConv", "ZapConv") for i in range(POINTWISE_CASES_PER_OP)]
    out += [random_case(rng, op, BATCH_PASS_CHANNELS[i % len(BATCH_PASS_CHANNELS)], size=BATCH_PASS_SIZE)
            for op in ("ZeroSkipConv", "ZapConv") for i in range(BATCH_PASS_CASES_PER_OP)]
    order = rng.permutation(len(out))  # mix both ops in every session
    return [out[i] for i in order]


def paths() -> list[str]:
    return list(native.kernel_paths()) if native.library_available() else []


def _check_sessions(cases: list[Case], label: str, **options: object) -> None:
    for start in range(0, len(cases), LAYERS_PER_SESSION):
        chunk = cases[start : start + LAYERS_PER_SESSION]
        model, feeds, names = batch_model(chunk)
        session = native.session(model, threads=2, **options)
        flat = session.run([n for group in names for n in group], feeds)
        position = 0
        for index, (case, group) in enumerate(zip(chunk, names)):
            outputs = flat[position : position + len(group)]
            position += len(group)
            try:
                assert_case_agrees(case, outputs)
            except AssertionError as exc:
                raise AssertionError(f"{label}, case {start + index} ({case.op}, {case.attrs}): {exc}") from None


@pytest.mark.parametrize("path", paths())
def test_every_path_matches_the_reference_on_random_layers(path: str, cases: list[Case],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.PATH_ENV, path)
    monkeypatch.delenv(native.ACCUMULATION_ENV, raising=False)
    assert native.selected_path() == path
    assert len(cases) >= 1000
    _check_sessions(cases, f"path {path}")


@pytest.mark.parametrize("path", paths())
@pytest.mark.parametrize("accumulation", ACCUMULATIONS)
def test_every_accumulation_form_matches_the_reference(path: str, accumulation: str, cases: list[Case],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Each form forced on every step (the automatic choice runs some forms only on some steps)."""
    monkeypatch.setenv(native.PATH_ENV, path)
    monkeypatch.setenv(native.ACCUMULATION_ENV, accumulation)
    _check_sessions(cases[:FORCED_CASES], f"path {path}, accumulation {accumulation}")


def test_scratch_memory_works_without_onnxruntimes_memory_arena(cases: list[Case],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernels take their per-run buffers from the session's CPU allocator: its arena by
    default (every test above), the plain allocator when the session turns the arena off."""
    monkeypatch.delenv(native.PATH_ENV, raising=False)
    monkeypatch.delenv(native.ACCUMULATION_ENV, raising=False)
    _check_sessions(cases[:LAYERS_PER_SESSION * 2], "arena off", enable_cpu_mem_arena=False)


def test_a_bad_accumulation_form_is_refused_with_the_choices(cases: list[Case],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.ACCUMULATION_ENV, "union9")
    model, _, _ = batch_model(cases[:1])
    with pytest.raises(Exception, match="union9 is not one of auto, lists, dense, union1"):
        native.session(model, threads=1)


def test_the_cases_cover_what_the_kernel_must_handle(cases: list[Case]) -> None:
    """The random layers really reach the corners the conformance test claims."""
    shapes = [c.arrays["W"].shape for c in cases]
    assert {s[2] for s in shapes} == set(range(1, 8)) and {s[3] for s in shapes} == set(range(1, 8))
    assert any(c.attrs.group > 1 and c.arrays["W"].shape[1] == 1 for c in cases)  # depthwise
    assert any(c.attrs.group > 1 and c.arrays["W"].shape[1] > 1 for c in cases)
    assert any(c.attrs.dilations != (1, 1) for c in cases) and any(c.attrs.strides != (1, 1) for c in cases)
    assert any(len(set(c.attrs.pads)) > 1 for c in cases)
    assert any(c.arrays["X"].shape[0] > 1 for c in cases)
    assert sum(c.arrays["X"].shape[0] > 1 and c.arrays["X"].shape[2] * c.arrays["X"].shape[3] >= 1600
               for c in cases) >= 8  # several passes over the batch
    assert any(c.arrays["W"].shape[0] // c.attrs.group > 64 for c in cases)
    assert any(c.arrays["W"].shape[1] > 128 for c in cases)  # several list chunks per tap
    assert sum(c.arrays["W"].nbytes >= 128 << 10 and c.attrs.group == 1 for c in cases) >= 10  # slab prefetch
    pointwise = [c for c in cases if c.arrays["W"].shape[2:] == (1, 1) and c.attrs.group == 1
                 and not any(c.attrs.pads) and (c.arrays["X"] != 0).mean() >= 0.5]
    assert len(pointwise) >= 30 and any(c.attrs.strides != (1, 1) for c in pointwise)
    assert any(c.arrays["Skip"] is not None and c.arrays["Skip"].ndim == 4 and c.arrays["Skip"].shape[0] ==
               c.arrays["X"].shape[0] for c in pointwise)  # the Skip laid out like the output
    assert any(c.attrs.strides == (1, 1) and c.arrays["X"].shape[2] * c.arrays["X"].shape[3] % 16 and
               c.arrays["X"].shape[2] * c.arrays["X"].shape[3] > 48 for c in pointwise)  # several jobs, a padded tail
    assert any(float((c.arrays["X"] != 0).mean()) >= 0.9 and c.arrays["X"].shape[1] > 64 for c in cases)
    zero_shares = [float((c.arrays["X"] == 0).mean()) for c in cases]
    assert min(zero_shares) == 0.0 and max(zero_shares) == 1.0
    skips = {c.arrays["Skip"].ndim for c in cases if c.arrays["Skip"] is not None}
    assert {0, 1, 3, 4} <= skips
    zap = [c for c in cases if c.op == "ZapConv"]
    assert {c.attrs.pattern.name for c in zap} == set(__import__("zapopt.ops", fromlist=["PATTERNS"]).PATTERNS)
    thresholds = [c.attrs.threshold for c in zap]
    assert -np.inf in thresholds and np.inf in thresholds and any(np.isfinite(thresholds))
    assert {c.attrs.predictor_input for c in zap} == {"activation", "preactivation"}
    assert {c.with_computed for c in zap} == {True, False}
    zero_skip = [c for c in cases if c.op == "ZeroSkipConv"]
    assert {c.attrs.activation for c in zero_skip} == {"relu", "none"}
    assert any(c.attrs.clip_max == 6.0 for c in cases)
    # The vectorized write-back with whole and partial 8-channel and 8-position blocks, with a Skip
    # laid out like the output (its vectorized form) and broadcast (the general one).
    many = [c for c in zero_skip if c.reference.shape[2] * c.reference.shape[3] > 64]  # several tiles
    assert any(c.arrays["W"].shape[0] // c.attrs.group % 8 != 0 and c.arrays["W"].shape[0] // c.attrs.group > 8
               for c in many)
    assert any(c.arrays["Skip"] is not None and c.arrays["Skip"].ndim == 4 and c.arrays["Skip"].shape[2] > 1
               for c in many)
