"""Run by tests/test_native_asan.py in a subprocess with AddressSanitizer preloaded.

    python -m tests.native_asan_check LIBRARY [CASES]

Registers the sanitizer build LIBRARY (not the installed one), runs CASES random layers of
both ops on every path the CPU has plus the bad-input cases, and exits non-zero on any
mismatch; the sanitizers abort the process on any memory or undefined-behaviour error.
"""
from __future__ import annotations

import ctypes
import os
import sys

import numpy as np
import onnxruntime as ort

from tests.native_cases import assert_case_agrees, batch_model, random_case
from tests.test_native_errors import W, zero_skip_model


def session(library: str, model) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.register_custom_ops_library(library)
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main(library: str, count: int) -> int:
    lib = ctypes.CDLL(library)
    lib.zapopt_kernel_paths.restype = ctypes.c_char_p
    paths = lib.zapopt_kernel_paths().decode().split(",")
    rng = np.random.default_rng(99)
    cases = [random_case(rng, op) for _ in range(count // 2) for op in ("ZeroSkipConv", "ZapConv")]
    for path in paths:
        os.environ["ZAPOPT_KERNEL_PATH"] = path
        for start in range(0, len(cases), 40):
            chunk = cases[start : start + 40]
            model, feeds, names = batch_model(chunk)
            flat = session(library, model).run([n for g in names for n in g], feeds)
            position = 0
            for case, group in zip(chunk, names):
                assert_case_agrees(case, flat[position : position + len(group)])
                position += len(group)
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
        print(f"path {path}: {len(cases)} layers and the bad inputs ran clean")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 200))
