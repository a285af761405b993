"""Re-choose a fine-tuned model's thresholds the way ``zapopt optimize --max-drop`` does.

Fine-tuning moves the weights, so the accuracy/savings trade-off of every threshold moves
too: the old per-layer thresholds are no longer the best ones for the same drop. By
default the predictors stay (they were frozen during training); only their curves are
measured again on the new activations and the ``--max-drop`` search runs again. With
``refit_predictors`` every predictor is trained again instead, on the new weights'
activations, by optimize's own predictor training (:func:`zapopt.layer_training.train_layers`:
same epochs, loss, seed and held-out share), because a predictor fitted to the old
activations mispredicts where fine-tuning moved the zeros. To reuse optimize's search as
is, each ZapConv is turned back into the plain layer it replaced (:func:`plain_model`,
conv named as the ZapConv, so layer names stay), the kept (or refitted) predictors stand
in for the trained ones, and ``choose_thresholds`` / ``finish`` do the rest.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from zapopt.calibrate import calibrate
from zapopt.curves import default_taus, layer_curve
from zapopt.data import ImageOptions, model_input, open_dataset
from zapopt.data_checks import check_calibration_count
from zapopt.errors import ZapoptError
from zapopt.graph import ConvActivation, analyze
from zapopt.ops.patterns import PATTERNS
from zapopt.ops.spec import is_zap_node
from zapopt.layer_preparation import PreparedLayers
from zapopt.layer_training import TrainedLayer, curve_grid, ofm_sparsity, train_layers
from zapopt.optimize import finish
from zapopt.optimize_config import OptimizeConfig
from zapopt.optimize_report import OptimizeResult
from zapopt.selection_modes import AccuracyBudget
from zapopt.threshold_choice import choose_thresholds
from zapopt.predictor.folded import FoldedPredictor, pattern_mask
from zapopt.predictor.inputs import PredictorInput
from zapopt.predictor.train import TrainedPredictor
from zapopt.rewrite.zap_layers import ZapLayer, read_zap_layers


def _plain_nodes(node: onnx.NodeProto, layer: ZapLayer) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Conv [+ Add(Skip)] + Relu | Clip(0, clip_max) writing the ZapConv's output."""
    attrs = layer.attrs
    name = node.name
    inputs = [node.input[0], node.input[1]] + ([node.input[2]] if node.input[2] else [])
    conv_out = f"{name}.conv_out"
    nodes = [helper.make_node("Conv", inputs, [conv_out], name=name, strides=list(attrs.strides),
                              pads=list(attrs.pads), dilations=list(attrs.dilations), group=attrs.group)]
    pre = conv_out
    if layer.skip:
        pre = f"{name}.sum"
        nodes.append(helper.make_node("Add", [conv_out, layer.skip], [pre], name=f"{name}.add"))
    inits: list[onnx.TensorProto] = []
    if math.isinf(attrs.clip_max):
        nodes.append(helper.make_node("Relu", [pre], [layer.output], name=f"{name}.relu"))
    else:
        low, high = f"{name}.clip_min", f"{name}.clip_max"
        inits = [numpy_helper.from_array(np.array(0, np.float32), low),
                 numpy_helper.from_array(np.array(attrs.clip_max, np.float32), high)]
        nodes.append(helper.make_node("Clip", [pre, low, high], [layer.output], name=f"{name}.clip"))
    return nodes, inits


def plain_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every ZapConv replaced by the plain layer it computes at threshold -inf."""
    layers = {layer.name: layer for layer in read_zap_layers(model)}
    if not layers:
        raise ZapoptError("the model has no ZapConv layers to re-threshold")
    if any(layer.computed_output for layer in layers.values()):
        raise ZapoptError("re-thresholding needs ZapConv nodes without a Computed output")
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    nodes: list[onnx.NodeProto] = []
    predictor_inputs: set[str] = set()
    for node in model.graph.node:
        if is_zap_node(node):
            new_nodes, inits = _plain_nodes(node, layers[node.name])
            nodes += new_nodes
            graph.initializer.extend(inits)
            predictor_inputs.update(node.input[3:7])
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    still_read = {name for node in nodes for name in node.input}
    kept = [init for init in graph.initializer if init.name not in predictor_inputs or init.name in still_read]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return result


def node_predictor(model: onnx.ModelProto, node: onnx.NodeProto) -> FoldedPredictor:
    """The predictor a ZapConv ``node`` of ``model`` carries (its four constant inputs)."""
    arrays = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name in node.input[3:7]}
    try:
        return FoldedPredictor(*(np.array(arrays[name], dtype=np.float32) for name in node.input[3:7]))
    except KeyError as missing:
        raise ZapoptError(f"ZapConv {node.name!r}: predictor input {missing} is not a constant") from None


def _kept_layers(model: onnx.ModelProto, store: Any, convs: dict[str, ConvActivation],
                 layers: dict[str, ZapLayer]) -> dict[str, TrainedLayer]:
    """The model's own predictors, their curves measured on every calibration image."""
    zap_nodes = {n.name: n for n in model.graph.node if is_zap_node(n)}
    kept: dict[str, TrainedLayer] = {}
    for name, layer in layers.items():
        stored = store.layer_array(name)
        source = PredictorInput(layer.attrs.predictor_input, layer.attrs.clip_max)
        predictor = TrainedPredictor(node_predictor(model, zap_nodes[name]),
                                     pattern_mask(layer.pattern, *stored.shape[2:]), epochs=0, images=0,
                                     seconds=0.0, epoch_losses=(), predictor_input=source)
        curve = layer_curve(name, stored, predictor, macs=convs[name].macs, taus=default_taus())
        kept[name] = TrainedLayer(convs[name], predictor, curve, ofm_sparsity(stored, source), 0.0,
                                  layer.pattern.name)
    return kept


