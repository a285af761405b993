"""Run by tests/test_native_asan.py in a subprocess with AddressSanitizer preloaded.

    python -m tests.native_asan_check LIBRARY [CASES]

Registers the sanitizer build LIBRARY (not the installed one), runs CASES random layers of
both ops on every path the CPU has (the automatic accumulation choice, then the first
FORCED_CASES of them with each accumulation form forced: the union form is never chosen
automatically), POINTWISE_CASES layers for the pointwise path, four batches run an item per
pass, plus the bad-input cases, and exits non-zero on any mismatch; the sanitizers abort the
process on any memory or undefined-behaviour error.
"""
from __future__ import annotations

import ctypes
import os
import sys

import numpy as np
import onnxruntime as ort

from tests.native_cases import assert_case_agrees, batch_model, random_case
from tests.test_native_conformance import ACCUMULATIONS, BATCH_PASS_CHANNELS, BATCH_PASS_SIZE
from tests.test_native_errors import W, zero_skip_model
from zapopt.native import ACCUMULATION_ENV, PATH_ENV

#: Layers run again with each accumulation form forced, per path.
FORCED_CASES = 20
POINTWISE_CASES = 20
POINTWISE_ZEROS = (0.0, 0.3)


def session(library: str, model) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.register_custom_ops_library(library)
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run_cases(library: str, cases: list) -> None:
    """Run ``cases`` through the sanitizer build, 40 per session, and check each result."""
    for start in range(0, len(cases), 40):
        chunk = cases[start : start + 40]
        model, feeds, names = batch_model(chunk)
        flat = session(library, model).run([n for g in names for n in g], feeds)
        position = 0
        for case, group in zip(chunk, names):
            assert_case_agrees(case, flat[position : position + len(group)])
            position += len(group)


def main(library: str, count: int) -> int:
    lib = ctypes.CDLL(library)
    lib.zapopt_kernel_paths.restype = ctypes.c_char_p
    paths = lib.zapopt_kernel_paths().decode().split(",")
    rng = np.random.default_rng(99)
    cases = [random_case(rng, op) for _ in range(count // 2) for op in ("ZeroSkipConv", "ZapConv")]
    # The pointwise (matrix product) path: 1x1, unpadded, mostly nonzero inputs.
    cases += [random_case(rng, op, (int(rng.integers(1, 70)), int(rng.integers(1, 40)), 1), POINTWISE_ZEROS,
                          pointwise=True) for _ in range(POINTWISE_CASES // 2) for op in ("ZeroSkipConv", "ZapConv")]
    # Batches run one item per pass (their lists exceed a pass's budget).
    cases += [random_case(rng, op, channels, size=BATCH_PASS_SIZE) for channels in BATCH_PASS_CHANNELS
              for op in ("ZeroSkipConv", "ZapConv")]
    for path in paths:
        os.environ[PATH_ENV] = path
        os.environ.pop(ACCUMULATION_ENV, None)
        run_cases(library, cases)
        for form in ACCUMULATIONS:
            os.environ[ACCUMULATION_ENV] = form  # read when a session creates its kernels
            run_cases(library, cases[:FORCED_CASES])
        os.environ.pop(ACCUMULATION_ENV, None)
        bad = session(library, zero_skip_model(skip=True))
        good_x = np.ones((1, W.shape[1], 5, 5), np.float32)
        for feeds in (
            {"X": np.zeros((4, 8, 8), np.float32), "S": np.ones(1, np.float32)},
            {"X": np.zeros((1, 5, 8, 8), np.float32), "S": np.ones(1, np.float32)},
            {"X": np.zeros((0, 4, 8, 8), np.float32), "S": np.ones(1, np.float32)},
            {"X": np.zeros((1, 4, 1, 0), np.float32), "S": np.ones(1, np.float32)},
            {"X": good_x, "S": np.ones((2, 16, 5, 5), np.float32)},
            {"X": good_x, "S": np.ones((0,), np.float32)},
        ):
            try:
                bad.run(None, feeds)
            except Exception:  # onnxruntime's error types; the message is checked elsewhere
                continue
            print(f"path {path}: bad input {[v.shape for v in feeds.values()]} was accepted", file=sys.stderr)
            return 1
        print(f"path {path}: {len(cases)} layers, {FORCED_CASES} per forced accumulation form "
              f"({', '.join(ACCUMULATIONS)}) and the bad inputs ran clean")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 200))
