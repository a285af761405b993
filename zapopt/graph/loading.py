"""Load an ONNX model, turning every way a file can be wrong into one ZapoptError.

The one loader of zapopt: analysis, calibration, data checks, optimize, eval and sweep all
take a path or an in-memory ``onnx.ModelProto`` through :func:`load_model`. Users hand us
arbitrary paths: missing files, directories, checkpoints of other frameworks,
truncated downloads. onnx raises a zoo of exception types (protobuf DecodeError, RuntimeError
from the C++ parser, ValidationError, ...) for these; callers should only ever see a
one-sentence ZapoptError that names the path.
"""
from __future__ import annotations

import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from zapopt.errors import ZapoptError
from zapopt.errors import first_line as _first_line
from zapopt.graph.opset import upgrade_opset

#: protobuf refuses to serialize messages above 2 GiB; such models must keep weights external.
PROTOBUF_LIMIT = 2**31 - 1


def _check_path(path: Path) -> None:
    if not path.exists():
        raise ZapoptError(f"model file not found: {path}")
    if path.is_dir():
        raise ZapoptError(f"{path} is a directory; give the path of a .onnx file")
    if not os.access(path, os.R_OK):
        raise ZapoptError(f"cannot read model file {path} (permission denied)")


def _check_external_data_files(model: onnx.ModelProto, path: Path) -> None:
    """Name the missing weight file ourselves: onnx's own message does not say which model."""
    base = path.parent
    for tensor in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = external_data_helper.ExternalDataInfo(tensor)
        location = base / info.location
        if not location.is_file():
            raise ZapoptError(
                f"model {path} keeps tensor {tensor.name!r} in external data file "
                f"{info.location!r}, which does not exist next to the model"
            )


def load_model(model: onnx.ModelProto | str | os.PathLike, *, load_external_data: bool = True,
               check: bool = True, min_opset: int | None = None) -> onnx.ModelProto:
    """Read and validate an ONNX model; raise ZapoptError (naming the path) if it is unusable.

    An ``onnx.ModelProto`` is taken as it is (and never modified). ``load_external_data=False``
    keeps weights stored in external files as references (their shapes are still known),
    which is all graph analysis needs and keeps models above protobuf's 2 GiB limit workable.
    ``check`` runs ``onnx.checker`` on a file. ``min_opset``: a model below it is converted up
    to it and checked to compute the same outputs (a copy; see ``zapopt.graph.opset``).
    """
    if isinstance(model, onnx.ModelProto):
        proto, what = model, "the given model"
    elif isinstance(model, (str, os.PathLike)):
        proto, what = _load_file(Path(model), load_external_data, check), str(model)
    else:
        raise TypeError(f"model must be an onnx.ModelProto or a path, got {type(model).__name__}")
    return proto if min_opset is None else upgrade_opset(proto, what, min_opset)


def _load_file(path: Path, load_external_data: bool, check: bool) -> onnx.ModelProto:
    _check_path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, TypeError, OSError, UnicodeDecodeError) as exc:
        raise ZapoptError(
            f"{path} is not a readable ONNX model: not ONNX, or corrupt/truncated (protobuf parsing failed: "
            f"{_first_line(exc)})"
        ) from None
    if model.ir_version <= 0 or not model.HasField("graph") or not model.graph.node:
        raise ZapoptError(f"{path} does not look like an ONNX model (no IR version or no graph nodes)")
    _check_external_data_files(model, path)
    if check:
        try:
            onnx.checker.check_model(str(path))
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError,
                DecodeError, RuntimeError, ValueError) as exc:
            raise ZapoptError(f"{path} is not a valid ONNX model: {_first_line(exc)}") from None
    if load_external_data:
        try:
            external_data_helper.load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError, RuntimeError) as exc:
            raise ZapoptError(f"cannot read the external weights of {path}: {_first_line(exc)}") from None
    return model
