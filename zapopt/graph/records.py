"""The analysis results other modules build on: per-layer MACs and per-Conv ZAP eligibility.

These records are a contract (calibration, predictor training and the rewrite read them);
add fields at the end if needed, never rename or drop one.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

Shape = tuple[int | str | None, ...]


@dataclass(frozen=True)
class LayerInfo:
    """One row of the per-layer table: a node that does MAC work (Conv, Gemm, MatMul, ...)."""

    name: str
    op_type: str
    input_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None
    macs: int
    share: float  # macs / total_macs of the model


@dataclass(frozen=True)
class ConvActivation:
    """One Conv and what follows it, i.e. what one ZapConv node would replace.

    ``add``/``skip_input``: the ResNet placement Conv[+BN] -> Add -> act; a predicted zero
    then skips this conv's work, and ``skip_input`` is the Add's other (residual) input.
    ``output`` is the tensor the activation produces, ``preactivation`` the one it reads
    (conv, BN or Add output). ``reason`` is "" iff ``eligible``.
    ``first_layer``: no Conv/Gemm/MatMul runs before it (it reads the network input,
    possibly through layout or normalisation ops); the optimizer skips it by default.
    """

    conv: str
    bn: str | None
    add: str | None
    skip_input: str | None
    act: str | None
    clip_max: float
    output: str | None
    conv_input: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]
    group: int
    macs: int
    eligible: bool
    reason: str
    first_layer: bool
    preactivation: str | None = None


class TensorSpec(NamedTuple):
    """A graph input or output: (name, resolved shape (str = symbolic dim), dtype)."""

    name: str
    shape: Shape | None
    dtype: str


def _json_ready(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no infinity: null = "no upper bound" for clip_max
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    return value


def _format_shape(shape: Shape | None) -> str:
    if shape is None:
        return "?"
    return "x".join("?" if d is None else str(d) for d in shape)


def _format_macs(macs: int) -> str:
    return f"{macs:,}"


@dataclass(frozen=True)
class ModelInfo:
    """Everything ``zapopt info`` reports about a model. MACs are per sample."""

    path: str
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    layers: list[LayerInfo]
    convs: list[ConvActivation]
    total_macs: int
    eligible_macs: int
    batch_size: int = 1
    notes: list[str] = field(default_factory=list)

    @property
    def eligible(self) -> list[ConvActivation]:
        return [c for c in self.convs if c.eligible]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists, an infinite clip_max becomes null)."""
        return _json_ready({
            "path": self.path,
            "opset": self.opset,
            "batch_size": self.batch_size,
            "macs_are_per_sample": True,
            "inputs": [t._asdict() for t in self.inputs],
            "outputs": [t._asdict() for t in self.outputs],
            "total_macs": self.total_macs,
            "eligible_macs": self.eligible_macs,
            "eligible_share": self.eligible_macs / self.total_macs if self.total_macs else 0.0,
            "notes": list(self.notes),
            "layers": [asdict(layer) for layer in self.layers],
            "convs": [asdict(conv) for conv in self.convs],
        })

    def format_table(self) -> str:
        """A readable report: per-layer MACs and shares, totals, then ZAP eligibility."""
        lines = [f"model: {self.path}  (opset {self.opset})"]
        for spec in self.inputs:
            lines.append(f"input:  {spec.name}  {_format_shape(spec.shape)}  {spec.dtype}")
        for spec in self.outputs:
            lines.append(f"output: {spec.name}  {_format_shape(spec.shape)}  {spec.dtype}")
        lines.extend(f"note: {note}" for note in self.notes)
        lines.append("")
        header = ("name", "op", "input", "output", "MACs", "share")
        rows = [(layer.name, layer.op_type, _format_shape(layer.input_shape),
                 _format_shape(layer.output_shape), _format_macs(layer.macs), f"{100 * layer.share:.1f}%")
                for layer in self.layers]
        rows.append(("total", "", "", "", _format_macs(self.total_macs), "100.0%" if self.total_macs else "0.0%"))
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        right = {4, 5}

        def render(row: tuple[str, ...]) -> str:
            cells = [str(c).rjust(w) if i in right else str(c).ljust(w)
                     for i, (c, w) in enumerate(zip(row, widths))]
            return "  ".join(cells).rstrip()

        lines.append(render(header))
        lines.append("  ".join("-" * w for w in widths))
        lines.extend(render(r) for r in rows[:-1])
        lines.append("  ".join("-" * w for w in widths))
        lines.append(render(rows[-1]))
        lines.append("MACs are per sample (batch size %d)." % self.batch_size)
        lines.append("")
        share = 100 * self.eligible_macs / self.total_macs if self.total_macs else 0.0
        lines.append(f"ZAP-eligible convs: {len(self.eligible)} of {len(self.convs)}, "
                     f"{_format_macs(self.eligible_macs)} MACs ({share:.1f}% of the model)")
        for conv in self.convs:
            mark = "yes" if conv.eligible else "no "
            chain = " -> ".join(n for n in (conv.conv, conv.bn, conv.add, conv.act) if n)
            flags = " [first layer]" if conv.first_layer else ""
            detail = "" if conv.eligible else f": {conv.reason}"
            lines.append(f"  {mark} {chain}{flags}{detail}")
        return "\n".join(lines)
