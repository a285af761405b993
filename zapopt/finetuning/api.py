"""``zapopt finetune``: check everything, train with the ZAP masks active, write the same format.

Everything that can be refused is refused before the first step: the output path, a model
without ZapConv nodes, an op the converter does not know, data without labels, labels
that do not fit the model's outputs, a checkpoint of another model or other settings.
The model is written once, atomically, by rank 0 at the end; an interrupted run leaves
at most the last epoch's checkpoint, from which ``--resume`` continues.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zapopt.curves import json_float
from zapopt.data import ImageOptions, model_input, open_dataset
from zapopt.errors import ZapoptError
from zapopt.files import check_distinct_outputs, check_output_path, save_model_atomically, write_text_atomically
from zapopt.finetuning.convert import export_weights, to_torch
from zapopt.finetuning.distributed import Ranks, start, stop
from zapopt.finetuning.labeled_data import LabeledData, check_classes, open_labeled
from zapopt.finetuning.train import FinetuneConfig, Log, TrainState, load_checkpoint, model_digest, train
from zapopt.graph import load_model
from zapopt.rewrite.zap_layers import read_zap_layers


@dataclass(frozen=True)
class Measured:
    """Accuracy and realised MAC savings of one model on the validation data (onnxruntime)."""

    top1: float | None
    savings: float
    macs_after: float


@dataclass(frozen=True)
class FinetuneReport:
    """What ``finetune`` did and what it changed."""

    model: str
    output: str
    data: str
    val: str | None
    config: dict[str, Any]
    world_size: int
    state: TrainState
    before: Measured | None
    after: Measured | None
    curves: dict[str, Any] | None  # {"before": SweepReport dict, "after": ...} when asked
    thresholds: dict[str, Any] | None = None  # the --max-drop re-choice: target, search budget, drop, thresholds
    operating: dict[str, Any] | None = None  # the --operating-drop thresholds trained at: target, drop, thresholds

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "output": self.output, "data": self.data, "val": self.val,
                "config": self.config, "world_size": self.world_size,
                "epochs": [asdict(h) for h in self.state.history],
                "gradient_tools": self.state.gradient_summary or None,
                "before": None if self.before is None else asdict(self.before),
                "after": None if self.after is None else asdict(self.after), "curves": self.curves,
                "thresholds": self.thresholds, "operating": self.operating}

    def format_table(self) -> str:
        from zapopt.report import pct

        lines = [f"fine-tuned {self.model} -> {self.output} on {self.data} ({self.world_size} process(es))"]
        if self.operating is not None:
            drop = "-" if self.operating["drop"] is None else f"{self.operating['drop']:.2f}"
            lines.append(f"  trained at the thresholds chosen for <= {self.operating['operating_drop']} % top-1 drop "
                         f"(measured {drop} points)")
        for h in self.state.history:
            val = "" if h.val_top1 is None else f", validation top-1 {pct(h.val_top1, 2)}"
            lines.append(f"  epoch {h.epoch}: loss {h.train_loss:.4f}, train accuracy {pct(h.train_top1, 2)}{val}, "
                         f"{h.seconds:.0f} s")
        if self.before is not None and self.after is not None:
            lines.append(f"on {self.val}:")
            for label, m in (("before", self.before), ("after", self.after)):
                top1 = "-" if m.top1 is None else pct(m.top1, 2)
                lines.append(f"  {label:6s} top-1 {top1}, MACs saved {pct(m.savings)} ({m.macs_after:,.0f} per image)")
        if self.thresholds is not None and "error" in self.thresholds:
            lines.append(f"thresholds kept: re-choosing them failed ({self.thresholds['error']})")
        elif self.thresholds is not None:
            t = self.thresholds
            drop = "-" if t["drop"] is None else f"{t['drop']:.2f}"
            refit = "predictors refitted, " if t.get("predictors") == "refitted" else ""
            lines.append(f"{refit}thresholds re-chosen for <= {t['max_drop']} % top-1 drop: measured drop {drop} points "
                         f"against the model before fine-tuning")
        if self.state.gradient_summary:
            lines += ["", self.state.gradient_summary]
        return "\n".join(lines)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _tensors(data: LabeledData) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole set in memory (the loop draws shuffled batches from it)."""
    return torch.from_numpy(np.ascontiguousarray(data.dataset.to_numpy())), torch.from_numpy(data.labels)


