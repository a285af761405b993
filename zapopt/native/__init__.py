"""The native ``ai.zapopt`` op library (``libzapopt_ops.so``) and sessions that use it.

The library implements ``ZeroSkipConv`` and ``ZapConv`` for onnxruntime's CPU execution
provider; ``pip install`` builds it (``setup.py`` runs CMake on ``zapopt/native``). A model
zapopt writes runs in a plain onnxruntime session after
``options.register_custom_ops_library(zapopt.get_library_path())``; :func:`session` does that.
"""
from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path
from typing import Any

from zapopt.errors import ZapoptError

LIBRARY_NAME = "libzapopt_ops.so"
#: Environment variable that forces an instruction-set path: avx512, avx2 or portable.
PATH_ENV = "ZAPOPT_KERNEL_PATH"
#: Forces one accumulation form on every step (lists, dense, union1-4; default auto), for tests
#: and measurements; read when a session creates its kernels.
ACCUMULATION_ENV = "ZAPOPT_ACCUMULATION"
_BUILD_HINT = (
    "build it with `pip install -e .` (or `bash scripts/install.sh`) from the zapopt checkout; "
    "that needs cmake, a C++17 compiler and onnxruntime's headers (fetched automatically)"
)


def get_library_path() -> str:
    """Absolute path of ``libzapopt_ops.so``, for ``SessionOptions.register_custom_ops_library``."""
    path = Path(__file__).resolve().parent / LIBRARY_NAME
    if not path.is_file():
        raise ZapoptError(f"the native zapopt op library is not built ({path} is missing): {_BUILD_HINT}")
    return str(path)


def library_available() -> bool:
    """Whether ``libzapopt_ops.so`` was built (tests skip, loaders fall back to the portable form)."""
    return (Path(__file__).resolve().parent / LIBRARY_NAME).is_file()


@functools.lru_cache(maxsize=None)
def _library(path: str) -> ctypes.CDLL:
    library = ctypes.CDLL(path)
    for name in ("zapopt_kernel_paths", "zapopt_selected_path"):
        getattr(library, name).restype = ctypes.c_char_p
    return library


def kernel_paths() -> tuple[str, ...]:
    """Instruction-set paths this CPU can run, best first (e.g. ``("avx2", "portable")``)."""
    return tuple(_library(get_library_path()).zapopt_kernel_paths().decode().split(","))


def selected_path() -> str:
    """The path a session created now would use (honours ``ZAPOPT_KERNEL_PATH``)."""
    chosen = _library(get_library_path()).zapopt_selected_path().decode()
    if not chosen:
        raise ZapoptError(
            f"{PATH_ENV}={os.environ.get(PATH_ENV)!r} is not a path this CPU can run; "
            f"choose one of {', '.join(kernel_paths())} or unset it"
        )
    return chosen


def session_options(*, threads: int | None = None, optimization: Any = None, register_library: bool = True,
                    **options: Any):
    """``onnxruntime.SessionOptions`` with the zapopt op library registered (the one place
    that registers it; ``register_library=False`` for a model without native ops).

    ``options`` are set as attributes of the SessionOptions (e.g. ``inter_op_num_threads=1``).
    """
    import onnxruntime as ort

    session_opts = ort.SessionOptions()
    if register_library:
        session_opts.register_custom_ops_library(get_library_path())
    session_opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimization is None else optimization
    )
    if threads is not None:
        session_opts.intra_op_num_threads = threads
    for name, value in options.items():
        if not hasattr(session_opts, name):
            raise ZapoptError(f"onnxruntime.SessionOptions has no option {name!r}")
        setattr(session_opts, name, value)
    return session_opts


def session(path_or_model: Any, *, threads: int | None = None, optimization: Any = None, **options: Any):
    """An ``onnxruntime.InferenceSession`` (CPU) that runs ZapConv/ZeroSkipConv natively.

    ``path_or_model`` is a path, serialized bytes or an ``onnx.ModelProto``; ``threads`` sets
    the intra-op threads, ``optimization`` the graph optimization level (default ORT_ENABLE_ALL),
    and any other keyword is set on the ``SessionOptions``.
    """
    if hasattr(path_or_model, "SerializeToString"):
        source: Any = path_or_model.SerializeToString()
    elif isinstance(path_or_model, (bytes, bytearray)):
        source = bytes(path_or_model)
    else:
        source = os.fspath(path_or_model)
        if not Path(source).is_file():
            raise ZapoptError(f"model file {source} does not exist")
    return open_session(source, session_options(threads=threads, optimization=optimization, **options))


def open_session(source: Any, options: Any):
    """A CPU ``onnxruntime.InferenceSession`` on ``source`` (a path or serialized bytes), its
    load errors as one-line zapopt errors."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ZapoptError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0]}") from None
