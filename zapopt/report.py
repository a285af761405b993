"""The per-layer optimize report: one format, produced here, read by every command.

JSON (``to_dict``) for scripts, a fixed-width table (``format_table``) for people, and
PNG curves (``plot_*``) where a curve says more than a table.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from zapopt.curves import LayerCurve, json_float

if TYPE_CHECKING:
    from zapopt.agreement import Agreement


def pct(value: float | None, digits: int = 1) -> str:
    """``0.1234`` -> ``'12.3%'``; None -> ``'-'``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.{digits}f}%"


def format_rows(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A fixed-width table; the first column is left-aligned, the others right-aligned."""
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def render(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([render(cells[0]), "  ".join("-" * w for w in widths), *map(render, cells[1:])])


@dataclass(frozen=True)
class LayerReport:
    """One eligible layer's outcome. ``threshold`` is None when the layer was not replaced."""

    name: str
    status: str  # "zap" or "skipped"
    reason: str
    macs: int
    ofm_sparsity: float | None = None
    threshold: float | None = None
    predicted_zero: float | None = None  # share of predicted positions T predicted zero
    false_zero: float | None = None  # share of T: nonzeros wrongly predicted zero
    false_nonzero: float | None = None  # share of T: zeros wrongly predicted nonzero
    error: float | None = None  # activation mass lost
    macs_after: float | None = None
    oracle_macs_after: float | None = None
    tile_shares: dict[str, float] = field(default_factory=dict)
    train_seconds: float | None = None
    predictor_macs: float | None = None  # what this layer's predictor costs per image
    train_epochs: int | None = None  # passes over the calibration images (more on small maps)
    pattern: str | None = None  # the layer's pattern (chosen per layer with --pattern auto or a list)

    @property
    def savings(self) -> float | None:
        return None if self.macs_after is None else 1.0 - self.macs_after / self.macs

    @property
    def oracle_saved_macs_with_predictor(self) -> float:
        """MACs a perfect predictor that still costs its 18 MACs per activation would save
        here (0 where it cannot pay for itself)."""
        if self.oracle_macs_after is None:
            return 0.0
        return max(0.0, self.macs - self.oracle_macs_after - (self.predictor_macs or 0.0))

    @property
    def oracle_savings(self) -> float | None:
        return None if self.oracle_macs_after is None else 1.0 - self.oracle_macs_after / self.macs

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "status": self.status, "reason": self.reason, "macs": self.macs,
            "ofm_sparsity": self.ofm_sparsity,
            "threshold": None if self.threshold is None else json_float(self.threshold),
            "predicted_zero": self.predicted_zero, "false_zero": self.false_zero,
            "false_nonzero": self.false_nonzero, "error": self.error,
            # a layer left as it was costs its full MACs and saves nothing
            "macs_after": self.macs if self.macs_after is None else self.macs_after,
            "savings": 0.0 if self.savings is None else self.savings,
            "oracle_macs_after": self.oracle_macs_after, "oracle_savings": self.oracle_savings,
            "predictor_macs": self.predictor_macs, "tile_shares": dict(self.tile_shares),
            "train_seconds": self.train_seconds, "train_epochs": self.train_epochs, "pattern": self.pattern,
        }
        return out


def layer_report_from_curve(curve: LayerCurve, threshold: float, *, ofm_sparsity: float,
                            train_seconds: float | None, train_epochs: int | None = None, status: str = "zap",
                            reason: str = "", pattern: str | None = None) -> LayerReport:
    """Read a layer's numbers at ``threshold`` off its measured curve."""
    i = curve.index_of(threshold)
    if i is None:
        raise ValueError(f"threshold {threshold} is not on the curve of {curve.name!r}")
    return LayerReport(
        name=curve.name, status=status, reason=reason, macs=int(curve.macs), ofm_sparsity=ofm_sparsity,
        threshold=float(threshold), predicted_zero=float(curve.predicted_zero[i]),
        false_zero=float(curve.false_zero[i]), false_nonzero=float(curve.false_nonzero[i]),
        error=float(curve.error[i]), macs_after=float(curve.macs_after[i]),
        oracle_macs_after=float(curve.oracle_macs_after),
        tile_shares={k: float(v[i]) for k, v in curve.tile_shares.items()},
        train_seconds=train_seconds, predictor_macs=float(curve.predictor_macs), train_epochs=train_epochs,
        pattern=pattern,
    )


