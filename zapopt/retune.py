"""``zapopt retune``: move an optimized model to another operating point, no retraining.

Only the ``threshold`` attributes of the ZapConv nodes change; a model in portable form is
retuned through its native form and written back in portable form. Per-layer thresholds can
be given directly or chosen under an error budget from the curves that
``zapopt optimize`` stored in its report.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

from zapopt.curves import LayerCurve
from zapopt.errors import ZapoptError
from zapopt.files import check_output_path, save_model_atomically
from zapopt.graph import load_model
from zapopt.model_form import as_native, convert_model, model_form
from zapopt.rewrite.zap_layers import SetThresholds, read_zap_layers
from zapopt.thresholds import error_budget


def curves_from_report(path: str | os.PathLike) -> dict[str, LayerCurve]:
    """The per-layer curves saved by ``zapopt optimize`` in its JSON report."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ZapoptError(f"report not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise ZapoptError(f"cannot read the report {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("curves"), dict) or not data["curves"]:
        raise ZapoptError(f"{path} holds no layer curves; pass the .report.json written by `zapopt optimize`")
    return {name: LayerCurve.from_dict(curve) for name, curve in data["curves"].items()}


def retune(model: str | os.PathLike, output: str | os.PathLike, *, threshold: float | None = None,
           layer_thresholds: Mapping[str, float] | None = None, max_error: float | None = None,
           report: str | os.PathLike | None = None) -> dict[str, float]:
    """Write ``model`` with new thresholds to ``output``; returns the thresholds set.

    ``threshold`` sets every layer; ``layer_thresholds`` overrides single layers;
    ``max_error`` (with ``report``) picks per-layer thresholds from the stored curves.
    """
    if threshold is None and not layer_thresholds and max_error is None:
        raise ZapoptError("nothing to change: give --threshold, --layer NAME=T or --max-error with --report")
    if threshold is not None and max_error is not None:
        raise ZapoptError("give either --threshold or --max-error, not both")
    if max_error is not None and report is None:
        raise ZapoptError("--max-error needs the optimize report with the layer curves: add --report PATH")
    if threshold is not None and math.isnan(threshold):
        raise ZapoptError("the threshold must be a number, got NaN")
    check_output_path(output, inputs=(model, report), what="output model")
    loaded = load_model(model)
    form = model_form(loaded)
    proto = as_native(loaded)
    names = [layer.name for layer in read_zap_layers(proto)]
    if not names:
        raise ZapoptError(f"{model} has no ZapConv layers; retune a ZAP model written by `zapopt optimize` "
                          "(not --exact, which has no thresholds)")
    chosen: dict[str, float] = {}
    if threshold is not None:
        chosen = {n: float(threshold) for n in names}
    if max_error is not None:
        curves = curves_from_report(report)
        missing = [n for n in names if n not in curves]
        if missing:
            raise ZapoptError(f"the report has no curve for layer(s) {', '.join(missing)}; "
                              "is it the report of this model?")
        selection = error_budget({n: curves[n] for n in names}, max_error)
        # -inf keeps the layer exact: the ZapConv node then computes everything.
        chosen = dict(selection.thresholds)
    chosen.update({k: float(v) for k, v in (layer_thresholds or {}).items()})
    tuned = SetThresholds(chosen)(proto).model  # a pass works on its own copy
    if form == "portable":  # written in the form it came in
        tuned = convert_model(tuned, "portable")
    save_model_atomically(tuned, output)
    return chosen

