"""Graph rewrite passes: fold BN, replace layers with ZapConv, retune, expand to plain ONNX."""
from __future__ import annotations

from zapopt.rewrite.base import Pass, PassManager, PassResult
from zapopt.rewrite.expand import ExpandZapToOnnx, mask_output_name
from zapopt.rewrite.fold_bn import FoldBatchNorm
from zapopt.rewrite.graph_edit import rule_of
from zapopt.rewrite.match import ConvChain, match_conv_chain
from zapopt.rewrite.replace import ReplaceWithZap, ZapParams
from zapopt.rewrite.zap_layers import SetThresholds, ZapLayer, read_zap_layers

__all__ = [
    "ConvChain", "ExpandZapToOnnx", "FoldBatchNorm", "Pass", "PassManager", "PassResult",
    "ReplaceWithZap", "SetThresholds", "ZapLayer", "ZapParams", "mask_output_name",
    "match_conv_chain", "read_zap_layers", "rule_of",
]
