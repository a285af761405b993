"""A tiny pass framework over ``onnx.ModelProto`` (in the spirit of ``onnx_ir.passes``).

A pass never mutates the model it is given: :meth:`Pass.__call__` hands :meth:`Pass.run`
a private deep copy, so callers can keep the original for comparison (``zapopt
optimize`` reports both). Each pass states its preconditions in ``requires`` so a reader
knows which order a :class:`PassManager` needs.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar, Sequence

import onnx


@dataclass(frozen=True)
class PassResult:
    """The rewritten model and whether anything changed."""

    model: onnx.ModelProto
    modified: bool


class Pass(abc.ABC):
    """One graph transformation; subclasses implement :meth:`run` on a private copy."""

    name: ClassVar[str] = ""
    requires: ClassVar[str] = ""

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        if not isinstance(model, onnx.ModelProto):
            raise TypeError(f"{type(self).__name__} expects an onnx.ModelProto, got {type(model).__name__}")
        work = onnx.ModelProto()
        work.CopyFrom(model)
        return self.run(work)

    @abc.abstractmethod
    def run(self, model: onnx.ModelProto) -> PassResult:
        """Transform ``model`` (a copy this pass owns and may edit in place)."""


class PassManager(Pass):
    """Runs passes in order; ``modified`` is True if any pass changed the model."""

    name = "PassManager"
    requires = "whatever its first pass requires"

    def __init__(self, passes: Sequence[Pass]) -> None:
        passes = list(passes)
        for p in passes:
            if not isinstance(p, Pass):
                raise TypeError(f"PassManager takes Pass instances, got {type(p).__name__}")
        self.passes = passes

    def run(self, model: onnx.ModelProto) -> PassResult:
        modified = False
        for p in self.passes:
            result = p.run(model)
            model, modified = result.model, modified or result.modified
        return PassResult(model, modified)
