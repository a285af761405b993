"""Graph rewrite passes: fold BN, replace layers with ZapConv or ZeroSkipConv, retune, expand to
plain ONNX and back."""
from __future__ import annotations

from zapopt.rewrite.base import Pass, PassManager, PassResult
from zapopt.rewrite.expand import ExpandZapToOnnx, mask_output_name
from zapopt.rewrite.fold_bn import FoldBatchNorm
from zapopt.rewrite.graph_edit import rule_of
from zapopt.rewrite.match import ConvChain, match_conv_chain
from zapopt.rewrite.rebuild import RebuildNativeOps
from zapopt.rewrite.replace import ReplaceWithZap, ZapParams
from zapopt.rewrite.zero_skip import ReplaceWithZeroSkip, ZeroSkipRule, zero_skip_candidates
from zapopt.rewrite.zap_layers import SetThresholds, ZapLayer, read_zap_layers

__all__ = [
    "ConvChain", "ExpandZapToOnnx", "FoldBatchNorm", "Pass", "PassManager", "PassResult",
    "RebuildNativeOps", "ReplaceWithZap", "ReplaceWithZeroSkip", "SetThresholds", "ZapLayer", "ZapParams",
    "ZeroSkipRule", "mask_output_name", "match_conv_chain", "read_zap_layers", "rule_of", "zero_skip_candidates",
]