@dataclass(frozen=True)
class OptimizeReport:
    """What ``zapopt optimize`` did, layer by layer, with whole-model totals (per image)."""

    model: str
    output: str | None
    pattern: str
    selection: str  # how thresholds were chosen, e.g. "uniform 0.1"
    calibration_images: int
    curve_images: int
    total_macs: int
    layers: list[LayerReport]
    skipped: list[tuple[str, str]]  # convs not considered at all, with the reason
    search: list[dict[str, Any]] = field(default_factory=list)  # accuracy-target evaluations
    measured_drop: float | None = None
    drop_standard_error: float | None = None  # of measured_drop, points
    seconds: dict[str, float] = field(default_factory=dict)
    predictor_input: str = "activation"
    magnitude_weight: float = 0.0
    sensitivities: list[dict[str, Any]] = field(default_factory=list)  # --max-drop's per-layer probes
    agreement: Agreement | None = None  # with the original, on the held-out calibration images
    warnings: list[str] = field(default_factory=list)  # what the user was warned about, in order

    @property
    def zap_layers(self) -> list[LayerReport]:
        return [layer for layer in self.layers if layer.status == "zap"]

    @property
    def macs_after(self) -> float:
        return self.total_macs - sum(l.macs - l.macs_after for l in self.zap_layers)  # noqa: E741

    @property
    def savings(self) -> float:
        return 1.0 - self.macs_after / self.total_macs if self.total_macs else 0.0

    @property
    def oracle_savings(self) -> float:
        """Whole-model savings a perfect, free predictor would reach on the same layers."""
        if not self.total_macs:
            return 0.0
        saved = sum(l.macs - l.oracle_macs_after for l in self.layers if l.oracle_macs_after is not None)  # noqa: E741
        return saved / self.total_macs

    @property
    def oracle_savings_with_predictor(self) -> float:
        """The same for a perfect predictor at its real cost (18 MACs per activation), put
        only where it pays: the most any ZAP predictor with this pattern can save."""
        if not self.total_macs:
            return 0.0
        return sum(l.oracle_saved_macs_with_predictor for l in self.layers) / self.total_macs  # noqa: E741

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "output": self.output, "pattern": self.pattern,
            "predictor_input": self.predictor_input, "magnitude_weight": self.magnitude_weight,
            "selection": self.selection, "calibration_images": self.calibration_images,
            "curve_images": self.curve_images, "total_macs": self.total_macs,
            # a layer left as it was costs its full MACs and saves nothing
            "macs_after": self.macs if self.macs_after is None else self.macs_after,
            "savings": 0.0 if self.savings is None else self.savings,
            "oracle_savings": self.oracle_savings,
            "oracle_savings_with_predictor": self.oracle_savings_with_predictor,
            "measured_drop_pct": self.measured_drop,
            "measured_drop_standard_error_pct": self.drop_standard_error,
            "layers": [layer.to_dict() for layer in self.layers],
            "skipped": [{"name": n, "reason": r} for n, r in self.skipped],
            "search": self.search, "sensitivities": self.sensitivities, "seconds": self.seconds,
            "held_out_agreement": None if self.agreement is None else self.agreement.to_dict(),
            "warnings": list(self.warnings),
        }

    def format_table(self) -> str:
        lines = [f"model: {self.model}" + (f"  ->  {self.output}" if self.output else ""),
                 f"pattern: {self.pattern}   predictor: {self.predictor_input} input, "
                 f"loss magnitude weight {self.magnitude_weight:g}   "
                 f"thresholds: {self.selection}   "
                 f"calibration: {self.calibration_images} images (curves on {self.curve_images} held out)"]
        tiles = list(dict.fromkeys(k for layer in self.layers for k in layer.tile_shares))
        mixed = len({layer.pattern for layer in self.layers if layer.status == "zap"}) > 1

        def label(layer: LayerReport) -> str:
            return f"{layer.name} [{layer.pattern}]" if mixed else layer.name

        header = ("layer", "MACs", "sparsity", "tau", "pred.zero", "false0", "false!0", "error",
                  "MACs after", "saved", "oracle", *[f"tile{k}" for k in tiles])
        rows = []
        for layer in self.layers:
            if layer.status != "zap":
                rows.append((layer.name, f"{layer.macs:,}", pct(layer.ofm_sparsity), "-", "-", "-", "-", "-",
                             f"{layer.macs:,}", "0.0%", pct(layer.oracle_savings), *["-"] * len(tiles)))
                continue
            rows.append((label(layer), f"{layer.macs:,}", pct(layer.ofm_sparsity), f"{layer.threshold:.2f}",
                         pct(layer.predicted_zero), pct(layer.false_zero, 2), pct(layer.false_nonzero),
                         pct(layer.error, 2), f"{layer.macs_after:,.0f}", pct(layer.savings),
                         pct(layer.oracle_savings), *[pct(layer.tile_shares.get(k)) for k in tiles]))
        lines += ["", format_rows(header, rows), ""]
        lines.append(f"whole model: {self.total_macs:,} -> {self.macs_after:,.0f} MACs per image "
                     f"({pct(self.savings)} fewer; a perfect predictor on all {len(self.layers)} trained layers: "
                     f"{pct(self.oracle_savings)} if free, {pct(self.oracle_savings_with_predictor)} at its "
                     f"real cost)")
        if self.measured_drop is not None:
            noise = ("" if self.drop_standard_error is None else
                     f" (standard error {self.drop_standard_error:.2f}; on other data expect about "
                     f"{self.measured_drop:.2f} +- {2 * self.drop_standard_error:.2f})")
            if self.drop_standard_error == 0:
                noise = (" (standard error 0.00 only because no prediction changed on the --eval images; that "
                         "does not bound the drop on other data)")
            lines.append(f"measured accuracy drop at the chosen thresholds: {self.measured_drop:.2f} points{noise}")
        if self.sensitivities:
            effects = ", ".join(f"{s['name']} {1e4 * s['divergence_at_1pct_error']:.2g}" for s in self.sensitivities
                                if s["divergence_at_1pct_error"] is not None)
            lines.append("each layer's effect on the output, measured with it alone and budgeted by --max-drop "
                         f"(KL divergence in 1e-4 nats at 1% of its activation mass lost): {effects}")
        not_zap = [(l.name, l.reason) for l in self.layers if l.status != "zap"] + list(self.skipped)  # noqa: E741
        if not_zap:
            lines += ["", "not rewritten:"] + [f"  {name}: {reason}" for name, reason in not_zap]
        lines.append("")
        lines.append("columns: sparsity = zeros in the layer's output; pred.zero/false0/false!0 are shares of the "
                     "predicted positions; error = activation mass lost; tileAxB = share of the skipped work in "
                     "whole skippable tiles of A channels x B positions")
        if self.warnings:
            lines += ["", "warnings:"] + [f"  - {text}" for text in self.warnings]
        if self.agreement is not None:  # the CLI repeats it as its very last line
            lines += ["", self.agreement.headline()]
        return "\n".join(lines)


