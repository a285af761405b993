"""The long part of ``optimize``: analyze the model, calibrate, and train a predictor per
selected layer (``prepare_layers``), kept as ``PreparedLayers`` so that several operating
points can share one run."""
from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from zapopt.agreement import kept_reference
from zapopt.calibrate import calibrate
from zapopt.curves import LayerCurve
from zapopt.data import Dataset, ImageOptions, model_input, open_dataset
from zapopt.data_checks import check_calibration_count, check_free_space, training_images
from zapopt.errors import ZapoptError
from zapopt.graph import ConvActivation, analyze, load_model, with_unique_node_names
from zapopt.graph.opset import MIN_REWRITE_OPSET
from zapopt.layer_selection import select_layers
from zapopt.layer_training import TrainedLayer, curve_grid, train_layers
from zapopt.optimize_config import OptimizeConfig
from zapopt.pattern_choice import merge_curves
from zapopt.selection_modes import AccuracyBudget


@dataclass(frozen=True)
class PreparedLayers:
    """The result of the long part of ``optimize``: predictors and curves for every layer.

    Choosing thresholds and rewriting are cheap afterwards, so several operating points
    (e.g. several --max-drop targets) can share one ``prepare_layers`` call.
    """

    original: onnx.ModelProto
    total_macs: int
    by_pattern: dict[str, dict[str, TrainedLayer]]  # {pattern: {layer: ...}}, one entry per candidate
    skipped: list[tuple[str, str]]
    calibration_images: int
    seconds: dict[str, float]
    #: The held-out calibration images and the original's first output on them (flattened per
    #: image), to measure the rewritten model's agreement; None when too large to keep.
    held_out: Dataset | None = None
    held_out_reference: np.ndarray | None = None

    @property
    def trained(self) -> dict[str, TrainedLayer]:
        """The first candidate pattern's layers (the only ones with a single --pattern)."""
        return next(iter(self.by_pattern.values()))

    @property
    def curves(self) -> dict[str, LayerCurve]:
        return {name: t.curve for name, t in self.trained.items()}

    def merged(self) -> dict[str, LayerCurve]:
        """Every candidate's curves merged per layer (see ``zapopt.pattern_choice``)."""
        return merge_curves({p: {n: t.curve for n, t in layers.items()} for p, layers in self.by_pattern.items()})

    def chosen(self, patterns: Mapping[str, str | None]) -> dict[str, TrainedLayer]:
        """Each layer's trained predictor for its chosen pattern (the first candidate where
        none was chosen, i.e. for layers left as they were)."""
        return {name: self.by_pattern[patterns.get(name) or next(iter(self.by_pattern))][name]
                for name in self.trained}


def named_model(model: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """The model with every node named as ``zapopt.graph`` reports it, so that layer names
    stay valid while layers are rewritten one after another."""
    return with_unique_node_names(load_model(model, min_opset=MIN_REWRITE_OPSET))  # old opsets: converted, checked


def calibration_bytes(selected: Sequence[ConvActivation], images: int) -> int:
    """Disk the calibration store needs: one float32 activation per layer and image."""
    per_image = sum(int(np.prod(conv.output_shape[1:])) for conv in selected if conv.output_shape)
    return 4 * per_image * images


def calibration_tensors(selected: Sequence[ConvActivation], config: OptimizeConfig) -> dict[str, str]:
    """Each layer's tensor to record: the one its predictor reads (the ofm is derived)."""
    tensors = {}
    for conv in selected:
        tensor = conv.preactivation if config.predictor_input == "preactivation" else conv.output
        if not tensor:
            raise ZapoptError(f"layer {conv.conv!r} has no activation to calibrate ({conv.reason or 'not eligible'})")
        tensors[conv.conv] = tensor
    return tensors


def prepare_layers(model: str | os.PathLike | onnx.ModelProto, calib: object, *,
                   config: OptimizeConfig = OptimizeConfig(), eval_data: object = None,
                   image_options: ImageOptions | None = None,
                   input_shapes: Mapping[str, Sequence[int]] | None = None,
                   progress: bool | None = None) -> PreparedLayers:
    """Analyze, calibrate and train one predictor per selected layer (the long part)."""
    if not isinstance(config, OptimizeConfig):
        raise TypeError("config must be an OptimizeConfig")
    if isinstance(config.selection, AccuracyBudget) and eval_data is None:
        raise ZapoptError("--max-drop needs held-out data to measure the drop on: add --eval DATA")
    original = named_model(model)
    info = analyze(original, input_shapes)
    selected, skipped = select_layers(info.convs, config.layers, config.exclude, config.include_first)
    spec = model_input(original)
    calib_set = open_dataset(calib, spec, image_options, limit=config.calib_images)
    check_calibration_count(len(calib_set), config.holdout, calib_set.description)
    if eval_data is not None:  # validate now, run later
        open_dataset(eval_data, spec, image_options, limit=config.eval_images)
    check_free_space(calibration_bytes(selected, len(calib_set)), len(calib_set))
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    with calibrate(original, calibration_tensors(selected, config), calib_set.batches(config.batch_size),
                   total_images=len(calib_set), progress=progress) as store:
        seconds["calibrate"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        by_pattern = train_layers(store, selected, config, curve_grid(config), progress)
        seconds["train"] = time.perf_counter() - t0
        n_images = store.num_images
        n_train = training_images(n_images, config.holdout)
        reference = kept_reference(store.logits[n_train:])
    held_out = calib_set.window(n_train, n_images - n_train)
    return PreparedLayers(original, info.total_macs, by_pattern, skipped, n_images, seconds, held_out, reference)