def _refitted_layers(store: Any, convs: dict[str, ConvActivation], layers: dict[str, ZapLayer],
                     config: OptimizeConfig, progress: bool | None) -> dict[str, TrainedLayer]:
    """New predictors for the model's activations, trained as ``optimize`` trains them, each
    layer with its own pattern and predictor input (grouped, since optimize's training takes
    one of each per call); curves on the held-out calibration images, as optimize's."""
    groups: dict[tuple[str, str], list[ConvActivation]] = {}
    for name, layer in layers.items():
        groups.setdefault((layer.pattern.name, layer.attrs.predictor_input), []).append(convs[name])
    refitted: dict[str, TrainedLayer] = {}
    for (pattern, source), selected in groups.items():
        group_config = replace(config, pattern=pattern, predictor_input=source)
        refitted.update(train_layers(store, selected, group_config, curve_grid(group_config), progress)[pattern])
    return refitted


@dataclass(frozen=True)
class Rethresholded:
    """The re-thresholded model and how its drop budget was set."""

    result: OptimizeResult
    budget: float  # the --max-drop the search used, against the fine-tuned model computing everything
    exact_gain: float  # points of top-1 the fine-tuned model (computing everything) gained over the baseline
    refitted: bool = False  # the predictors were trained again on the model's activations (else kept)

    @property
    def model(self) -> onnx.ModelProto:
        return self.result.model

    @property
    def drop(self) -> float | None:
        """The search's measured drop against the baseline (the model before fine-tuning)."""
        measured = self.result.report.measured_drop
        return None if measured is None else measured - self.exact_gain


def _exact_top1(model: onnx.ModelProto, dataset: Any) -> float:
    from zapopt.evaluate import run_model, top_k_accuracy

    logits = run_model(model, dataset, measure=False, progress=False).outputs
    return top_k_accuracy(logits.reshape(len(logits), -1), dataset.labels, 1)


def rechoose_thresholds(model: onnx.ModelProto, calib: Any, eval_data: Any, max_drop: float, *,
                        baseline: onnx.ModelProto | None = None, calib_images: int = 1024,
                        eval_images: int | None = None, sensitivity_weighting: bool = True,
                        image_options: ImageOptions | None = None, model_name: str = "<fine-tuned model>",
                        refit_predictors: bool = False, progress: bool | None = None) -> Rethresholded:
    """The most MAC savings whose measured top-1 drop on ``eval_data`` stays <= ``max_drop`` %,
    for ``model``'s weights with its own (kept) predictors and patterns, or with
    ``refit_predictors`` new predictors trained on ``calib`` as ``optimize`` trains them
    (its default predictor settings; a quarter of the images held out for the curves).

    ``baseline`` (e.g. the ZAP model before fine-tuning): count the drop against its top-1
    computing everything (the original network), not the fine-tuned one's, so "<= 1.5 %"
    means the same before and after fine-tuning. Needs labels.
    """
    plain = plain_model(model)
    layers = {layer.name: layer for layer in read_zap_layers(model)}
    info = analyze(plain)
    convs = {c.conv: c for c in info.convs if c.conv in layers}
    missing = sorted(set(layers) - set(convs))
    if missing:
        raise ZapoptError(f"internal: layers {', '.join(missing)} not found after turning ZapConv back into Conv")
    unknown = sorted({layer.pattern.name for layer in layers.values()} - set(PATTERNS))
    if unknown:
        raise ZapoptError(f"re-thresholding needs registered patterns; the model uses {', '.join(unknown)}")
    kinds = {layer.attrs.predictor_input for layer in layers.values()}
    budget = AccuracyBudget(max_drop, sensitivity=sensitivity_weighting)
    config = OptimizeConfig(budget, calib_images=calib_images, eval_images=eval_images,
                            predictor_input=sorted(kinds)[-1])
    spec = model_input(plain)
    calib_set = open_dataset(calib, spec, image_options, limit=calib_images)
    if refit_predictors:
        check_calibration_count(len(calib_set), config.holdout, calib_set.description)
    eval_set = open_dataset(eval_data, spec, image_options, limit=eval_images)  # refused before calibrating
    gain = 0.0
    if baseline is not None:
        if eval_set.labels is None:
            raise ZapoptError("a drop against the model before fine-tuning needs labeled --val data")
        reference = plain_model(baseline) if read_zap_layers(baseline) else baseline
        gain = 100.0 * (_exact_top1(plain, eval_set) - _exact_top1(reference, eval_set))
        if max_drop + gain < 0:
            raise ZapoptError(f"the fine-tuned model, computing everything, is {-gain:.2f} points below the model "
                              f"before fine-tuning: no threshold keeps the drop within {max_drop} %")
        budget = replace(budget, max_drop=max_drop + gain)
        config = replace(config, selection=budget)
    tensors = {name: (convs[name].preactivation if layers[name].attrs.predictor_input == "preactivation"
                      else convs[name].output) for name in layers}
    with calibrate(plain, tensors, calib_set.batches(config.batch_size), total_images=len(calib_set),
                   progress=progress) as store:
        trained = (_refitted_layers(store, convs, layers, config, progress) if refit_predictors
                   else _kept_layers(model, store, convs, layers))
        images = store.num_images
    prepared = PreparedLayers(plain, info.total_macs, {"refitted" if refit_predictors else "kept": trained}, [],
                              images, {})
    choice = choose_thresholds(prepared, config, eval_data=eval_data, image_options=image_options,
                               progress=progress)
    return Rethresholded(finish(prepared, choice, config, model_name=model_name), budget.max_drop, gain,
                         refit_predictors)