def _measure(model: Any, val: LabeledData, progress: bool) -> Measured:
    from zapopt.evaluate import evaluate

    report = evaluate(model, val.dataset, progress=progress)
    return Measured(report.top1, report.savings, report.macs_after)


def finetune(model: str | os.PathLike, output: str | os.PathLike, data: Any, *, val: Any = None,
             config: FinetuneConfig | None = None, checkpoint: str | os.PathLike | None = None,
             resume: bool = False, image_options: ImageOptions | None = None, device: str = "auto",
             curve_thresholds: list[float] | None = None, max_drop: float | None = None, calib: Any = None,
             report_path: str | os.PathLike | None = None, progress: bool | None = None,
             log: Log = _stderr) -> FinetuneReport:
    """Fine-tune the ZapConv model at ``model`` on labeled ``data``; write the result to ``output``.

    ``val``: labeled data measured before and after (accuracy and realised MAC savings,
    each epoch's validation top-1 too); ``curve_thresholds`` adds the accuracy/savings
    sweep of both models at those uniform thresholds. ``checkpoint`` (default
    ``OUTPUT.ckpt``) is written after every epoch; ``resume=True`` continues from it.
    ``max_drop`` (with ``calib`` images and ``val``): after training, re-choose every
    layer's threshold as ``zapopt optimize --max-drop`` does, on the new weights with the
    kept predictors, or with ``config.refit_predictors`` with predictors trained again on
    the new weights' activations from ``calib``. Under ``torchrun`` every rank calls this;
    rank 0 writes the files.
    """
    config = config or FinetuneConfig()
    if not isinstance(config, FinetuneConfig):
        raise TypeError(f"config must be a FinetuneConfig, got {type(config).__name__}")
    output = Path(output)
    checkpoint = Path(checkpoint) if checkpoint is not None else output.with_name(output.name + ".ckpt")
    report_path = Path(report_path) if report_path is not None else output.with_name(output.name + ".report.json")
    inputs = (model, data, val)
    for path, what in ((output, "output model"), (checkpoint, "checkpoint"), (report_path, "report")):
        check_output_path(path, inputs=inputs, what=what)
    check_distinct_outputs(**{"output model": output, "checkpoint": checkpoint, "report": report_path})
    if max_drop is not None and (val is None or calib is None):
        raise ZapoptError("--max-drop re-chooses the thresholds after training: it needs --val (where the drop "
                          "is measured) and --calib (images for the layer curves)")
    if config.refit_predictors and max_drop is None:
        raise ZapoptError("--refit-predictors trains new predictors, whose scores the model's thresholds were not "
                          "chosen for: it needs --max-drop X (the thresholds are then re-chosen for that top-1 drop, "
                          "counted against the input model computing everything), with --val and --calib")
    if config.operating_drop is not None and (val is None or calib is None):
        raise ZapoptError("--operating-drop chooses the thresholds to train at: it needs --val (where the drop "
                          "is measured) and --calib (images for the layer curves)")
    if resume and not checkpoint.is_file():
        raise ZapoptError(f"--resume: no checkpoint at {checkpoint}; run without --resume to start")

    proto = load_model(model)
    if not read_zap_layers(proto):
        raise ZapoptError(f"{model} has no ZapConv layers; fine-tune a model written by `zapopt optimize` "
                          "(--format zap)")
    module = to_torch(proto)
    spec = model_input(proto)
    if spec.dtype != np.float32:
        raise ZapoptError(f"finetune trains float32 models; the input {spec.describe()} is not float32")
    train_data = open_labeled(data, spec, image_options, config.train_images)
    val_data = None if val is None else open_labeled(val, spec, image_options, config.val_images,
                                                     role="validation data")
    x, y = _tensors(train_data)
    with torch.no_grad():
        classes = int(module.eval()(x[:1]).reshape(1, -1).shape[1])
    check_classes(train_data, classes)
    if val_data is not None:
        check_classes(val_data, classes, role="validation data")
    if calib is not None:
        open_dataset(calib, spec, image_options)  # refuse unreadable calibration data before training
    digest = model_digest(proto.SerializeToString())
    saved = load_checkpoint(checkpoint, config, digest) if resume else None
    trained_proto, operating = proto, None
    if config.operating_drop is not None:  # every check is done: the long part starts here
        trained_proto, operating = _operating_point(proto, calib, val, config, image_options, output, progress, log)
        module = to_torch(trained_proto)

    ranks = start(device)
    try:
        if operating is not None:
            _same_on_every_rank(ranks, operating["thresholds"])
        state = train(module, x, y, config, ranks=ranks,
                      val=None if val_data is None else _tensors(val_data), checkpoint=checkpoint,
                      resume=saved, digest=digest, progress=progress is not False, interactive=progress,
                      log=log)
        report = None
        if ranks.is_main:
            tuned = export_weights(module.to("cpu"), trained_proto)
            chosen = None
            if max_drop is not None:
                from zapopt.finetuning.rethreshold import rechoose_thresholds

                try:
                    found = rechoose_thresholds(tuned, calib, val, max_drop, baseline=proto,
                                                eval_images=config.val_images, image_options=image_options,
                                                model_name=str(output), refit_predictors=config.refit_predictors,
                                                progress=progress is True)
                except ZapoptError as exc:  # the training is not lost: keep the thresholds it ran with
                    log(f"could not re-choose the thresholds ({exc}); writing the fine-tuned model with its "
                        "original thresholds")
                    chosen = {"max_drop": max_drop, "error": str(exc)}
                else:
                    tuned = found.model
                    chosen = {"max_drop": max_drop, "predictors": "refitted" if found.refitted else "kept",
                              "search_budget": found.budget,
                              "exact_gain_points": found.exact_gain, "drop": found.drop,
                              "thresholds": {z.name: json_float(z.threshold) for z in read_zap_layers(tuned)}}
            save_model_atomically(tuned, output)
            report = _report(model, output, data, val, val_data, config, ranks, state, curve_thresholds,
                             image_options, progress is True, chosen, operating)
            write_text_atomically(report_path, json.dumps(report.to_dict(), indent=1))
        ranks.barrier()
    finally:
        stop(ranks)
    if report is None:  # other ranks: what they trained, nothing measured
        report = FinetuneReport(str(model), str(output), str(data), None, config.to_dict(), ranks.world, state,
                                None, None, None)
    return report


