"""ONNX graph analysis: loading with clean errors, shapes, MAC counts, ZAP eligibility.

``analyze(model_or_path, input_shapes=None) -> ModelInfo`` is the entry point; the records
it returns (``LayerInfo``, ``ConvActivation``) are what calibration and rewriting build on.
Node names in reports come from ``unique_node_names`` (empty or duplicated names in the file
become ``{op_type}_{index}``); ``with_unique_node_names`` gives a model copy using them.
``match_conv_chain`` is the one Conv [+BN] [+Add] + ReLU-like pattern that analysis and the
rewrite passes share (``GraphIndex`` is the lookup table both read the graph through).
"""
from __future__ import annotations

from zapopt.graph.analyze import analyze
from zapopt.graph.conv_chain import ConvChain, match_conv_chain
from zapopt.graph.eligibility import MAX_PREDICTOR_COST_SHARE
from zapopt.graph.index import GraphIndex, unique_node_names, with_unique_node_names
from zapopt.graph.loading import load_model
from zapopt.graph.records import ConvActivation, LayerInfo, ModelInfo, TensorSpec
from zapopt.graph.shapes import DEFAULT_BATCH, parse_input_shape

__all__ = [
    "DEFAULT_BATCH", "MAX_PREDICTOR_COST_SHARE", "ConvActivation", "ConvChain", "GraphIndex",
    "LayerInfo", "ModelInfo", "TensorSpec", "analyze", "load_model", "match_conv_chain", "parse_input_shape",
    "unique_node_names", "with_unique_node_names",
]
