"""Bring a model below the opset zapopt rewrites at up to it, and prove the result equal.

Older exporters and converters write opsets 7-10 (OpenNSFW on PyPI is opset 9). The
portable ZapConv expansion needs opset 11, so such a model is converted first with
``onnx.version_converter`` and then run, original and converted, on the same random input
in onnxruntime: the converted model is used only if every output matches. Anything that
cannot be converted or does not match is refused up front, before any long work.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from zapopt.errors import ZapoptError
from zapopt.errors import first_line as _first_line
from zapopt.notices import warn

#: The opset the ZapConv rewrite and its portable expansion need (Clip bounds as inputs).
MIN_REWRITE_OPSET = 11
#: Largest relative difference (per output, in the L2 norm) a conversion may introduce.
MAX_CONVERSION_ERROR = 1e-5


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default ONNX domain the model imports (0 when it imports none)."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0


def _random_feeds(model: onnx.ModelProto, what: str) -> dict[str, np.ndarray]:
    """One random sample per data input; a dynamic batch dim is fed 1."""
    rng = np.random.default_rng(0)
    initializers = {t.name for t in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim]
        if any(d is None for d in dims[1:]):
            raise ZapoptError(f"{what} uses opset {default_opset(model)} and must be converted to opset "
                              f"{MIN_REWRITE_OPSET}, but its input {value.name!r} has dynamic dims beyond the "
                              "batch, so the conversion cannot be checked; export it with a fixed input size "
                              f"or at opset >= {MIN_REWRITE_OPSET}")
        shape = [1 if d is None else d for d in dims]
        dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[value.name] = rng.integers(0, 8, size=shape).astype(dtype)
    return feeds


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], which: str, what: str) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return session.run(None, feeds)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ZapoptError(f"cannot check the opset conversion of {what}: onnxruntime fails on the {which} "
                          f"model ({_first_line(exc)})") from None


def upgrade_opset(model: onnx.ModelProto, what: str, target: int = MIN_REWRITE_OPSET) -> onnx.ModelProto:
    """``model`` itself when its opset is at least ``target``, else a converted copy whose
    outputs were checked against the original's; ZapoptError (with the reason) otherwise."""
    opset = default_opset(model)
    if opset >= target:
        return model
    if opset == 0:
        raise ZapoptError(f"{what} imports no default ONNX opset; zapopt rewrites standard ONNX models")
    try:
        converted = onnx.version_converter.convert_version(model, target)
        onnx.checker.check_model(converted)
    except Exception as exc:  # the converter raises RuntimeError/ValidationError/... per adapter
        raise ZapoptError(f"{what} uses opset {opset}; zapopt needs opset >= {target} and onnx's version "
                          f"converter cannot convert it ({_first_line(exc)}); re-export it at opset "
                          f">= {target}") from None
    feeds = _random_feeds(model, what)
    want = _run(model, feeds, "original", what)
    got = _run(converted, feeds, "converted", what)
    names = [o.name for o in model.graph.output]
    for name, a, b in zip(names, want, got):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            raise ZapoptError(f"{what}: converting opset {opset} to {target} changes the shape of output "
                              f"{name!r} from {list(a.shape)} to {list(b.shape)}; re-export it at opset >= {target}")
        if np.issubdtype(a.dtype, np.floating):
            scale = float(np.linalg.norm(a.astype(np.float64)))
            error = float(np.linalg.norm((a - b).astype(np.float64))) / (scale or 1.0)
        else:
            error = 0.0 if np.array_equal(a, b) else 1.0
        if not error <= MAX_CONVERSION_ERROR:
            raise ZapoptError(f"{what}: converting opset {opset} to {target} changes output {name!r} "
                              f"(relative difference {error:.2g} on a random input); re-export it at opset "
                              f">= {target}")
    warn(f"{what} uses ONNX opset {opset}; converted it to opset {target}, which the rewrite needs (outputs "
         f"checked equal on a random input), so the optimized model is written at opset {target}")
    return converted
