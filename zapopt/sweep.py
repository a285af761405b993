"""``zapopt sweep``: the accuracy vs MAC-savings curve of an optimized model over thresholds.

Only thresholds change between points (the predictors stay), so the sweep shows the
operating points ``zapopt retune`` can move to. Labels give top-1; without labels the
point at ``-inf`` (every activation computed: the original model) is the reference for
top-1 agreement.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from zapopt.curves import json_float
from zapopt.data import ImageOptions, model_input, open_dataset
from zapopt.errors import ZapoptError
from zapopt.evaluate import baseline_macs, run_model, top_k_accuracy
from zapopt.files import check_distinct_outputs, check_output_path, write_text_atomically
from zapopt.graph import load_model
from zapopt.model_form import as_native
from zapopt.report import format_rows, pct, plot_curves
from zapopt.rewrite.zap_layers import SetThresholds, read_zap_layers

#: Wide enough for predictors trained with the paper's plain MSE (useful up to ~0.5) and with
#: the magnitude-weighted loss, whose scores sit higher (see ``optimize.default_threshold``).
DEFAULT_SWEEP = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class SweepPoint:
    threshold: float
    top1: float | None
    agreement: float
    macs_after: float
    savings: float

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": json_float(self.threshold), "top1": self.top1, "agreement": self.agreement,
                "macs_after": self.macs_after, "savings": self.savings}


@dataclass(frozen=True)
class SweepReport:
    model: str
    data: str
    samples: int
    total_macs: float
    exact_top1: float | None  # every activation computed (the original model)
    points: list[SweepPoint]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "data": self.data, "samples": self.samples, "total_macs": self.total_macs,
                "exact_top1": self.exact_top1, "points": [p.to_dict() for p in self.points]}

    def format_table(self) -> str:
        rows = [(f"{p.threshold:g}", pct(p.savings), f"{p.macs_after:,.0f}", pct(p.top1, 2),
                 "-" if p.top1 is None or self.exact_top1 is None else f"{100 * (self.exact_top1 - p.top1):.2f}",
                 pct(p.agreement, 2)) for p in self.points]
        head = [f"model: {self.model}", f"data: {self.data} ({self.samples} samples); "
                f"MACs per image without ZAP: {self.total_macs:,.0f}"]
        if self.exact_top1 is not None:
            head.append(f"top-1 computing everything: {pct(self.exact_top1, 2)}")
        table = format_rows(("threshold", "MACs saved", "MACs after", "top-1", "drop (pts)", "agreement"), rows)
        return "\n".join([*head, "", table])


def _thresholds(values: Sequence[float] | None) -> list[float]:
    values = list(DEFAULT_SWEEP if values is None else values)
    if not values:
        raise ZapoptError("give at least one threshold to sweep")
    for v in values:
        if not isinstance(v, (int, float)) or math.isnan(v):
            raise ZapoptError(f"thresholds must be numbers, got {v!r}")
    return sorted(set(float(v) for v in values))


def sweep(model: str | os.PathLike, data: Any, *, thresholds: Sequence[float] | None = None,
          image_options: ImageOptions | None = None, limit: int | None = None, batch_size: int = 64,
          output_json: str | os.PathLike | None = None, output_png: str | os.PathLike | None = None,
          input_shapes: Mapping[str, Sequence[int]] | None = None, progress: bool | None = None) -> SweepReport:
    """Evaluate an optimized model at each uniform threshold; optionally write JSON and a PNG."""
    taus = _thresholds(thresholds)
    for path in (output_json, output_png):
        if path is not None:
            check_output_path(path, inputs=(model, data), what="sweep output")
    check_distinct_outputs(**{"JSON curve": output_json, "PNG plot": output_png})
    proto = as_native(load_model(model))
    names = [layer.name for layer in read_zap_layers(proto)]
    if not names:
        raise ZapoptError(f"{model} has no ZapConv layers; sweep a ZAP model written by `zapopt optimize` "
                          "(not --exact, which has no thresholds)")
    dataset = open_dataset(data, model_input(proto), image_options, limit=limit)
    labels = dataset.labels

    def at(tau: float):
        tuned = SetThresholds({n: tau for n in names})(proto).model  # a pass works on its own copy
        return run_model(tuned, dataset, batch_size=batch_size, progress=progress, desc=f"tau={tau:g}")

    exact = at(-math.inf)
    exact_logits = exact.outputs.reshape(len(exact.outputs), -1)
    total = baseline_macs(proto, exact.usage, input_shapes)
    points = []
    for tau in taus:
        result = at(tau)
        logits = result.outputs.reshape(len(result.outputs), -1)
        after = total - sum(u.macs - u.macs_after for u in result.usage.values())
        points.append(SweepPoint(
            threshold=tau,
            top1=None if labels is None else top_k_accuracy(logits, labels, 1),
            agreement=float(np.mean(np.argmax(logits, 1) == np.argmax(exact_logits, 1))),
            macs_after=after, savings=1 - after / total))
    report = SweepReport(str(model), str(data), len(dataset), total,
                         None if labels is None else top_k_accuracy(exact_logits, labels, 1), points)
    if output_json is not None:
        import json

        write_text_atomically(output_json, json.dumps(report.to_dict(), indent=1))
    if output_png is not None:
        use_top1 = labels is not None
        ys = [100 * (p.top1 if use_top1 else p.agreement) for p in points]
        plot_curves(list(zip([100 * p.savings for p in points], ys)), str(output_png),
                    title=f"{os.path.basename(str(model))}: accuracy vs MAC savings",
                    xlabel="MACs saved (% of the whole model)",
                    ylabel="top-1 accuracy (%)" if use_top1 else "top-1 agreement with original (%)",
                    labels=[f"{p.threshold:g}" for p in points],
                    reference=100 * report.exact_top1 if use_top1 else 100.0)
    return report