def _operating_point(proto: Any, calib: Any, val: Any, config: FinetuneConfig, image_options: ImageOptions | None,
                     output: Path, progress: bool | None, log: Log) -> tuple[Any, dict[str, Any]]:
    """The input model at the thresholds ``optimize --max-drop`` would choose for
    ``config.operating_drop`` (kept predictors, drop counted against the input computing
    everything), and what was chosen."""
    from zapopt.finetuning.rethreshold import rechoose_thresholds

    log(f"choosing the thresholds to train at (--operating-drop {config.operating_drop})")
    found = rechoose_thresholds(proto, calib, val, config.operating_drop, eval_images=config.val_images,
                                image_options=image_options, model_name=str(output), progress=progress is True)
    return found.model, {"operating_drop": config.operating_drop, "drop": found.drop,
                         "thresholds": {z.name: json_float(z.threshold) for z in read_zap_layers(found.model)}}


def _same_on_every_rank(ranks: Ranks, thresholds: dict[str, Any]) -> None:
    """Every rank chose the operating thresholds itself; training on different masks would
    silently break the 1-process equivalence, so compare them."""
    values = [v for v in thresholds.values() if isinstance(v, float)]  # json_float: "-inf" for a layer left exact
    mine = [float(sum(values)), float(len(values))]
    total = ranks.sum(mine)
    if any(abs(t - ranks.world * m) > 1e-6 * (1 + abs(t)) for t, m in zip(total, mine)):
        raise ZapoptError("the ranks chose different --operating-drop thresholds (nondeterministic measurements); "
                          "choose them once with a 1-process run and fine-tune its output without --operating-drop")


def _report(model: Any, output: Path, data: Any, val: Any, val_data: LabeledData | None, config: FinetuneConfig,
            ranks: Ranks, state: TrainState, curve_thresholds: list[float] | None,
            image_options: ImageOptions | None, progress: bool,
            thresholds: dict[str, Any] | None, operating: dict[str, Any] | None) -> FinetuneReport:
    before = after = curves = None
    if val_data is not None:
        before, after = _measure(str(model), val_data, progress), _measure(str(output), val_data, progress)
        if curve_thresholds is not None:
            from zapopt.sweep import sweep

            curves = {label: sweep(path, val, thresholds=curve_thresholds, image_options=image_options,
                                   limit=config.val_images, progress=progress).to_dict()
                      for label, path in (("before", str(model)), ("after", str(output)))}
    return FinetuneReport(str(model), str(output), str(data), None if val is None else str(val), config.to_dict(),
                          ranks.world, state, before, after, curves, thresholds, operating)
