"""What a model's input looks like: the contract every dataset is validated against."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from zapopt.errors import ZapoptError
from zapopt.graph.loading import load_model


@dataclass(frozen=True)
class ModelInput:
    """One ONNX graph input: its name, its shape (None = dynamic dim) and its numpy dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        object.__setattr__(self, "shape", tuple(None if d is None else int(d) for d in self.shape))
        if not self.shape:
            raise ZapoptError(f"model input {self.name!r} is a scalar; zapopt feeds batches, so it needs rank >= 1")

    @property
    def rank(self) -> int:
        return len(self.shape)

    def describe(self) -> str:
        """``'input' float32 [N, 1, 28, 28]`` with dynamic dims shown as ``?`` (batch as N)."""
        dims = ["N" if i == 0 and d is None else ("?" if d is None else str(d)) for i, d in enumerate(self.shape)]
        return f"{self.name!r} {self.dtype} [{', '.join(dims)}]"


def _dims(value_info: onnx.ValueInfoProto) -> tuple[int | None, ...]:
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        raise ZapoptError(
            f"model input {value_info.name!r} has no declared shape; give it one (even with dynamic dims)"
        )
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim)


def model_input(model: onnx.ModelProto | str | Path, name: str | None = None) -> ModelInput:
    """Describe the model's data input (initializers listed as inputs are skipped)."""
    proto = load_model(model, load_external_data=False, check=False)
    initializers = {init.name for init in proto.graph.initializer}
    inputs = [vi for vi in proto.graph.input if vi.name not in initializers]
    if not inputs:
        raise ZapoptError("the model has no graph inputs to feed")
    if name is None:
        if len(inputs) > 1:
            names = ", ".join(repr(vi.name) for vi in inputs)
            raise ZapoptError(f"the model has {len(inputs)} inputs ({names}); say which one the data feeds")
        chosen = inputs[0]
    else:
        matches = [vi for vi in inputs if vi.name == name]
        if not matches:
            names = ", ".join(repr(vi.name) for vi in inputs)
            raise ZapoptError(f"the model has no input {name!r}; its inputs are {names}")
        chosen = matches[0]
    if not chosen.type.HasField("tensor_type"):
        raise ZapoptError(f"model input {chosen.name!r} is not a tensor")
    elem_type = chosen.type.tensor_type.elem_type
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception:
        raise ZapoptError(f"model input {chosen.name!r} has an element type numpy cannot hold ({elem_type})") from None
    return ModelInput(chosen.name, _dims(chosen), dtype)
