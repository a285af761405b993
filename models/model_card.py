"""Measurements and files shared by the model scripts: MACs, ReLU sparsity, ONNX export, cards.

Why here and not in ``zapopt``: these are facts about the reference models we ship (what
the cards say), measured in PyTorch; zapopt's own ONNX tooling is cross-checked against
them, so the two must not share code.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

ONNX_OPSET = 17


@dataclass(frozen=True)
class LayerMacs:
    """Multiply-accumulates of one Conv2d/Linear layer for one input image."""

    name: str
    kind: str
    macs: int
    params: int


def count_macs(model: nn.Module, sample: torch.Tensor) -> list[LayerMacs]:
    """Per-layer MACs for ONE image: ``C_out*H_out*W_out*(C_in/groups)*kH*kW`` per conv,
    ``in*out`` per Linear (bias adds and everything else not counted)."""
    if sample.shape[0] != 1:
        raise ValueError(f"count_macs wants a batch of one image, got shape {tuple(sample.shape)}")
    rows: list[LayerMacs] = []

    def hook(module: nn.Module, _inputs: Any, output: torch.Tensor, name: str) -> None:
        params = sum(p.numel() for p in module.parameters(recurse=False))
        if isinstance(module, nn.Conv2d):
            _, c_out, h_out, w_out = output.shape
            kh, kw = module.kernel_size
            macs = c_out * h_out * w_out * (module.in_channels // module.groups) * kh * kw
            rows.append(LayerMacs(name, "Conv", int(macs), params))
        elif isinstance(module, nn.Linear):
            rows.append(LayerMacs(name, "Linear", module.in_features * module.out_features, params))

    handles = [m.register_forward_hook(lambda mod, i, o, n=n: hook(mod, i, o, n))
               for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(sample)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return rows


def relu_sparsity(model: nn.Module, batches: Iterable[torch.Tensor],
                  activations: tuple[type[nn.Module], ...] = (nn.ReLU,)) -> dict[str, float]:
    """Fraction of exact zeros in every 4-D (conv feature map) activation output.

    Keyed by module name in forward order. This is the ofm sparsity ZAP can exploit.
    FC-layer ReLUs (2-D outputs) are left out on purpose.
    """
    zeros: dict[str, int] = {}
    totals: dict[str, int] = {}

    def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor, name: str) -> None:
        if output.dim() != 4:
            return
        zeros[name] = zeros.get(name, 0) + int((output == 0).sum())
        totals[name] = totals.get(name, 0) + output.numel()

    handles = [m.register_forward_hook(lambda mod, i, o, n=n: hook(mod, i, o, n))
               for n, m in model.named_modules() if isinstance(m, activations)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {name: zeros[name] / totals[name] for name in totals}


def _atomic_target(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would survive os.replace
    return Path(tmp)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file via a temp file in the same directory + os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _atomic_target(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def export_onnx(model: nn.Module, sample: torch.Tensor, path: Path) -> None:
    """Export with the TorchScript exporter (plain op graph), input ``input`` with a dynamic
    batch, output ``logits``; then run the ONNX checker and strict shape inference."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _atomic_target(path)
    model.eval()
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter announces its own deprecation on every call.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model, (sample,), str(tmp), dynamo=False, opset_version=ONNX_OPSET,
                input_names=["input"], output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                do_constant_folding=True,
            )
        proto = onnx.load(str(tmp))
        if _inline_identity_initializers(proto):
            onnx.save(proto, str(tmp))
        onnx.checker.check_model(proto, full_check=True)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _inline_identity_initializers(proto: Any) -> int:
    """Replace ``Identity(initializer)`` nodes by a copy of the initializer.

    The exporter deduplicates equal initializers (e.g. all-zero biases) and reconnects the
    copies through Identity nodes; consumers of the graph expect Conv to read its weights
    from initializers directly. Returns the number of nodes removed.
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    keep, removed = [], 0
    for node in proto.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy = numpy_helper.from_array(numpy_helper.to_array(inits[node.input[0]]), node.output[0])
            proto.graph.initializer.append(copy)
            removed += 1
        else:
            keep.append(node)
    if removed:
        del proto.graph.node[:]
        proto.graph.node.extend(keep)
    return removed


def onnx_session(path: Path) -> Any:
    """A single-threaded CPU onnxruntime session (the machine is shared)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_vs_torch_max_abs_diff(model: nn.Module, path: Path, batch: torch.Tensor) -> float:
    """Largest absolute logit difference between the ONNX file and the torch model."""
    model.eval()
    with torch.no_grad():
        expected = model(batch).numpy()
    got = onnx_session(path).run(["logits"], {"input": batch.numpy()})[0]
    return float(np.abs(got - expected).max())


def onnx_op_types(path: Path) -> list[str]:
    """Sorted distinct op types of an ONNX graph (to show it is plain)."""
    import onnx

    return sorted({node.op_type for node in onnx.load(str(path)).graph.node})


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
