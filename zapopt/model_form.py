"""The two forms of a model zapopt writes, and ``zapopt convert`` between them.

*native*: ``ai.zapopt`` ZapConv/ZeroSkipConv nodes, run by zapopt's op library (fast, and
ZapConv thresholds are retunable). *portable*: the same layers expanded into standard ONNX
ops (any onnxruntime, no speed-up). Conversion never retrains: the portable form keeps
tags from which the native nodes are rebuilt exactly.
"""
from __future__ import annotations

import os
from typing import Literal

import onnx

from zapopt.errors import ZapoptError
from zapopt.files import check_output_path, save_model_atomically
from zapopt.graph import load_model
from zapopt.rewrite.expand import ExpandZapToOnnx
from zapopt.rewrite.rebuild import RebuildNativeOps, expansion_groups
from zapopt.runtime import has_native_nodes

Form = Literal["native", "portable"]
FORMS = ("native", "portable")


def model_form(model: onnx.ModelProto) -> str:
    """``native``, ``portable`` (zapopt's tagged expansion) or ``plain`` (neither)."""
    if has_native_nodes(model):
        return "native"
    return "portable" if expansion_groups(model) else "plain"


def as_native(model: onnx.ModelProto) -> onnx.ModelProto:
    """The native form of a model in either form (unchanged when already native or plain)."""
    return RebuildNativeOps()(model).model if model_form(model) == "portable" else model


def convert_model(model: onnx.ModelProto, to: str) -> onnx.ModelProto:
    """``model`` in form ``to``; refuses a model that is not in the other form."""
    if to not in FORMS:
        raise ZapoptError(f"unknown form {to!r}; choose one of {', '.join(FORMS)}")
    form = model_form(model)
    if form == to:
        raise ZapoptError(f"the model is already in {to} form; nothing to convert")
    if form == "plain":
        if to == "native":
            raise ZapoptError(
                "the model has no zapopt layers to turn into native ops: no ai.zapopt nodes and no portable layers "
                "tagged zapopt.rule/zapopt.origin by zapopt (use `zapopt optimize` to make one)")
        raise ZapoptError("the model has no zapopt native ops (ai.zapopt ZapConv/ZeroSkipConv); it is already "
                          "standard ONNX")
    return RebuildNativeOps()(model).model if to == "native" else ExpandZapToOnnx()(model).model


def convert(model: str | os.PathLike, output: str | os.PathLike, *, to: str) -> onnx.ModelProto:
    """Write ``model`` in form ``to`` to ``output`` (atomically; never over the input)."""
    if to not in FORMS:
        raise ZapoptError(f"unknown form {to!r}; choose one of {', '.join(FORMS)}")
    check_output_path(output, inputs=(model,), what="output model")
    converted = convert_model(load_model(model), to)
    save_model_atomically(converted, output)
    return converted