def plot_curves(points: Sequence[tuple[float, float]], path: str, *, title: str, xlabel: str, ylabel: str,
                labels: Sequence[str] | None = None, reference: float | None = None) -> None:
    """Save an x/y curve (e.g. MAC savings vs accuracy) as a PNG, atomically."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zapopt.files import write_atomically

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    xs, ys = zip(*points) if points else ((), ())
    ax.plot(xs, ys, marker="o")
    if labels:
        for x, y, text in zip(xs, ys, labels):
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    if reference is not None:
        ax.axhline(reference, color="gray", linestyle="--", linewidth=1, label="original model")
        ax.legend(loc="lower left")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_atomically(path, lambda f: f.write(buffer.getvalue()))


def plot_layer_curves(curves: Mapping[str, LayerCurve], path: str, *, chosen: Mapping[str, float] | None = None) -> None:
    """Save each layer's measured trade-off (activation mass lost vs MACs saved) as one PNG.

    The curves are what every threshold rule chooses from; the chosen point of each layer
    is marked, so a reader sees which layers carry the savings and which were left exact.
    """
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zapopt.files import write_atomically

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=120)
    for name, curve in curves.items():
        finite = np.isfinite(curve.taus)
        line, = ax.plot(100 * curve.error[finite], 100 * curve.savings[finite], linewidth=1, label=name)
        tau = (chosen or {}).get(name)
        i = curve.index_of(tau) if tau is not None and np.isfinite(tau) else None
        if i is not None:
            ax.plot(100 * curve.error[i], 100 * curve.savings[i], "o", color=line.get_color())
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlim(left=0)
    ax.set_xlabel("activation mass lost (%, held-out calibration images)")
    ax.set_ylabel("MACs saved in the layer (%)")
    ax.set_title("per-layer trade-off (dots: chosen thresholds)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_atomically(path, lambda f: f.write(buffer.getvalue()))
